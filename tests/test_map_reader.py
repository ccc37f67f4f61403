"""trainers' map-style reader (`--access random`): whole-dataset shuffle by range reads, exact under DDP."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from factory import format as fmt
from factory.dataset.shards import parquet_bytes
from trainers.data.random_access import RandomBatchSampler, open_random_access
from trainers.data.stream import DataError, LoaderState, TrainStream, epoch_order, open_index

N_SAMPLES = 60  # conftest's small_dataset: 3 shards of 20


@pytest.fixture()
def ds(small_dataset):
    return small_dataset


def batches(it):
    return [(b["step"], b["epoch"], b["row"].tolist(), b["image"].clone(), b["mask"].clone()) for b in it]


def test_random_access_batches_equal_the_stream_with_a_whole_dataset_window(ds, view_of, tmp_path):
    view, _ = view_of(ds, tmp_path / "v.json", lambda r: r % 4 != 2)
    idx = open_index(str(view), split="all")
    stream = TrainStream(idx, batch_size=5, seed=7, shuffle_window=len(idx), state=LoaderState(7, 1, 0))
    ra = open_random_access(str(view), idx, batch_size=5, seed=7, state=LoaderState(7, 1, 0))
    want = batches(stream)
    got = batches(ra.loader(num_workers=0))
    assert len(got) == len(want) == len(idx) // 5
    for (sj, se, sr, si, sm), (rj, re_, rr, ri, rm) in zip(want, got):
        assert (sj, se, sr) == (rj, re_, rr)
        assert torch.equal(si, ri) and torch.equal(sm, rm)  # same pixels, same flips
    rows = [r for b in got for r in b[2]]
    assert len(set(rows)) == len(rows) and set(rows) <= set(idx.rows.tolist())
    # two loader workers give the very same batches, in order
    assert [b[:3] for b in batches(ra.loader(num_workers=2))] == [b[:3] for b in got]
    # the whole-dataset order is not shard by shard: the first batch spans shards
    assert len({r // 20 for r in got[0][2]}) > 1


def test_sampler_order_and_ddp_partition(ds):
    idx = open_index(str(ds), split="all")
    order = epoch_order(idx, 3, 0, len(idx))
    world, b = 3, 4
    per_rank = [list(RandomBatchSampler(idx, batch_size=b, world_size=world, rank=r, state=LoaderState(3, 0, 0)))
                for r in range(world)]
    steps = N_SAMPLES // (world * b)
    assert all(len(p) == steps for p in per_rank)
    for j in range(steps):
        glob = [pos for r in range(world) for pos, _ in per_rank[r][j]]
        assert glob == order[j * world * b:(j + 1) * world * b].tolist()  # rank r takes the r-th slice
    flat = [pos for p in per_rank for batch in p for pos, _ in batch]
    assert len(flat) == len(set(flat)) == steps * world * b  # disjoint across ranks, no repeats
    # resumed mid-epoch with another world size: the rest of the same order
    rest = list(RandomBatchSampler(idx, batch_size=b, world_size=2, rank=1, state=LoaderState(3, 0, 24)))
    assert [p for p, _ in rest[0]] == order[24 + b:24 + 2 * b].tolist()
    assert epoch_order(idx, 3, 1, len(idx)).tolist() != order.tolist()


def test_a_dataset_without_offsets_is_refused_in_one_line(ds, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(ds, old)
    m = json.loads((old / fmt.MANIFEST).read_text())
    for e in m["shards"]:
        p = old / e["index"]
        data = parquet_bytes(pq.read_table(p).drop_columns(list(fmt.OFFSET_COLUMNS)))
        p.write_bytes(data)
        e["index_sha256"] = fmt.sha256_bytes(data)
    m["format_version"] = 1
    m["dataset_id"] = fmt.dataset_id(m["shards"], m["latents"]["sha256_of_shard_hashes"], 1)
    (old / fmt.MANIFEST).write_text(json.dumps(m))
    idx = open_index(str(old), split="all")
    with pytest.raises(DataError, match="run factory upgrade") as e:
        open_random_access(str(old), idx, batch_size=4)
    assert "\n" not in str(e.value)


def test_stale_offsets_are_an_error_naming_the_key(ds, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(ds, bad)
    m = json.loads((bad / fmt.MANIFEST).read_text())
    e = m["shards"][0]
    t = pq.read_table(bad / e["index"])
    import pyarrow as pa

    for c in fmt.OFFSET_COLUMNS:  # samples 0 and 1 swap their byte ranges
        v = t.column(c).to_numpy().copy()
        v[[0, 1]] = v[[1, 0]]
        t = t.set_column(t.schema.get_field_index(c), c, pa.array(v))
    data = parquet_bytes(t)
    (bad / e["index"]).write_bytes(data)
    e["index_sha256"] = fmt.sha256_bytes(data)
    m["dataset_id"] = fmt.dataset_id(m["shards"], (m.get("latents") or {}).get("sha256_of_shard_hashes"),
                                     m["format_version"])  # a consistent manifest: only the offsets lie
    (bad / fmt.MANIFEST).write_text(json.dumps(m))
    idx = open_index(str(bad), split="all")
    ra = open_random_access(str(bad), idx, batch_size=4)
    with pytest.raises(DataError, match="not a member of sample 0000000000"):
        ra.dataset[(0, 0)]
    np.testing.assert_array_equal(idx.rows, np.arange(N_SAMPLES))


def test_vectorized_holdout_buckets_equal_the_rule():
    from trainers.data.stream import holdout_bucket, holdout_buckets

    rows = np.concatenate([np.arange(0, 3000, 7), [9_999_999_999, 123_456_789]])
    assert holdout_buckets(rows).tolist() == [holdout_bucket(fmt.sample_key(int(r))) for r in rows]


def test_trainers_train_access_random(ds, tmp_path):
    from click.testing import CliRunner

    from trainers.cli import main as trainers_main

    def train(data, out, *extra):
        return CliRunner().invoke(trainers_main, ["train", "--data", str(data), "--out", str(out), "--steps", "3",
                                                  "--batch-size", "4", "--width", "8", "--workers", "0",
                                                  "--device", "cpu", "--val-every", "0", "--checkpoint-every", "0",
                                                  "--no-progress", "--access", "random", *extra])

    r = train(ds, tmp_path / "run")
    assert r.exit_code == 0, r.output
    card = json.loads((tmp_path / "run" / "card.json").read_text())
    assert card["recipe"]["access"] == "random"
    old = tmp_path / "old"
    shutil.copytree(ds, old)
    m = json.loads((old / fmt.MANIFEST).read_text())
    m["format_version"] = 1  # the reader decides by the version: no offsets are read from a version-1 index
    m["dataset_id"] = fmt.dataset_id(m["shards"], m["latents"]["sha256_of_shard_hashes"], 1)
    (old / fmt.MANIFEST).write_text(json.dumps(m))
    r = train(old, tmp_path / "run2")
    assert r.exit_code != 0 and "run factory upgrade" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
