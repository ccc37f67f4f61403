"""The planner: pure functions of (seed, epoch, consumed, world size, rank, batch size).

Each epoch has one seeded order of the training samples (`EpochOrder`, `epoch_order`), independent of
ranks and workers. It has locality: shards are visited in a seeded random order, and samples are shuffled
inside windows of consecutive shards holding at least ``shuffle_window`` samples (the "shuffle buffer",
computed on positions, so it is exact and reproducible), each window by a keyed permutation computed
element by element (`Shuffle`): any slice of the order costs its length, not the epoch's, and nothing the
size of the epoch is allocated (`rank_steps` is lazy too). Global step ``j`` of an epoch consumes the next
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
from collections.abc import Sequence
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


_ROUNDS = 4
_M1, _M2, _GOLD = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xD6E8FEB86659FD93), np.uint64(0x632BE59BD9B4E019)


def _mix(x: np.ndarray) -> np.ndarray:
    """A 64-bit mixing function (multiply, xor-shift), elementwise over uint64 (wrapping)."""
    x = x * _M1
    x ^= x >> np.uint64(32)
    x *= _M2
    x ^= x >> np.uint64(29)
    return x


class Shuffle:
    """A seeded permutation of ``0..m-1`` computed element by element: a balanced Feistel network of
    ``_ROUNDS`` rounds over the smallest even number of bits that holds ``m``, walked in cycles until the
    value falls below ``m``; `inverse` undoes it. Nothing of size ``m`` is ever allocated."""

    def __init__(self, m: int, keys: np.ndarray):
        self.m = int(m)
        self.half = max(1, (max(1, self.m - 1).bit_length() + 1) // 2)
        self.mask = np.uint64((1 << self.half) - 1)
        self.keys = np.asarray(keys, np.uint64)

    def _round(self, r: np.ndarray, j: int) -> np.ndarray:
        return _mix(r + self.keys[j]) & self.mask

    def _enc(self, x: np.ndarray) -> np.ndarray:
        h = np.uint64(self.half)
        left, right = x >> h, x & self.mask
        for j in range(_ROUNDS):
            left, right = right, left ^ self._round(right, j)
        return (left << h) | right

    def _dec(self, y: np.ndarray) -> np.ndarray:
        h = np.uint64(self.half)
        left, right = y >> h, y & self.mask
        for j in reversed(range(_ROUNDS)):
            left, right = right ^ self._round(left, j), left
        return (left << h) | right

    def _walk(self, x: np.ndarray, step) -> np.ndarray:
        y = step(np.asarray(x, np.uint64))
        out = y >= np.uint64(self.m)
        while out.any():
            y[out] = step(y[out])
            out[out] = y[out] >= np.uint64(self.m)
        return y.astype(np.int64)

    def __call__(self, i: np.ndarray) -> np.ndarray:
        """The permutation's values at ``i`` (int64)."""
        return self._walk(i, self._enc) if self.m > 1 else np.zeros(len(i), np.int64)

    def inverse(self, v: np.ndarray) -> np.ndarray:
        """Where the permutation puts the values ``v``: ``self(self.inverse(v)) == v``."""
        return self._walk(v, self._dec) if self.m > 1 else np.zeros(len(v), np.int64)


class EpochOrder:
    """The epoch's order of positions into the index, computed lazily (any slice of it on demand).

    The index's shards (those with samples) are visited in a seeded order; consecutive shards are grouped
    into windows of at least ``shuffle_window`` samples, and each window's samples are permuted by a
    `Shuffle` keyed by (seed, epoch, window). Only per-shard arrays are kept: a slice of ``k`` positions
    costs O(k) and the first batch of a 100M-sample epoch costs what a small one does."""

    def __init__(self, counts: np.ndarray, seed: int, epoch: int, shuffle_window: int = DEFAULT_SHUFFLE_WINDOW):
        counts = np.asarray(counts, np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # first position of each shard
        self.n = int(self.starts[-1])
        rng = _rng(seed, epoch, 0x5EED)
        self.perm = rng.permutation(counts.shape[0]).astype(np.int64)  # the shards in visiting order
        self.keys = rng.integers(0, 1 << 63, _ROUNDS, dtype=np.uint64)
        cum = np.concatenate([[0], np.cumsum(counts[self.perm])]).astype(np.int64)  # order index of each visit
        bounds = [0]  # visits that start a window: greedy, each window at least shuffle_window samples
        w = max(1, int(shuffle_window))
        while bounds[-1] < counts.shape[0]:
            nxt = int(np.searchsorted(cum, cum[bounds[-1]] + w, side="left"))
            bounds.append(min(max(nxt, bounds[-1] + 1), counts.shape[0]))
        self.visit_bounds = np.array(bounds, np.int64)  # window w visits perm[vb[w]:vb[w+1]]
        self.cum = cum
        self.window_starts = cum[self.visit_bounds]  # order index where each window starts (last: n)
        self.visit_of = np.empty(counts.shape[0], np.int64)
        self.visit_of[self.perm] = np.arange(counts.shape[0])

    def __len__(self) -> int:
        return self.n

    def shuffle(self, w: int) -> Shuffle:
        keys = _mix(self.keys + np.full(_ROUNDS, w + 1, np.uint64) * _GOLD)
        return Shuffle(int(self.window_starts[w + 1] - self.window_starts[w]), keys)

    def window_of(self, i: int) -> int:
        return int(np.searchsorted(self.window_starts, i, side="right") - 1)

    def take(self, a: int, b: int) -> np.ndarray:
        """Positions ``order[a:b]`` (int64)."""
        a, b = max(0, a), min(b, self.n)
        if b <= a:
            return np.zeros(0, np.int64)
        out = []
        w = self.window_of(a)
        while a < b:
            w0, w1 = int(self.window_starts[w]), int(self.window_starts[w + 1])
            local = self.shuffle(w)(np.arange(a - w0, min(b, w1) - w0, dtype=np.int64))
            v0, v1 = int(self.visit_bounds[w]), int(self.visit_bounds[w + 1])
            within = self.cum[v0:v1 + 1] - w0  # each visited shard's first local index
            k = np.searchsorted(within, local, side="right") - 1
            out.append(self.starts[self.perm[v0 + k]] + (local - within[k]))
            a, w = min(b, w1), w + 1
        return np.concatenate(out) if len(out) > 1 else out[0]

    def where(self, shard: int) -> np.ndarray:
        """The order indices of index shard ``shard``'s positions ``starts[shard]..``, in position order."""
        v = int(self.visit_of[shard])
        w = int(np.searchsorted(self.visit_bounds, v, side="right") - 1)
        w0 = int(self.window_starts[w])
        first = int(self.cum[v]) - w0
        count = int(self.starts[shard + 1] - self.starts[shard])
        return w0 + self.shuffle(w).inverse(np.arange(first, first + count, dtype=np.int64))

    def __getitem__(self, item):
        if isinstance(item, slice):
            a, b, step = item.indices(self.n)
            if step != 1:
                raise ValueError("an epoch order is sliced with step 1")
            return self.take(a, b)
        i = int(item) + (self.n if int(item) < 0 else 0)
        if not 0 <= i < self.n:
            raise IndexError(i)
        return int(self.take(i, i + 1)[0])

    def array(self) -> np.ndarray:
        """The whole order (n positions; for tests and small indexes)."""
        return self.take(0, self.n)


def epoch_order(index: SampleIndex, seed: int, epoch: int,
                shuffle_window: int = DEFAULT_SHUFFLE_WINDOW) -> np.ndarray:
    """The epoch's order of positions into ``index.rows`` as one array (a permutation with shard
    locality; `EpochOrder` computes slices of it lazily). ``shuffle_window >= len(index)`` gives one
    window: a seeded permutation of every sample."""
    return lazy_order(index, seed, epoch, shuffle_window).array()


def lazy_order(index: SampleIndex, seed: int, epoch: int, shuffle_window: int = DEFAULT_SHUFFLE_WINDOW) -> EpochOrder:
    """The `EpochOrder` of ``index`` for (seed, epoch)."""
    return EpochOrder(index.counts, seed, epoch, shuffle_window)


def steps_in_epoch(n: int, consumed: int, world_size: int, batch_size: int) -> int:
    """Full global batches left in an epoch of ``n`` samples after ``consumed``."""
    return max(0, n - consumed) // (world_size * batch_size)


class RankSteps(Sequence):
    """This rank's batches for the rest of the epoch: item ``j`` = positions of global step ``j``'s
    ``rank``-th slice of ``batch_size``, computed when asked for."""

    def __init__(self, order, consumed: int, *, world_size: int, rank: int, batch_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.order, self.consumed, self.world_size, self.rank, self.batch_size = \
            order, consumed, world_size, rank, batch_size
        self.n = steps_in_epoch(len(order), consumed, world_size, batch_size)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, j):
        if isinstance(j, slice):
            return [self[i] for i in range(*j.indices(self.n))]
        j = int(j) + (self.n if int(j) < 0 else 0)
        if not 0 <= j < self.n:
            raise IndexError(j)
        a = self.consumed + j * self.world_size * self.batch_size + self.rank * self.batch_size
        return np.asarray(self.order[a:a + self.batch_size], np.int64)

    def mine(self, shard: int, worker: int, workers: int) -> np.ndarray:
        """Positions of index shard ``shard`` that this rank's loader ``worker`` of ``workers`` takes."""
        g = self.world_size * self.batch_size
        rel = self.order.where(shard) - self.consumed
        j = rel // g
        ok = (rel >= 0) & (j < self.n) & ((rel % g) // self.batch_size == self.rank) & (j % workers == worker)
        return self.order.starts[shard] + np.flatnonzero(ok)


def rank_steps(order, consumed: int, *, world_size: int, rank: int, batch_size: int) -> RankSteps:
    """Positions (into the index) of each of this rank's batches for the rest of the epoch (lazily;
    ``order``: an `EpochOrder` or an array)."""
    return RankSteps(order, consumed, world_size=world_size, rank=rank, batch_size=batch_size)


def plan_epoch(index: SampleIndex, state: LoaderState, *, world_size: int, batch_size: int, workers: int,
               shuffle_window: int = DEFAULT_SHUFFLE_WINDOW) -> list[list[list[np.ndarray]]]:
    """For tests and audits: ``plan[rank][worker]`` = that worker's batches (global rows), in step order."""
    order = lazy_order(index, state.seed, state.epoch, shuffle_window)
    k = max(1, workers)
    plan = []
    for r in range(world_size):
        steps = rank_steps(order, state.consumed, world_size=world_size, rank=r, batch_size=batch_size)
        plan.append([[index.rows_at(p) for p in steps[w::k]] for w in range(k)])
    return plan


def flip_bit(seed: int, epoch: int, row: int) -> bool:
    """Whether sample ``row`` is flipped horizontally in ``epoch`` (a pure function)."""
    return bool(hashlib.blake2b(f"{seed}:{epoch}:{row}".encode(), digest_size=1).digest()[0] & 1)
