"""Small shapes datasets shared by tests/test_data.py and tests/test_train.py (generated once per session)."""
from __future__ import annotations

import json
from pathlib import Path

N_SAMPLES = 60
SHARD_SIZE = 20
RESOLUTION = 64

_CACHE: dict[str, Path] = {}


def small_dataset(tmp_path_factory) -> Path:
    """A 60-sample, 3-shard, 64 px shapes dataset (the factory's engine API, in-process)."""
    if "ds" not in _CACHE:
        from factory.generate.config import GenerateConfig
        from factory.generate.engine import generate

        root = tmp_path_factory.mktemp("trainers-ds") / "ds"
        generate(GenerateConfig(n=N_SAMPLES, out=str(root), generator="shapes",
                                generator_options={"resolution": RESOLUTION}, shard_size=SHARD_SIZE,
                                workers=0, progress=False))
        _CACHE["ds"] = root
    return _CACHE["ds"]


def write_view(dataset: Path, path: Path, keep) -> tuple[Path, dict]:
    """A view JSON (format.view_id) accepting the rows r with keep(r); parent given by relative URL."""
    import os

    from factory import format as fmt

    manifest = json.loads((dataset / fmt.MANIFEST).read_text())
    accepted = {}
    for s in manifest["shards"]:
        rows = [r for r in range(s["first_row"], s["first_row"] + s["samples"]) if keep(r)]
        accepted[str(s["shard"])] = rows
    acc_sha = fmt.sha256_bytes(fmt.canonical_json(accepted))
    predicate = "test predicate"
    view = {
        "kind": fmt.VIEW_KIND, "format_version": fmt.FORMAT_VERSION,
        "view_id": fmt.view_id(manifest["dataset_id"], predicate, acc_sha),
        "parent": {"dataset_id": manifest["dataset_id"], "url": os.path.relpath(dataset, path.parent)},
        "predicate": predicate, "samples": sum(len(v) for v in accepted.values()), "accepted": accepted,
    }
    path.write_text(json.dumps(view))
    return path, view
