"""Every spec field is used or refused (issue 38, item 4): the cleanup ratio is the spec's, so a spec that
claims another one fails; unknown fields and impossible values fail the schema in one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import cli, copy_of, one_line_error, shapes_dataset

from factory import format as fmt


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    return shapes_dataset(tmp_path_factory, "spec", n=100, shard_size=50)


@pytest.fixture()
def ds(made, tmp_path) -> Path:
    return copy_of(made, tmp_path)


def edit(ds: Path, fn, *, rehash: bool = True) -> None:
    m = json.loads((ds / "manifest.json").read_text())
    fn(m)
    if rehash:
        m["spec_hash"] = fmt.sha256_bytes(fmt.canonical_json(m["spec"]))
    (ds / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("ratio", [0.99, 0.3, 0.05])
def test_cleanup_ratio_claimed_but_not_used_fails(ds, ratio):
    """The masks were cleaned with 0.2; a spec claiming another ratio is caught by plain verify (the stored
    masks are not what that rule keeps) or by regeneration (which cleans with the spec's ratio)."""
    edit(ds, lambda m: m["spec"].update(cc_ratio=ratio))
    r = cli("verify", ds, "--regenerate", "all")
    assert r.exit_code == 1, r.output


def test_generate_honours_the_spec_ratio(made):
    """Regeneration cleans with the spec's ratio (the one generate recorded): the honest dataset passes."""
    r = cli("verify", made, "--regenerate", "all", "--shard", 1)
    assert r.exit_code == 0 and r.output.startswith("PASS"), r.output


CASES = {
    "unknown-field": (lambda s: s.update(license="CC0"), "spec.license is not a field of a dataset spec"),
    "n-beyond-shards": (lambda s: s.update(n=1000000), "spec.n is 1000000 but the shards hold 100 samples"),
    "shard-size": (lambda s: s.update(shard_size=10), "more than spec.shard_size 10"),
    "cc-ratio-range": (lambda s: s.update(cc_ratio=3), "spec.cc_ratio must be in [0, 1]"),
    "file-latents-without-sha256": (lambda s: s.update(latents={"kind": "file", "seed": 0, "dim_z": 120, "rows": 9}),
                                    "spec.latents.sha256 is missing"),
    "latent-kind": (lambda s: s["latents"].update(kind="pickle"), "spec.latents.kind 'pickle' is not one of"),
    "codec": (lambda s: s["image_codec"].update(image="bmp"), "spec.image_codec.image 'bmp' is not one of"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_impossible_specs_fail_the_schema_in_one_line(ds, case):
    fn, words = CASES[case]
    edit(ds, lambda m: fn(m["spec"]))
    for command in ("verify", "info"):
        one_line_error(cli(command, ds), words)
