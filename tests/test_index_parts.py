"""The compacted index (format version 3, and 4 with the shard table): parts of whole shards with page checksums and footers hashed
in the manifest; generate compacts many shards, upgrade compacts earlier datasets; stock readers count
every row once; a changed byte in what a reader reads is caught; a killed compaction finishes on rerun."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from factory import format as fmt
from factory.cli import main
from factory.dataset import compact as cp
from factory.dataset.reader import load_index, read_sample, read_shard_samples
from factory.format import index as fidx

N, SHARD = 60, 10


def cli(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in r.output, r.output
    return r


def manifest(root) -> dict:
    return fmt.open_dataset(root).manifest


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("parts") / "shapes")
    r = cli("generate", "--generator", "shapes", "--n", N, "--shard-size", SHARD, "--resolution", 32,
            "--workers", 0, "--quiet", "--out", root)
    assert r.exit_code == 0, r.output
    return root


@pytest.fixture()
def compacted(ds, tmp_path, monkeypatch) -> str:
    """A copy of `ds` upgraded to parts of 2 row groups of 2 shards (small sizes: several parts and groups)."""
    monkeypatch.setattr(cp, "PART_ROWS", 4 * SHARD)
    monkeypatch.setattr(cp, "GROUP_ROWS", 2 * SHARD)
    root = str(tmp_path / "c")
    shutil.copytree(ds, root)
    r = cli("upgrade", root, "--compact")
    assert r.exit_code == 0 and "compacted into 2 parts" in r.output, r.output
    return root


def test_upgrade_compacts_the_index_reading_only_the_index(ds, compacted):
    old, new = manifest(ds), manifest(compacted)
    assert old["format_version"] == 2 and new["format_version"] == 4
    assert sorted(os.listdir(os.path.join(compacted, "index"))) == ["000000-000003.parquet", "000004-000005.parquet"]
    parts = fidx.index_parts(new)
    assert [p["row_groups"] for p in parts] == [[[0, 2, 20], [2, 2, 20]], [[4, 2, 20]]]
    # tars, latents and their digests untouched; only the index entries and the id change
    for a, b in zip(old["shards"], new["shards"]):
        assert {k: v for k, v in a.items() if not k.startswith("index")} == \
            {k: v for k, v in b.items() if not k.startswith("index")}
    assert new["upgraded_from"] == {"dataset_id": old["dataset_id"], "format_version": 2}
    assert new["dataset_id"] == fmt.dataset_id(new["shards"], new["latents"]["sha256_of_shard_hashes"], 4)
    assert not fmt.manifest_problems(new)
    # same rows, same values, plus the key's hold-out bucket
    a, b = load_index(ds, old), load_index(compacted, new)
    assert b.drop_columns([fidx.KEY_BUCKET]).equals(a)
    rows = b.column("row").to_numpy()
    assert b.column(fidx.KEY_BUCKET).to_pylist() == [
        int(fmt.sha256_bytes(fmt.sample_key(r).encode()), 16) % 1000 for r in rows]
    md = pq.read_metadata(os.path.join(compacted, parts[0]["path"]))
    assert md.row_group(0).column(md.schema.names.index("fg_ratio")).statistics.has_min_max
    r = cli("verify", compacted)
    assert r.exit_code == 0 and r.output.startswith("OK"), r.output
    assert "nothing to do" in cli("upgrade", compacted).output


def test_stock_readers_count_every_sample_once(compacted):
    import duckdb
    import pandas as pd

    glob = os.path.join(compacted, "index", "**", "*.parquet")
    n, distinct = duckdb.connect().execute(f"SELECT count(*), count(DISTINCT row) FROM read_parquet('{glob}')").fetchone()
    assert n == distinct == N
    df = pd.read_parquet(os.path.join(compacted, "index"))
    assert len(df) == N and sorted(df["row"]) == list(range(N))


def test_views_samples_and_training_reads_are_the_same(ds, compacted, tmp_path):
    va, vb = tmp_path / "a.json", tmp_path / "b.json"
    assert cli("filter", ds, "--max-fg", "0.5", "--histogram", "reference", "--out", va).exit_code == 0
    assert cli("filter", compacted, "--max-fg", "0.5", "--histogram", "reference", "--out", vb).exit_code == 0
    a, b = json.load(open(va)), json.load(open(vb))
    assert a["accepted"] == b["accepted"] and a["counts"] == b["counts"] and a["accepted_stats"] == b["accepted_stats"]
    e = manifest(ds)["shards"][3]
    assert read_sample(compacted, "0000000033") == read_shard_samples(fmt.open_dataset(ds), e)["0000000033"]
    sub = load_index(compacted, manifest(compacted), ["row", "tar_offset"], shards=[2, 5])
    assert sub.column("row").to_pylist() == list(range(20, 30)) + list(range(50, 60))
    from trainers.data.random_access import ShardOffsets

    off = ShardOffsets(fmt.open_dataset(compacted))
    ref = load_index(ds, manifest(ds), ["tar_offset"], shards=[4]).column("tar_offset").to_numpy()
    assert np.array_equal(off.shard(4)[0], ref)


def test_a_changed_byte_in_what_a_reader_reads_is_caught(compacted, tmp_path):
    part = fidx.index_parts(manifest(compacted))[1]
    path = os.path.join(compacted, part["path"])
    md = pq.read_metadata(path)
    col = md.row_group(0).column(md.schema.names.index("fg_ratio"))
    data = bytearray(open(path, "rb").read())
    data[col.data_page_offset + col.total_compressed_size - 3] ^= 1  # a byte of fg_ratio's page data
    open(path, "wb").write(bytes(data))
    r = cli("filter", compacted, "--max-fg", "0.5", "--out", tmp_path / "v.json")
    assert r.exit_code == 1 and "changed or corrupt" in r.output, r.output
    r = cli("verify", compacted, "--index-only")
    assert r.exit_code == 1 and "sha256 differs" in r.output, r.output
    # a reader of other columns does not read that page; a changed footer is caught by its sha256
    data = bytearray(open(path, "rb").read())
    data[-12] ^= 1
    open(path, "wb").write(bytes(data))
    with pytest.raises(fmt.FormatError, match="footer"):
        load_index(compacted, manifest(compacted), ["row"])


def test_generate_compacts_many_shards_and_a_killed_compaction_finishes(tmp_path, monkeypatch):
    from factory.generate.config import GenerateConfig
    from factory.generate.engine import generate

    monkeypatch.setattr(cp, "COMPACT_MIN_SHARDS", 4)
    monkeypatch.setattr(cp, "PART_ROWS", 3 * SHARD)
    monkeypatch.setattr(cp, "PROCESSES", 1)  # in this process, where the patched part writer dies
    root = str(tmp_path / "g")
    cfg = dict(n=N, out=root, generator="shapes", generator_options={"resolution": 32}, shard_size=SHARD,
               workers=0, progress=False)
    real = cp.compact_part
    calls = []

    def dies_on_the_second(root, part):
        calls.append(part)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(root, part)

    monkeypatch.setattr(cp, "compact_part", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        generate(GenerateConfig(**cfg), log=lambda msg: None)
    assert not os.path.exists(os.path.join(root, fmt.MANIFEST))  # fragments kept until the manifest
    monkeypatch.setattr(cp, "compact_part", real)
    m = generate(GenerateConfig(**cfg), log=lambda msg: None)
    assert m["format_version"] == 4 and len(m["index"]["parts"]) == 2
    assert sorted(os.listdir(os.path.join(root, "index"))) == ["000000-000002.parquet", "000003-000005.parquet"]
    # killed after the manifest, before the fragments went: the next run of the command removes them
    stray = os.path.join(root, fmt.index_name(0))
    shutil.copy(os.path.join(root, "index", "000000-000002.parquet"), stray)
    generate(GenerateConfig(**cfg), log=lambda msg: None)
    assert not os.path.exists(stray)
    assert cli("verify", root).exit_code == 0


def test_a_view_of_a_view_over_parts_equals_the_one_over_fragments(ds, compacted, tmp_path):
    out = {}
    for name, root in (("frag", ds), ("parts", compacted)):
        first, second = tmp_path / f"{name}1.json", tmp_path / f"{name}2.json"
        assert cli("filter", root, "--max-fg", "0.6", "--out", first).exit_code == 0
        r = cli("filter", first, "--histogram", "reference", "--min-components", 1, "--out", second)
        assert r.exit_code == 0, r.output
        out[name] = json.load(open(second))
    a, b = out["frag"], out["parts"]
    assert a["accepted"] == b["accepted"] and a["counts"] == b["counts"] and a["rejected_in_turn"] == b["rejected_in_turn"]
    assert a["accepted_stats"] == b["accepted_stats"] and 0 < b["samples"] < N


def test_trainers_split_off_the_hold_out_from_the_recorded_buckets(ds, compacted, monkeypatch):
    from trainers.data import index as tindex

    a = tindex.open_index(ds, split="val", holdout_permille=300)
    hashed = []
    real = tindex.holdout_buckets
    monkeypatch.setattr(tindex, "holdout_buckets", lambda rows: hashed.append(len(rows)) or real(rows))
    b = tindex.open_index(compacted, split="val", holdout_permille=300)
    c = tindex.open_index(compacted, split="train", holdout_permille=300)
    assert not hashed  # read from the index, not hashed
    assert np.array_equal(a.rows, b.rows) and 0 < len(b.rows) < N
    assert sorted(np.concatenate([b.rows, c.rows]).tolist()) == list(range(N))


def test_many_bitmaps_decode_and_count_as_one_by_one():
    import base64

    rng = np.random.default_rng(0)
    objs = []
    for k in range(200):
        rows = np.sort(rng.choice(np.arange(k * 100, k * 100 + 60), size=int(rng.integers(0, 50)), replace=False))
        objs.append(fmt.encode_rows(rows))
    ref = [fmt.decode_rows(o) for o in objs]
    rows, pos = fmt.decode_many(objs)
    assert np.array_equal(rows, np.concatenate(ref))
    assert np.array_equal(pos, np.concatenate([np.full(len(r), i) for i, r in enumerate(ref)]))
    padded = next(i for i, o in enumerate(objs) if o["n"] % 8)
    raw = bytearray(base64.b64decode(objs[padded]["bits"]))
    raw[-1] |= 0x80  # a bit past the shard's n-th: not a row
    objs[padded] = dict(objs[padded], bits=base64.b64encode(bytes(raw)).decode())
    assert fmt.check_accepted({str(i): o for i, o in enumerate(objs)}, 2, "v") == sum(len(r) for r in ref)
    objs[3] = dict(objs[3], bits="!!")
    with pytest.raises(fmt.FormatError, match="base64"):
        fmt.decode_many(objs)


def test_compaction_filter_and_sample_reads_on_s3(ds, s3_server, tmp_path, monkeypatch):
    monkeypatch.setattr(cp, "PROCESSES", 1)
    fs, bucket = s3_server["fs"], s3_server["bucket"]
    url = f"s3://{bucket}/parts"
    fs.put(ds + "/", f"{bucket}/parts", recursive=True)
    r = cli("upgrade", url, "--compact")
    assert r.exit_code == 0 and "compacted into 1 part" in r.output, r.output
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{bucket}/parts/index")) == ["000000-000005.parquet"]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert cli("filter", ds, "--max-fg", "0.5", "--out", a).exit_code == 0
    assert cli("filter", url, "--max-fg", "0.5", "--out", b).exit_code == 0
    assert json.load(open(a))["accepted"] == json.load(open(b))["accepted"]
    assert read_sample(url, "0000000042") == read_sample(ds, "0000000042")
    assert cli("verify", url).exit_code == 0


def test_verify_on_a_cluster_reads_parts_by_shard_range_and_reports_the_same(compacted):
    """One cluster task per part (a shard range): the report equals the one-process report, clean and with a
    changed byte in the second part, full and index-only; also on a local cluster of worker processes."""
    from distributed import Client, LocalCluster

    from factory.dataset.verify import _cluster_ranges, verify

    assert _cluster_ranges(manifest(compacted)) == [(0, 4), (4, 6)]
    path = os.path.join(compacted, fidx.index_parts(manifest(compacted))[1]["path"])
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as lc, \
            Client(lc) as client:
        address = client.scheduler.address
        for tampered in (False, True):
            if tampered:
                data = bytearray(open(path, "rb").read())
                data[100] ^= 1
                open(path, "wb").write(bytes(data))
            for index_only in (False, True):
                one, many = (verify(compacted, index_only=index_only, scheduler=s) for s in (None, address))
                assert (many.ok, many.problems, many.bad_shards) == (one.ok, one.problems, one.bad_shards)
                assert one.ok is not tampered and (one.bad_shards == [4, 5]) is tampered, one.problems
    local = verify(compacted, workers=2)  # `verify --workers 2`: the same tasks on a local cluster of 2 processes
    assert (local.ok, local.problems, local.bad_shards) == (False, verify(compacted).problems, [4, 5])


def test_filter_on_a_cluster_writes_the_same_views(ds, compacted, tmp_path):
    """`filter --cluster`: shard-range tasks (parts, or ranges of fragments) merged into the same view bytes,
    of a dataset and of a view, over both index layouts."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as lc, \
            Client(lc) as client:
        address = client.scheduler.address
        for name, root in (("frag", ds), ("parts", compacted)):
            views = {}
            local = [("local", ["--workers", "2"])] if name == "parts" else []  # a local cluster of 2 processes
            for how, extra in (("one", []), ("many", ["--cluster", address]), *local):
                first, second = tmp_path / f"{name}-{how}1.json", tmp_path / f"{name}-{how}2.json"
                r = cli("filter", root, "--max-fg", "0.6", "--out", first, *extra)
                assert r.exit_code == 0, r.output
                r = cli("filter", first, "--histogram", "reference", "--where", "n_components >= 1", "--out", second,
                        *extra)
                assert r.exit_code == 0, r.output
                views[how] = (first.read_bytes(), second.read_bytes())
            assert views["one"] == views["many"] == views.get("local", views["one"]), name
            assert 0 < json.loads(views["many"][1])["samples"] < N


def test_filter_of_parts_converts_nothing_through_pandas(compacted, tmp_path):
    """The filter of a compacted index reads Arrow's buffers as numpy and builds its scalars from buffers:
    pandas is never imported (pyarrow's conversions import it: ~0.5 CPU s a process)."""
    import subprocess
    import sys

    code = ("import sys; from factory.api import run_filter; from factory.views.views import FilterSpec; "
            f"run_filter({compacted!r}, FilterSpec(max_fg=0.5, histogram='reference', where='n_components <= 3'), "
            f"{str(tmp_path / 'v.json')!r}); print('pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr[-2000:]
