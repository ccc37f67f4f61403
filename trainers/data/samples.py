"""A dataset or view as torch datasets of single samples, for any model (`factory.open(URL).torch()`,
docs/python.md), and `rank_samples`, the one path by which a rank reads its samples of an epoch
(`trainers.data.stream.TrainStream` batches what it yields, so `trainers train` reads through it).

* ``access="stream"`` (`SampleStream`, an IterableDataset): the planner's epoch order
  (`trainers.data.planner`), cut for DDP ranks (``torch.distributed`` when initialized, else torchrun's
  ``RANK`` / ``WORLD_SIZE``) and for DataLoader workers in steps of ``batch_size`` samples; each shard read
  once per epoch and worker, hashed against the manifest as it streams (`trainers.data.reader`). With the
  same ``batch_size`` as the DataLoader's, its batches are `trainers train`'s batches, in order.
* ``access="random"`` (`SampleMap`, map-style): item ``i`` is the split's ``i``-th sample (row order), one range
  read each (format version 2), each shard's sha256 checked once per process; ``sampler()`` gives this rank's
  positions in the planner's whole-dataset order (`trainers train --access random`'s).

Both yield ``(image, mask)``: float32 tensors ``[3, H, W]`` in [-1, 1] and ``[1, H, W]`` in {0, 1}, or what
``transform(image, mask)`` returns. An epoch of either over ``split="all"`` with one rank gives every sample
once; with ``W`` ranks the last ``n % (W * batch_size)`` samples of the epoch's order are left for other
epochs (no rank waits, no sample twice). ``consumed`` (samples of the epoch's order already used by all
ranks) resumes an epoch.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterator

import numpy as np
import torch

from factory import format as fmt
from trainers.data.index import SampleIndex, build_index
from trainers.data.planner import DEFAULT_SHUFFLE_WINDOW, LoaderState, flip_bit, lazy_order, rank_steps, steps_in_epoch
from trainers.data.random_access import RandomAccessDataset
from trainers.data.reader import ShardReader, decode_sample
from trainers.errors import DataError

SPLITS = ("train", "val", "all")


def decode_row(index: SampleIndex, reader: ShardReader, row: int, *, seed: int, epoch: int,
               flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """(image [3,H,W], mask [1,H,W]) of ``row`` from ``reader``, checked and decoded, flipped when its
    `flip_bit` says so."""
    s = reader.shard_of(row)
    where = f"shard {index.shard_info[s].url}: key {fmt.sample_key(row)}"
    image, mask = decode_sample(reader.take(row), index.mask_members(), where, image_member=index.image_member,
                                side=index.resolution)
    if flip and flip_bit(seed, epoch, row):
        image, mask = image[:, :, ::-1], mask[:, :, ::-1]
    return image, mask


def rank_samples(index: SampleIndex, state: LoaderState, *, world_size: int, rank: int, batch_size: int,
                 worker: int = 0, workers: int = 1, shuffle_window: int = DEFAULT_SHUFFLE_WINDOW,
                 flip: bool = True) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """``(step, row, image, mask)`` of loader worker ``worker`` of ``workers`` on ``rank``: the rank's steps
    ``j`` with ``j % workers == worker`` of the rest of the epoch, each step's ``batch_size`` samples in order."""
    order = lazy_order(index, state.seed, state.epoch, shuffle_window)
    steps = rank_steps(order, state.consumed, world_size=world_size, rank=rank, batch_size=batch_size)
    mine = range(worker, len(steps), workers)
    if not mine:
        return

    def wanted(shard: int) -> np.ndarray:  # rows of a shard this worker takes this epoch (read once)
        i = int(np.searchsorted(index.shard_ids, shard))
        return index.rows_at(steps.mine(i, worker, workers))

    def need_order() -> Iterator[int]:  # the worker's shards in the order it first needs them
        seen: set[int] = set()
        for j in mine:
            for s in index.shards_at(steps[j]).tolist():
                if s not in seen:
                    seen.add(s)
                    yield s

    reader = ShardReader(index, wanted=wanted, order=need_order() if index.cache is not None else None)
    try:
        for j in mine:
            for row in index.rows_at(steps[j]).tolist():
                image, mask = decode_row(index, reader, row, seed=state.seed, epoch=state.epoch, flip=flip)
                yield j, row, image, mask
    finally:
        reader.close()


def world() -> tuple[int, int]:
    """(world size, rank): torch.distributed's when initialized, else torchrun's environment, else (1, 0)."""
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        return tdist.get_world_size(), tdist.get_rank()
    try:
        return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    except ValueError:
        raise DataError("WORLD_SIZE and RANK must be integers (as torchrun sets them)") from None


class RankPlan:
    """What both public datasets share: the index, the loader state, this rank's place, the output."""

    def __init__(self, index: SampleIndex, *, seed: int, epoch: int, consumed: int, batch_size: int,
                 world_size: int | None, rank: int | None, flip: bool, transform: Callable | None):
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        w, r = world()
        self.world_size = w if world_size is None else world_size
        self.rank = r if rank is None else rank
        if not 0 <= self.rank < self.world_size:
            raise DataError(f"rank {self.rank} is not in 0..{self.world_size - 1}")
        if not 0 <= consumed <= len(index):
            raise DataError(f"consumed must be in 0..{len(index)} (samples of the epoch), got {consumed}")
        self.index, self.batch_size, self.flip, self.transform = index, batch_size, flip, transform
        self.state = LoaderState(seed, epoch, consumed)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (its own seeded order) from its beginning."""
        self.state = LoaderState(self.state.seed, epoch, 0)

    def set_state(self, state: LoaderState) -> None:
        self.state = state

    def steps(self) -> int:
        """Steps of ``batch_size`` samples this rank gets from the state to the end of the epoch."""
        return steps_in_epoch(len(self.index), self.state.consumed, self.world_size, self.batch_size)

    def rank_rows(self, shuffle_window: int) -> np.ndarray:
        """This rank's rows in the order of the planner (a DataLoader's order with the same batch_size)."""
        order = lazy_order(self.index, self.state.seed, self.state.epoch, shuffle_window)
        steps = rank_steps(order, self.state.consumed, world_size=self.world_size, rank=self.rank,
                           batch_size=self.batch_size)
        return self.index.rows_at(np.concatenate(list(steps))) if len(steps) else np.zeros(0, np.int64)

    def output(self, image: np.ndarray, mask: np.ndarray) -> Any:
        image_t = torch.from_numpy(np.ascontiguousarray(image))
        mask_t = torch.from_numpy(np.ascontiguousarray(mask))
        return (image_t, mask_t) if self.transform is None else self.transform(image_t, mask_t)


class SampleStream(RankPlan, torch.utils.data.IterableDataset):
    """One epoch (from the loader state) of this rank's samples, read shard after shard (module doc)."""

    def __init__(self, index: SampleIndex, *, shuffle_window: int = DEFAULT_SHUFFLE_WINDOW, **kw):
        RankPlan.__init__(self, index, **kw)
        self.shuffle_window = shuffle_window

    def __len__(self) -> int:
        return self.steps() * self.batch_size

    def rows(self) -> np.ndarray:
        return self.rank_rows(self.shuffle_window)

    def __iter__(self) -> Iterator[Any]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        for _, _, image, mask in rank_samples(self.index, self.state, world_size=self.world_size, rank=self.rank,
                                              batch_size=self.batch_size, worker=wid, workers=nw,
                                              shuffle_window=self.shuffle_window, flip=self.flip):
            yield self.output(image, mask)


class RankOrder(torch.utils.data.Sampler):
    """This rank's positions of a `SampleMap` in the planner's whole-dataset order of the epoch."""

    def __init__(self, plan: SampleMap):
        self.plan = plan

    def __len__(self) -> int:
        return self.plan.steps() * self.plan.batch_size

    def __iter__(self) -> Iterator[int]:
        p = self.plan
        order = lazy_order(p.index, p.state.seed, p.state.epoch, max(1, len(p.index)))
        for step in rank_steps(order, p.state.consumed, world_size=p.world_size, rank=p.rank,
                               batch_size=p.batch_size):
            yield from step.tolist()


class SampleMap(RankPlan, torch.utils.data.Dataset):
    """Map-style: item ``i`` is the split's ``i``-th sample in row order, one range read (module doc)."""

    def __init__(self, index: SampleIndex, resolved: fmt.Resolved, **kw):
        RankPlan.__init__(self, index, **kw)
        self.reader = RandomAccessDataset(index, resolved, seed=self.state.seed, flip=self.flip)

    def __len__(self) -> int:
        return len(self.index)

    def rows(self) -> np.ndarray:
        return self.rank_rows(max(1, len(self.index)))

    def sampler(self) -> RankOrder:
        """This rank's positions of the epoch in the planner's order (a DataLoader's ``sampler``)."""
        return RankOrder(self)

    def __getitem__(self, i: int) -> Any:
        if not 0 <= i < len(self.index):
            raise IndexError(f"sample {i} is not in 0..{len(self.index) - 1}")
        s = self.reader[(int(i), self.state.epoch)]
        return self.output(s["image"], s["mask"])


def torch_dataset(resolved: fmt.Resolved, *, split: str = "train", seed: int = 0, transform: Callable | None = None,
                  access: str = "stream", holdout_permille: int = 10, mask: str = "clean", mask_source: str = "mask",
                  batch_size: int = 1, epoch: int = 0, consumed: int = 0, world_size: int | None = None,
                  rank: int | None = None, shuffle_window: int = DEFAULT_SHUFFLE_WINDOW, flip: bool = False,
                  verify: bool = True) -> SampleStream | SampleMap:
    """The torch dataset of ``split`` ("train", "val" = the hold-out, "all") of an opened dataset or view.

    ``holdout_permille``, ``mask``, ``mask_source``, ``shuffle_window``, ``flip`` and ``verify`` mean what
    `trainers train`'s flags of those names mean (the same defaults, but no flip); ``batch_size`` is the
    DataLoader's (the unit in which ranks and workers take samples); ``epoch`` and ``consumed`` the loader
    state to start from; ``world_size`` and ``rank`` default to torch.distributed's / torchrun's."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    index = build_index(resolved, split=split, holdout_permille=holdout_permille, mask=mask, mask_source=mask_source,
                        verify=verify)
    kw = dict(seed=seed, epoch=epoch, consumed=consumed, batch_size=batch_size, world_size=world_size, rank=rank,
              flip=flip, transform=transform)
    if access == "stream":
        return SampleStream(index, shuffle_window=shuffle_window, **kw)
    if access == "random":
        return SampleMap(index, resolved, **kw)
    raise DataError(f"access must be stream or random, got {access!r}")
