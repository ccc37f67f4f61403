"""Helpers the test modules share (import them: ``from helpers import run, cli, one_line_error, one_thread``): CLI
runners, one-line error checks, a forger's tools, processes started as a user starts them (`start_scheduler`)."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

PLUGIN_DIR = Path(__file__).resolve().parent / "plugin_pkg"  # holds the importable package `tinygen`
REPO = Path(__file__).resolve().parent.parent
DASK = str(Path(sys.executable).with_name("dask"))


def run(args, expect: int = 0):
    """`factory ARGS` in this process, exceptions propagated; asserts the exit code."""
    from factory.cli import main

    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == expect, res.output
    return res


def cli(*args):
    """`factory ARGS` in this process as a user sees it: whatever the exit code, never a traceback."""
    from factory.cli import main

    r = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r


def shapes_dataset(tmp_path_factory, name: str, *, n: int, shard_size: int) -> Path:
    """A small shapes dataset (32 px, in this process), made once per module by its `made` fixture."""
    out = tmp_path_factory.mktemp(name) / "ds"
    r = cli("generate", "--generator", "shapes", "--resolution", "32", "--n", n, "--shard-size", shard_size,
            "--workers", "0", "--quiet", "--out", out)
    assert r.exit_code == 0, r.output
    return out


def copy_of(made: Path, tmp_path: Path) -> Path:
    """A test's own copy of a module's dataset, free to tamper with."""
    import shutil

    return Path(shutil.copytree(made, tmp_path / "ds"))


def one_line_error(res, *fragments) -> None:
    """A CLI result that failed with exit code 1 and one line ``Error: ...`` holding every fragment."""
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    for f in fragments:
        assert f in lines[0], res.output


@contextlib.contextmanager
def one_thread():
    """One torch intra-op thread inside the block: on 2 shared cores small models run several times
    faster than with the default (threads spin against other processes)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def install_dist(site: Path, name: str, version: str, entry_points: dict[str, str]) -> None:
    """Write `name-version.dist-info` with METADATA and generator entry points into `site` (what `pip
    install` would leave), so that importlib.metadata finds them once `site` is on sys.path."""
    from factory.generators import ENTRY_POINT_GROUP

    d = site / f"{name.replace('-', '_')}-{version}.dist-info"
    d.mkdir(parents=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (d / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}")


# ------------------------------------------------------------------ a forger's tools (tests/security)

def reseal(root: Path) -> dict:
    """Recompute every hash and id of the dataset at `root` from its files, exactly as the writer does
    (shard and index sha256, bytes, latents hashes, spec hash, dataset id): a forger's last step, after
    which every self-consistency check passes. Returns the new manifest."""
    import json

    import numpy as np

    from factory import format as fmt
    from factory.dataset.shards import open_latents

    m = json.loads((root / "manifest.json").read_text())
    z = open_latents(str(root), "r")
    for s in m["shards"]:
        tar = (root / s["path"]).read_bytes()
        rows = np.ascontiguousarray(z[s["first_row"]:s["first_row"] + s["samples"]], np.float32)
        s.update(sha256=fmt.sha256_bytes(tar), bytes=len(tar), latents_sha256=fmt.sha256_bytes(rows.tobytes()),
                 index_sha256=fmt.sha256_bytes((root / s["index"]).read_bytes()))
    shards = sorted(m["shards"], key=lambda s: s["shard"])
    latents = fmt.sha256_bytes("".join(s["latents_sha256"] for s in shards).encode())
    m["latents"]["sha256_of_shard_hashes"] = latents
    m["bytes"] = sum(s["bytes"] for s in shards)
    m["spec_hash"] = fmt.sha256_bytes(fmt.canonical_json(m["spec"]))
    m["dataset_id"] = fmt.dataset_id(shards, latents, m["format_version"])
    if "index_stats" in m:
        from factory.dataset.card import index_stats

        m["index_stats"] = index_stats(str(root), m, check_sha=False)
    (root / "manifest.json").write_text(json.dumps(m))
    return m


def forge_samples(root: Path, edit) -> dict:
    """Every sample of the dataset at `root` rewritten: ``edit(parts, row)`` changes a sample's members
    (``{ext: bytes}``) and its index row (a dict) in place; tars are rebuilt as the writer builds them,
    the index's tar offsets recomputed, and the dataset resealed."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from factory import format as fmt

    m = json.loads((root / "manifest.json").read_text())
    for e in m["shards"]:
        samples: dict[str, dict[str, bytes]] = {}
        for name, body in fmt.safe_tar_members((root / e["path"]).read_bytes(), e["path"]):
            key, ext = fmt.split_member(name)
            samples.setdefault(key, {})[ext] = body
        table = pq.read_table(root / e["index"])
        rows = table.to_pylist()
        for row in rows:
            edit(samples[row["key"]], row)
        tar = fmt.tar_bytes([(f"{k}.{x}", b) for k in sorted(samples) for x, b in sorted(samples[k].items())])
        ranges = fmt.member_ranges(tar, e["path"])
        for row in rows:
            row["tar_offset"], row["tar_size"] = ranges[row["key"]]
        (root / e["path"]).write_bytes(tar)
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), root / e["index"])
    return reseal(root)


def swap_shard(root: Path, other: Path, shard: int) -> dict:
    """Shard `shard` of `root` replaced by the same shard of dataset `other` (tar, index fragment, latents
    rows), then resealed."""
    import json
    import shutil

    from factory.dataset.shards import open_latents

    m = json.loads((root / "manifest.json").read_text())
    e = next(s for s in m["shards"] if s["shard"] == shard)
    for key in ("path", "index"):
        shutil.copyfile(other / e[key], root / e[key])
    a, b = e["first_row"], e["first_row"] + e["samples"]
    open_latents(str(root), "r+")[a:b] = open_latents(str(other), "r")[a:b]
    return reseal(root)


def strip_platform_records(root: Path) -> dict:
    """The manifest without its platform record (``platforms`` and each shard's ``platform``), resealed."""
    import json

    m = json.loads((root / "manifest.json").read_text())
    m.pop("platforms", None)
    for s in m["shards"]:
        s.pop("platform", None)
    (root / "manifest.json").write_text(json.dumps(m))
    return reseal(root)


def downgrade(root: str) -> None:
    """Make `root` what the version-1 writer wrote: no offset columns, format_version 1, its id recomputed."""
    import json
    import os

    import pyarrow.parquet as pq

    from factory import format as fmt
    from factory.dataset.shards import parquet_bytes

    m = json.load(open(os.path.join(root, fmt.MANIFEST)))
    for e in m["shards"]:
        p = os.path.join(root, e["index"])
        t = pq.read_table(p).drop_columns(list(fmt.OFFSET_COLUMNS))
        data = parquet_bytes(t)
        open(p, "wb").write(data)
        e["index_sha256"] = fmt.sha256_bytes(data)
        side = os.path.join(root, fmt.done_name(e["shard"]))
        doc = json.load(open(side))
        doc["index_sha256"] = e["index_sha256"]
        open(side, "wb").write(fmt.canonical_json(doc))
    m["format_version"] = 1
    m["dataset_id"] = fmt.dataset_id(m["shards"], m["latents"]["sha256_of_shard_hashes"], 1)
    open(os.path.join(root, fmt.MANIFEST), "w").write(json.dumps(m, indent=1, sort_keys=True))


def as_format_3(root) -> dict:
    """The format-4 dataset at `root` as the format-3 writer wrote it: its shard entries listed in the
    manifest, no shard table, its id recomputed. Returns the manifest written."""
    import json
    import os

    from factory import format as fmt

    m = fmt.open_dataset(str(root)).manifest
    shards = sorted(m["shards"], key=lambda s: s["shard"])
    out = {k: v for k, v in m.items() if k != fmt.SHARD_TABLE_SECTION}
    out.update(format_version=3, shards=shards,
               dataset_id=fmt.dataset_id(shards, m["latents"]["sha256_of_shard_hashes"], 3))
    os.remove(os.path.join(str(root), fmt.SHARD_TABLE))
    open(os.path.join(str(root), fmt.MANIFEST), "w").write(json.dumps(out, indent=1, sort_keys=True))
    return out


def rewrite_shard_table(root, edit) -> dict:
    """The shard table of the format-4 dataset at `root` replaced by ``edit(table)`` (a pyarrow Table, any
    schema) and its manifest section resealed (sha256, bytes, rows): what a forger or a broken writer
    leaves, which only the table's column checks can refuse. Returns the manifest written."""
    import json
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    from factory import format as fmt

    path = os.path.join(str(root), fmt.SHARD_TABLE)
    table = edit(pq.read_table(path))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    open(path, "wb").write(data)
    mpath = os.path.join(str(root), fmt.MANIFEST)
    m = json.load(open(mpath))
    m[fmt.SHARD_TABLE_SECTION].update(sha256=fmt.sha256_bytes(data), bytes=len(data), rows=table.num_rows)
    open(mpath, "w").write(json.dumps(m, indent=1, sort_keys=True))
    return m


# ------------------------------------------------------------------ processes a user starts (dask's CLI)

def start_process(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    """A process in its own session (so the whole group can be stopped), output to `log`."""
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def stop_process(p: subprocess.Popen) -> None:
    """Stop a process and everything in its group: SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            break
        try:
            p.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # the group's other members (worker processes) may outlive its leader for a moment
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_scheduler(port: int, env: dict, log: Path, timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """`dask scheduler` on 127.0.0.1:`port` as a user starts it (its own process, output to `log`), listening
    when this returns; (the process, its address). A scheduler that exits or does not listen fails the test."""
    p = start_process([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], env, log)
    deadline = time.monotonic() + timeout
    while not listening(port):
        if p.poll() is not None or time.monotonic() > deadline:
            stop_process(p)
            raise AssertionError(f"the dask scheduler did not listen on port {port}:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    return p, f"tcp://127.0.0.1:{port}"
