"""trainers.data.stream: exact reading of datasets and views, hold-out, DDP-exact epoch split, resume, tar safety."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from factory import format as fmt
from trainers.data import reader
from trainers.data import stream as td
from trainers.data.stream import (
    DataError,
    LoaderState,
    ShardInfo,
    TrainStream,
    open_index,
    plan_epoch,
)

REPO = Path(__file__).resolve().parent.parent



class _FakeWorker:
    def __init__(self, wid, n):
        self.id, self.num_workers = wid, n


def _run_worker(stream, wid, nw, monkeypatch):
    """Iterate what loader worker wid of nw would produce (in-process)."""
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: _FakeWorker(wid, nw))
    try:
        return list(iter(stream))
    finally:
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: None)


def _tar_member(small_dataset: Path, shard: int, name: str) -> bytes:
    with tarfile.open(small_dataset / "shards" / f"{shard:06d}.tar") as tf:
        return tf.extractfile(name).read()


def test_dataset_reads_exactly_the_manifest_samples(small_dataset):
    from PIL import Image

    manifest = json.loads((small_dataset / "manifest.json").read_text())
    idx = open_index(str(small_dataset), split="all")
    assert len(idx) == manifest["samples"] > 0
    side = manifest["resolution"]
    rows = []
    for b in td.iter_batches(idx, batch_size=40):
        assert b["image"].dtype == torch.float32 and b["mask"].dtype == torch.float32
        assert b["image"].shape[1:] == (3, side, side)
        assert b["mask"].shape[1:] == (1, side, side)
        assert -1.0 <= float(b["image"].min()) and float(b["image"].max()) <= 1.0
        assert set(torch.unique(b["mask"]).tolist()) <= {0.0, 1.0}
        rows += b["row"].tolist()
        if len(rows) == 40:  # compare one sample with the tar's PNGs decoded directly
            r = rows[5]
            png = np.asarray(Image.open(io.BytesIO(_tar_member(small_dataset, 0, f"{r:010d}.png"))).convert("RGB"))
            mpng = np.asarray(Image.open(io.BytesIO(_tar_member(small_dataset, 0, f"{r:010d}.mask.png"))))
            np.testing.assert_allclose(b["image"][5].numpy(), png.transpose(2, 0, 1) / 127.5 - 1, atol=1e-6)
            np.testing.assert_array_equal(b["mask"][5, 0].numpy(), (mpng > 127).astype(np.float32))
    expected = [r for s in manifest["shards"] for r in range(s["first_row"], s["first_row"] + s["samples"])]
    assert rows == expected


def test_one_epoch_of_the_stream_is_a_prefix_of_the_order_without_repeats(small_dataset):
    idx = open_index(str(small_dataset), split="all")
    stream = TrainStream(idx, batch_size=10, seed=3, flip=False, shuffle_window=40)
    batches = list(stream)
    assert len(batches) == len(stream) == len(idx) // 10
    rows = np.concatenate([b["row"].numpy() for b in batches])
    assert len(set(rows.tolist())) == rows.size == (len(idx) // 10) * 10  # remainder dropped
    order = td.epoch_order(idx, 3, 0, 40)
    np.testing.assert_array_equal(rows, idx.rows[order[: rows.size]])
    # another epoch, another order; same seed + epoch, same order
    assert not np.array_equal(td.epoch_order(idx, 3, 1, 40), order)
    np.testing.assert_array_equal(td.epoch_order(idx, 3, 0, 40), order)


def test_view_yields_exactly_its_keys_and_never_decodes_rejected_ones(small_dataset, view_of, tmp_path,
                                                                       monkeypatch):
    view_path, view = view_of(small_dataset, tmp_path / "view.json", lambda r: r % 3 != 1)
    accepted = fmt.AcceptedRows(view["accepted"], view["format_version"]).all_rows().tolist()
    decoded = []
    real = td.decode_image
    monkeypatch.setattr(reader, "decode_image", lambda data, mode, where, **k: decoded.append(where) or real(data, mode, where, **k))
    idx = open_index(str(view_path), split="all")
    assert idx.view_id == view["view_id"] and idx.dataset_id == view["parent"]["dataset_id"]
    rows = [r for b in td.iter_batches(idx, batch_size=16) for r in b["row"].tolist()]
    assert rows == accepted
    assert len(decoded) == 2 * len(accepted)  # image + mask of accepted samples only
    assert all(int(w.split("key ")[1][:10]) % 3 != 1 for w in decoded)
    # through the training stream too
    decoded.clear()
    stream = TrainStream(idx, batch_size=8, seed=0)
    got = [r for b in stream for r in b["row"].tolist()]
    assert set(got) <= set(accepted) and len(got) == len(set(got)) == (len(accepted) // 8) * 8
    assert len(decoded) == 2 * len(got)


def test_view_with_changed_parent_is_refused(small_dataset, view_of, tmp_path):
    view_path, view = view_of(small_dataset, tmp_path / "view.json", lambda r: True)
    view["parent"]["dataset_id"] = "ds-" + "0" * 32
    view_path.write_text(json.dumps(view))
    with pytest.raises(DataError, match="parent changed"):
        open_index(str(view_path))


def test_holdout_is_disjoint_from_training_and_follows_the_rule(small_dataset):
    all_ = open_index(str(small_dataset), split="all")
    tr = open_index(str(small_dataset), split="train", holdout_permille=200)
    va = open_index(str(small_dataset), split="val", holdout_permille=200)
    assert set(tr.rows.tolist()).isdisjoint(va.rows.tolist())
    assert sorted(tr.rows.tolist() + va.rows.tolist()) == all_.rows.tolist()
    assert 0 < len(va) < len(all_)
    import hashlib
    for r in va.rows.tolist():
        assert int(hashlib.sha256(f"{r:010d}".encode()).hexdigest(), 16) % 1000 < 200
    assert len(open_index(str(small_dataset), split="val", holdout_permille=0)) == 0


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("workers", [1, 2])
def test_ddp_split_is_exact(small_dataset, world, workers, monkeypatch):
    idx = open_index(str(small_dataset), split="all")
    B = 7
    state = LoaderState(5, 2, 0)
    plan = plan_epoch(idx, state, world_size=world, batch_size=B, workers=workers, shuffle_window=20)
    steps = len(idx) // (world * B)
    seen = []
    for r in range(world):
        n_batches = sum(len(w) for w in plan[r])
        assert n_batches == steps  # every rank the same number of batches
        # the real stream, worker by worker, yields the planned batches
        stream = TrainStream(idx, batch_size=B, seed=5, world_size=world, rank=r, shuffle_window=20, state=state)
        for w in range(workers):
            got = _run_worker(stream, w, workers, monkeypatch)
            assert [b["step"] for b in got] == list(range(w, steps, workers))
            assert [b["row"].tolist() for b in got] == [p.tolist() for p in plan[r][w]]
            seen += [x for b in got for x in b["row"].tolist()]
    assert len(seen) == len(set(seen)) == steps * world * B  # disjoint; remainder < world*B dropped
    order = td.epoch_order(idx, 5, 2, 20)
    assert set(seen) == set(idx.rows[order[: steps * world * B]].tolist())


def test_resume_mid_epoch_with_another_world_size_covers_the_rest(small_dataset):
    idx = open_index(str(small_dataset), split="all")
    B = 5
    order = idx.rows[td.epoch_order(idx, 1, 0, 30)]
    # 3 ranks run 2 steps, then the job resumes on 2 ranks
    first = plan_epoch(idx, LoaderState(1, 0, 0), world_size=3, batch_size=B, workers=2, shuffle_window=30)
    done = [x for r in range(3) for w in first[r] for b in w for x in b.tolist()]
    consumed_steps = 2
    done_prefix = set(order[: consumed_steps * 3 * B].tolist())
    state = LoaderState(1, 0, consumed_steps * 3 * B)
    rest = plan_epoch(idx, state, world_size=2, batch_size=B, workers=2, shuffle_window=30)
    later = [x for r in range(2) for w in rest[r] for b in w for x in b.tolist()]
    assert len(later) == len(set(later))
    assert done_prefix.isdisjoint(later)
    remaining = len(idx) - consumed_steps * 3 * B
    assert len(later) == (remaining // (2 * B)) * 2 * B
    assert set(later) == set(order[consumed_steps * 3 * B: consumed_steps * 3 * B + len(later)].tolist())
    assert [len(sum(rest[r], [])) for r in range(2)] == [remaining // (2 * B)] * 2
    assert done_prefix <= set(done)


def test_dataloader_with_two_workers_keeps_step_order(small_dataset):
    idx = open_index(str(small_dataset), split="all")
    stream = TrainStream(idx, batch_size=8, seed=2, shuffle_window=32)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    got = list(loader)
    ref = list(TrainStream(idx, batch_size=8, seed=2, shuffle_window=32))
    assert [b["step"] for b in got] == list(range(len(ref)))
    for a, b in zip(got, ref):
        assert torch.equal(a["row"], b["row"]) and torch.equal(a["image"], b["image"])


def test_flip_is_seeded_per_sample(small_dataset):
    idx = open_index(str(small_dataset), split="all")
    plain = {int(r): im for b in TrainStream(idx, batch_size=8, seed=4, flip=False)
             for r, im in zip(b["row"], b["image"])}
    flipped = list(TrainStream(idx, batch_size=8, seed=4, flip=True))
    n_flip = 0
    for b in flipped:
        for r, im in zip(b["row"].tolist(), b["image"]):
            if td.flip_bit(4, 0, r):
                n_flip += 1
                assert torch.equal(im, plain[r].flip(-1))
            else:
                assert torch.equal(im, plain[r])
    assert 0 < n_flip < len(plain)


def _write_tar(path: Path, members):
    with tarfile.open(path, "w") as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "folder", "foreign_row"])
def test_hostile_tar_members_are_refused_with_the_shard_named(tmp_path, kind):
    path = tmp_path / "000000.tar"
    ti = tarfile.TarInfo("0000000000.png")
    data = b"x"
    if kind == "dotdot":
        ti.name = "../0000000000.png"
    elif kind == "absolute":
        ti.name = "/etc/0000000000.png"
    elif kind == "symlink":
        ti.type, ti.linkname, data = tarfile.SYMTYPE, "/etc/passwd", None
    elif kind == "folder":
        ti.name = "sub/0000000000.png"
    elif kind == "foreign_row":
        ti.name = "0000000099.png"
    if data is not None:
        ti.size = len(data)
    _write_tar(path, [(ti, data)])
    with pytest.raises(DataError, match=str(path)):
        td.read_shard(ShardInfo(0, str(path), 0, 10), {0}, ("png", "mask.png"))


def test_missing_member_names_shard_and_key(tmp_path):
    path = tmp_path / "000000.tar"
    ti = tarfile.TarInfo("0000000000.png")
    ti.size = 1
    _write_tar(path, [(ti, b"x")])
    with pytest.raises(DataError, match=r"key 0000000000 lacks member\(s\) \['mask.png'\]"):
        td.read_shard(ShardInfo(0, str(path), 0, 10), {0}, ("png", "mask.png"))


def test_trainers_imports_only_factory_format():
    code = ("import importlib, json, pkgutil, sys, trainers\n"
            "for m in pkgutil.walk_packages(trainers.__path__, 'trainers.'):\n"
            "    if not m.name.endswith('__main__'):\n"
            "        importlib.import_module(m.name)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m == 'factory' or m.startswith('factory.'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    mods = json.loads(out.stdout)
    assert "factory.format" in mods
    assert [m for m in mods if m != "factory" and m != "factory.format" and not m.startswith("factory.format.")] == []


@pytest.mark.parametrize("m", [1, 2, 3, 5, 17, 1000, 4097])
def test_shuffle_is_a_permutation_and_inverse_undoes_it(m):
    from trainers.data.planner import Shuffle

    sh = Shuffle(m, np.array([1, 2, 3, 4], np.uint64))
    i = np.arange(m, dtype=np.int64)
    v = sh(i)
    assert sorted(v.tolist()) == i.tolist()
    np.testing.assert_array_equal(sh.inverse(v), i)
    if m >= 17:
        assert not np.array_equal(v, i) and not np.array_equal(v, Shuffle(m, np.array([5, 6, 7, 8], np.uint64))(i))


@pytest.mark.parametrize("window", [1, 7, 40, 10**9])
def test_lazy_epoch_order_slices_agree_with_the_whole_order(window):
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 30, 23)
    order = td.lazy_order(type("I", (), {"counts": counts})(), 4, 1, window)
    whole = order.array()
    assert sorted(whole.tolist()) == list(range(int(counts.sum())))  # every position once
    for a, b in [(0, 5), (3, 70), (len(whole) - 9, len(whole) + 4), (50, 50)]:
        np.testing.assert_array_equal(order[a:b], whole[a:b])
    starts = np.concatenate([[0], np.cumsum(counts)])
    for i in range(len(counts)):  # where() is the inverse: the order indices of each shard's positions
        np.testing.assert_array_equal(whole[order.where(i)], np.arange(starts[i], starts[i + 1]))
    # windows: consecutive visited shards, each (but the last) at least `window` samples, shuffled inside
    ws = order.window_starts
    assert ws[0] == 0 and ws[-1] == len(whole)
    assert all(int(ws[k + 1] - ws[k]) >= min(window, int(ws[-1] - ws[k])) for k in range(len(ws) - 1))
    shard_of = np.repeat(np.arange(len(counts)), counts)
    visited = [int(s) for k, s in enumerate(shard_of[whole]) if k == 0 or s != shard_of[whole][k - 1]]
    if window >= counts.sum():
        assert len(ws) == 2
    if window == 1:  # windows of one shard: the shards are visited whole, in the seeded order
        assert visited == order.perm.tolist()
    np.testing.assert_array_equal(td.lazy_order(type("I", (), {"counts": counts})(), 4, 1, window).array(), whole)
    assert not np.array_equal(td.lazy_order(type("I", (), {"counts": counts})(), 4, 2, window).array(), whole)


def test_index_of_a_view_with_hold_out_is_its_accepted_rows_split_by_key_hash(small_dataset, view_of, tmp_path):
    view_path, view = view_of(small_dataset, tmp_path / "view.json", lambda r: r % 3 != 1)
    accepted = fmt.AcceptedRows(view["accepted"], view["format_version"]).all_rows()
    held = np.array([td.holdout_bucket(fmt.sample_key(r)) < 300 for r in accepted.tolist()], bool)
    for split, want in (("train", accepted[~held]), ("val", accepted[held]), ("all", accepted)):
        idx = open_index(str(view_path), split=split, holdout_permille=300)
        np.testing.assert_array_equal(idx.rows, want)
        assert len(idx) == want.size and idx.rows.dtype == np.int64
        np.testing.assert_array_equal(idx.shards, idx.shard_of_rows(want))
        pos = np.arange(len(idx))[::-1]
        np.testing.assert_array_equal(idx.rows_at(pos), want[pos])
        np.testing.assert_array_equal(idx.shards_at(pos), idx.shards[pos])
