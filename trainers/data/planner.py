"""The planner: pure functions of (seed, epoch, consumed, world size, rank, batch size).

Each epoch has one seeded order of the training samples (`epoch_order`), independent of ranks and
workers. It has locality: shards are visited in a seeded random order, and samples are shuffled inside
windows of consecutive shards holding at least ``shuffle_window`` samples (the "shuffle buffer", computed
on row numbers, so it is exact and reproducible). Global step ``j`` of an epoch consumes the next
``W * B`` samples of that order, ``order[c + j*W*B : c + (j+1)*W*B]`` (``c`` = samples consumed before
this iterator started); rank ``r`` takes the ``r``-th slice of ``B`` (`rank_steps`). Loader worker ``k``
of ``K`` produces the rank's steps ``j`` with ``j % K == k``, which is the order in which a torch
DataLoader collects them (round robin), so batches come out in step order. The samples left after the
last full global batch (fewer than ``W * B``) are DROPPED for this epoch (they get their turn in other
epochs, whose order differs): every rank gets the same number of full batches, no sample is seen twice
in an epoch, and no rank waits for another.

The loader state (`LoaderState`) is ``(seed, epoch, consumed)``. Because the consumed samples are always
a prefix of the epoch's order, a run resumed with another number of ranks or workers continues exactly
where the epoch stood: the rest of the order is cut for the new world size (again dropping the new
remainder). With the same world size the resumed batches are the very same batches, in the same order,
whatever the number of loader workers. An optional horizontal flip is a pure function of
(seed, epoch, row) (`flip_bit`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from trainers.data.index import SampleIndex

DEFAULT_SHUFFLE_WINDOW = 2000


@dataclass(frozen=True)
class LoaderState:
    """Where training stands in the data: independent of ranks and loader workers."""

    seed: int = 0
    epoch: int = 0
    consumed: int = 0  # samples of this epoch's order consumed, by all ranks together

    def to_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "consumed": self.consumed}

    @classmethod
    def from_dict(cls, d: dict) -> "LoaderState":
        return cls(int(d["seed"]), int(d["epoch"]), int(d["consumed"]))


def _rng(*words: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(w) & 0xFFFFFFFF for w in words])))


def epoch_order(index: SampleIndex, seed: int, epoch: int,
                shuffle_window: int = DEFAULT_SHUFFLE_WINDOW) -> np.ndarray:
    """The epoch's order of positions into ``index.rows`` (a permutation with shard locality).

    Shards are visited in a seeded order; consecutive shards are grouped into
    windows of at least ``shuffle_window`` samples, and each window is shuffled.
    ``shuffle_window >= len(index)`` gives a uniform permutation.
    """
    n = len(index)
    if n == 0:
        return np.zeros(0, np.int64)
    rng = _rng(seed, epoch, 0x5EED)
    uniq, starts = np.unique(index.shards, return_index=True)  # rows sorted -> shards contiguous
    ends = np.append(starts[1:], n)
    perm = rng.permutation(uniq.shape[0])
    out = []
    window: list[np.ndarray] = []
    size = 0
    for i in perm:
        window.append(np.arange(starts[i], ends[i], dtype=np.int64))
        size += int(ends[i] - starts[i])
        if size >= max(1, shuffle_window):
            out.append(rng.permutation(np.concatenate(window)))
            window, size = [], 0
    if window:
        out.append(rng.permutation(np.concatenate(window)))
    return np.concatenate(out)


def steps_in_epoch(n: int, consumed: int, world_size: int, batch_size: int) -> int:
    """Full global batches left in an epoch of ``n`` samples after ``consumed``."""
    return max(0, n - consumed) // (world_size * batch_size)


def rank_steps(order: np.ndarray, consumed: int, *, world_size: int, rank: int,
               batch_size: int) -> list[np.ndarray]:
    """Positions (into the index) of each of this rank's batches for the rest of the epoch."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    g = world_size * batch_size
    steps = steps_in_epoch(order.shape[0], consumed, world_size, batch_size)
    return [order[consumed + j * g + rank * batch_size: consumed + j * g + (rank + 1) * batch_size]
            for j in range(steps)]


def plan_epoch(index: SampleIndex, state: LoaderState, *, world_size: int, batch_size: int, workers: int,
               shuffle_window: int = DEFAULT_SHUFFLE_WINDOW) -> list[list[list[np.ndarray]]]:
    """For tests and audits: ``plan[rank][worker]`` = that worker's batches (global rows), in step order."""
    order = epoch_order(index, state.seed, state.epoch, shuffle_window)
    k = max(1, workers)
    plan = []
    for r in range(world_size):
        steps = rank_steps(order, state.consumed, world_size=world_size, rank=r, batch_size=batch_size)
        plan.append([[index.rows[p] for p in steps[w::k]] for w in range(k)])
    return plan


def flip_bit(seed: int, epoch: int, row: int) -> bool:
    """Whether sample ``row`` is flipped horizontally in ``epoch`` (a pure function)."""
    return bool(hashlib.blake2b(f"{seed}:{epoch}:{row}".encode(), digest_size=1).digest()[0] & 1)
