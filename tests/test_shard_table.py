"""The shard table (format version 4): a run that compacts its index writes its shard entries as
`shards.parquet` beside the manifest, readers get the same entries back (and columns), every byte and
value of the table is checked before use (one line naming the entry), `factory upgrade` brings format 3
to 4 reading no tar, and verify, info, filter, trainers and signing work on it."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pytest
from helpers import as_format_3, cli, rewrite_shard_table

from factory import format as fmt

N, SHARD = 24, 4  # the session's table_dataset (tests/conftest.py)


@pytest.fixture()
def ds(table_dataset, tmp_path) -> str:
    return shutil.copytree(table_dataset, str(tmp_path / "ds"))


@pytest.fixture()
def made(table_dataset) -> str:
    return str(table_dataset)


def stored(root) -> dict:
    return json.load(open(os.path.join(root, fmt.MANIFEST)))


def test_a_compacting_run_writes_the_table_and_reads_back_its_entries(made):
    m = stored(made)
    assert m["format_version"] == 4 and "shards" not in m
    sec = m[fmt.SHARD_TABLE_SECTION]
    data = open(os.path.join(made, fmt.SHARD_TABLE), "rb").read()
    assert sec == {"path": fmt.SHARD_TABLE, "sha256": fmt.sha256_bytes(data), "bytes": len(data), "rows": N // SHARD}
    sidecars = [json.load(open(os.path.join(made, fmt.done_name(k)))) for k in range(N // SHARD)]
    shards = fmt.open_dataset(made).manifest["shards"]
    assert isinstance(shards, fmt.ShardTable) and len(shards) == N // SHARD
    part = m["index"]["parts"][0]
    for e, side in zip(shards, sidecars):  # the sidecar's fields, the platform by id, the index naming the part
        assert e["index"] == part["path"] and e["index_sha256"] == part["sha256"]
        assert e["platform"] in m["platforms"]
        same = ("shard", "path", "sha256", "bytes", "samples", "first_row", "latents_sha256", "batch_size")
        assert {k: e[k] for k in same} == {k: side[k] for k in same}
    assert shards[2] == list(shards)[2] and shards[-1]["shard"] == N // SHARD - 1 and shards[1:3] == list(shards)[1:3]
    assert np.array_equal(shards.column("samples"), np.full(N // SHARD, SHARD))
    # the id is the content hash of the same shard records, with format version 4
    assert m["dataset_id"] == fmt.dataset_id(list(shards), m["latents"]["sha256_of_shard_hashes"], 4)
    # the table's bytes round trip: written from the entries, read back equal
    assert fmt.table_bytes(list(shards)) == data and fmt.table_bytes(shards) == data
    with pytest.raises(TypeError):  # the read-only sequence is never dumped as the manifest's JSON by accident
        json.dumps(fmt.open_dataset(made).manifest)
    # stock readers of the index still see every sample once: the table is not under index/
    import duckdb

    glob = os.path.join(made, "index", "**", "*.parquet")
    assert duckdb.connect().execute(f"SELECT count(*), count(DISTINCT row) FROM read_parquet('{glob}')").fetchone() \
        == (N, N)


def test_upgrade_brings_format_3_to_4_reading_no_tar(ds, tmp_path):
    old = as_format_3(ds)
    assert cli("verify", ds, "--index-only").exit_code == 0
    view = tmp_path / "v3.json"
    assert cli("filter", ds, "--max-fg", "0.5", "--out", view).exit_code == 0
    tars = {p: os.stat(os.path.join(ds, "shards", p)).st_mtime_ns for p in os.listdir(os.path.join(ds, "shards"))}
    os.rename(os.path.join(ds, "shards"), os.path.join(ds, "away"))  # no tar is read: a missing one would fail it
    try:
        r = cli("upgrade", ds)
    finally:
        os.rename(os.path.join(ds, "away"), os.path.join(ds, "shards"))
    assert r.exit_code == 0 and "from format version 3 to 4" in r.output and "shards.parquet" in r.output, r.output
    new = stored(ds)
    assert new["format_version"] == 4 and "shards" not in new
    assert new["upgraded_from"] == {"dataset_id": old["dataset_id"], "format_version": 3}
    assert list(fmt.open_dataset(ds).manifest["shards"]) == old["shards"]
    assert new["dataset_id"] == fmt.dataset_id(old["shards"], old["latents"]["sha256_of_shard_hashes"], 4)
    assert tars == {p: os.stat(os.path.join(ds, "shards", p)).st_mtime_ns for p in tars}
    assert "nothing to do" in cli("upgrade", ds).output
    assert stored(ds) == new
    r = cli("info", view)  # a view made before the upgrade still resolves
    assert r.exit_code == 0 and f"of dataset {new['dataset_id']}" in r.output, r.output
    r = cli("verify", ds)
    assert r.exit_code == 0 and r.output.startswith("OK"), r.output


def test_verify_and_info_read_the_table(ds, tmp_path):
    r = cli("verify", ds)
    assert r.exit_code == 0 and r.output.startswith("OK") and f"{N} samples in {N // SHARD} shards" in r.output, r.output
    d = json.loads(cli("info", ds, "--json").output)
    m = fmt.open_dataset(ds).manifest
    assert d["shards"] == N // SHARD and d["bytes"] == sum(s["bytes"] for s in m["shards"]) == m["bytes"]
    assert d["provenance"]["format_version"] == 4
    # a forged table (a shard's digest changed, the section resealed): its columns pass, verify finds the shard
    def forged(t):
        digests = t.column("sha256").to_pylist()
        digests[2] = b"\0" * 32
        return t.set_column(t.column_names.index("sha256"), "sha256", pa.array(digests, pa.binary(32)))
    rewrite_shard_table(ds, forged)
    r = cli("verify", ds)
    assert r.exit_code == 1 and "not the content hash" in r.output, r.output


def test_trainers_read_a_format_4_dataset(ds, tmp_path):
    from trainers.data import index as tindex
    from trainers.data.stream import iter_batches

    legacy = shutil.copytree(ds, str(tmp_path / "v3"))
    as_format_3(legacy)
    a = tindex.open_index(ds, split="train", holdout_permille=300)
    b = tindex.open_index(legacy, split="train", holdout_permille=300)
    assert np.array_equal(a.rows, b.rows) and np.array_equal(a.shards, b.shards) and 0 < len(a.rows) < N
    import dataclasses

    def fields(info):
        return {k: dict(dataclasses.asdict(v), url=os.path.basename(v.url)) for k, v in info.items()}
    assert fields(a.shard_info) == fields(b.shard_info) and len(a.shard_info) == N // SHARD
    batch = next(iter_batches(tindex.open_index(ds, split="all"), batch_size=8))
    assert batch["image"].shape[0] == 8 and batch["row"].tolist() == list(range(8))
