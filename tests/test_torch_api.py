"""`factory.open(...).torch()`: every sample once per epoch (DataLoader with 0, 1, 2 workers; 2 gloo ranks),
the order and batches of `trainers train` (its TrainStream, its random access), resume, hold-out.

Samples are identified by their pixels: each yielded image is mapped back to a key through an independent
decode (`Dataset.sample`)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import factory
from factory import format as fmt
from trainers.data.planner import LoaderState, plan_epoch
from trainers.data.stream import TrainStream, open_index

REPO = Path(__file__).resolve().parent.parent


def digest(image: torch.Tensor) -> str:
    pixels = torch.round((image + 1) * 127.5).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return hashlib.sha256(pixels.tobytes()).hexdigest()


@pytest.fixture(scope="module")
def keyed(small_dataset):
    ds = factory.open(str(small_dataset))
    ref = {hashlib.sha256(ds.sample(k)["image"].tobytes()).hexdigest(): k for k in ds.keys()}
    assert len(ref) == len(ds) == 60  # every image distinct: pixels name the sample
    return ds, ref


def keys_of(loader, ref) -> list[str]:
    return [ref[digest(im)] for batch in loader for im in batch[0]]


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_all_split_every_sample_once_in_planner_order(keyed, workers):
    ds, ref = keyed
    data = ds.torch(split="all", seed=3, batch_size=4)
    keys = keys_of(torch.utils.data.DataLoader(data, batch_size=4, num_workers=workers), ref)
    assert sorted(keys) == ds.keys() and len(keys) == len(data) == 60
    idx = open_index(str(ds.root), split="all", holdout_permille=0)
    plan = plan_epoch(idx, LoaderState(3, 0, 0), world_size=1, batch_size=4, workers=1)
    assert keys == [fmt.sample_key(r) for b in plan[0][0] for r in b.tolist()] == \
        [fmt.sample_key(r) for r in data.rows().tolist()]


def test_batches_are_trainers_batches(keyed, small_dataset):
    ds, _ = keyed
    data = ds.torch(split="train", seed=1, batch_size=5, shuffle_window=20, flip=True, epoch=2)
    ours = list(torch.utils.data.DataLoader(data, batch_size=5, num_workers=2))
    index = open_index(str(small_dataset), split="train", holdout_permille=10)
    theirs = list(TrainStream(index, batch_size=5, seed=1, shuffle_window=20, flip=True, state=LoaderState(1, 2, 0)))
    assert len(ours) == len(theirs) > 0
    for (image, mask), batch in zip(ours, theirs):
        assert torch.equal(image, batch["image"]) and torch.equal(mask, batch["mask"])
        assert image.dtype == torch.float32 and image.shape[1:] == (3, 64, 64) and mask.shape[1:] == (1, 64, 64)


def test_resume_continues_the_epoch(keyed):
    ds, ref = keyed
    whole = keys_of(torch.utils.data.DataLoader(ds.torch(split="all", seed=5, batch_size=2), batch_size=2), ref)
    rest = keys_of(torch.utils.data.DataLoader(ds.torch(split="all", seed=5, batch_size=2, consumed=22),
                                               batch_size=2, num_workers=2), ref)
    assert rest == whole[22:]


def test_random_access_sampler_order(keyed):
    ds, ref = keyed
    data = ds.torch(split="all", seed=4, access="random", batch_size=3)
    keys = keys_of(torch.utils.data.DataLoader(data, batch_size=3, sampler=data.sampler(), num_workers=2), ref)
    assert sorted(keys) == ds.keys()
    assert keys == [fmt.sample_key(r) for r in data.rows().tolist()]
    assert ref[digest(data[7][0])] == ds.keys()[7]  # item i: the i-th sample in row order


def test_holdout_train_partition_and_transform(keyed):
    ds, ref = keyed
    held = ds.torch(split="holdout", holdout_permille=200)
    train = ds.torch(split="train", holdout_permille=200, transform=lambda im, m: (im, m, m.mean()))
    h = [ref[digest(im)] for im, _ in held]
    items = list(train)
    t = [ref[digest(im)] for im, _, _ in items]
    assert h and t and not set(h) & set(t) and sorted(h + t) == ds.keys()
    assert all(int(hashlib.sha256(k.encode()).hexdigest(), 16) % 1000 < 200 for k in h)
    assert all(torch.equal(m.mean(), f) for _, m, f in items)
    with pytest.raises(fmt.FactoryError, match="split must be"):
        ds.torch(split="val")


def test_a_view_yields_its_accepted_samples(keyed, tmp_path):
    ds, ref = keyed
    view = ds.filter(max_fg=0.5)
    view.save(str(tmp_path / "v.json"))
    opened = factory.open(str(tmp_path / "v.json"))
    keys = [ref[digest(im)] for im, _ in opened.torch(split="all", access="stream")]
    assert sorted(keys) == view.keys() and 0 < len(keys) < 60


RANK_SCRIPT = """
import hashlib, json, sys, torch, torch.distributed as dist
import factory
dist.init_process_group("gloo")
data = factory.open(sys.argv[1]).torch(split="all", seed=7, batch_size=2)
seen = []
for image, _ in torch.utils.data.DataLoader(data, batch_size=2, num_workers=int(sys.argv[3])):
    for im in image:
        px = torch.round((im + 1) * 127.5).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
        seen.append(hashlib.sha256(px.tobytes()).hexdigest())
json.dump({"world": data.world_size, "seen": seen}, open(f"{sys.argv[2]}/rank-{dist.get_rank()}.json", "w"))
dist.destroy_process_group()
"""


def test_two_gloo_ranks_share_the_epoch(keyed, tmp_path):
    ds, ref = keyed
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
           str(ds.root), str(tmp_path), "1"]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    got = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    assert [g["world"] for g in got] == [2, 2]
    k0, k1 = ([ref[h] for h in g["seen"]] for g in got)
    assert len(k0) == len(k1) == 30 and not set(k0) & set(k1) and sorted(k0 + k1) == ds.keys()
    idx = open_index(str(ds.root), split="all", holdout_permille=0)
    plan = plan_epoch(idx, LoaderState(7, 0, 0), world_size=2, batch_size=2, workers=1)
    assert k0 == [fmt.sample_key(r) for b in plan[0][0] for r in b.tolist()]
    # an odd count: the remainder of the last global batch waits for another epoch, never a sample twice
    data = ds.torch(split="all", seed=7, batch_size=7, world_size=2, rank=1)
    assert len(data) == 28 and len(set(data.rows().tolist())) == 28
    assert np.intersect1d(data.rows(), ds.torch(split="all", seed=7, batch_size=7, world_size=2, rank=0).rows()).size == 0
