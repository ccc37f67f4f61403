"""Stream a factory dataset or view into training batches: view-aware, seeded, exact under DDP.

The parts: the sample index (`trainers.data.index`, with the hold-out of `trainers.data.holdout`), the
planner (`trainers.data.planner`: each epoch's seeded order, cut exactly for DDP ranks and loader workers,
the loader state) and the shard reader (`trainers.data.reader`: each shard read once per epoch, checked
and hashed, samples decoded when a batch is assembled). This module assembles batches from them
(`TrainStream`, `iter_batches`) and re-exports their names. `TrainStream` stacks what
`trainers.data.samples.rank_samples` yields: the path of the public per-sample datasets (`factory.open(URL).torch()`).

Reading all members of a shard once per worker costs one pass over the tar
headers plus the data of the worker's own samples (tar data are skipped by
seeking; fsspec files of object stores seek with range reads).
"""
from __future__ import annotations

import itertools
from typing import Iterator

import numpy as np
import torch

from trainers.data.holdout import holdout_bucket, holdout_buckets, holdout_rule  # noqa: F401
from trainers.data.index import (  # noqa: F401
    MASK_SOURCES,
    SampleIndex,
    ShardInfo,
    build_index,
    check_mask_source,
    open_index,
    opened,
    other_split,
)
from trainers.data.planner import (  # noqa: F401
    DEFAULT_SHUFFLE_WINDOW,
    EpochOrder,
    LoaderState,
    RankSteps,
    Shuffle,
    epoch_order,
    flip_bit,
    lazy_order,
    plan_epoch,
    rank_steps,
    steps_in_epoch,
)
from trainers.data.reader import (  # noqa: F401
    VERIFIED_SHARDS,
    ShardReader,
    check_whole_shard,
    decode_image,
    decode_sample,
    open_shard,
    read_shard,
    shard_errors,
)
from trainers.data.samples import decode_row, rank_samples
from trainers.errors import DataError  # noqa: F401


def stack_batch(images: list[np.ndarray], masks: list[np.ndarray], rows: np.ndarray) -> dict:
    """One batch dict (image, mask, row tensors) of decoded samples."""
    try:
        image_b = np.stack(images)
        mask_b = np.stack(masks)
    except ValueError:
        shapes = sorted({im.shape for im in images})
        raise DataError(f"samples of one batch differ in size {shapes[:3]}; a dataset holds one resolution") \
            from None
    return {"image": torch.from_numpy(image_b), "mask": torch.from_numpy(mask_b),
            "row": torch.from_numpy(np.asarray(rows).astype(np.int64))}


def make_batch(index: SampleIndex, reader: ShardReader, rows: np.ndarray, *, seed: int, epoch: int,
               flip: bool) -> dict:
    pairs = [decode_row(index, reader, r, seed=seed, epoch=epoch, flip=flip) for r in rows.tolist()]
    return stack_batch([p[0] for p in pairs], [p[1] for p in pairs], rows)


class TrainStream(torch.utils.data.IterableDataset):
    """One epoch (from the current state) of this rank's batches; use with ``DataLoader(batch_size=None)``.

    Each yielded batch is a dict: image [B,3,H,W] float32 in [-1,1], mask [B,1,H,W]
    float32 in {0,1}, row [B] int64 (global rows), step (index of the batch
    within this iterator, for order checks), epoch.
    """

    def __init__(self, index: SampleIndex, *, batch_size: int, seed: int = 0, world_size: int = 1, rank: int = 0,
                 shuffle_window: int = DEFAULT_SHUFFLE_WINDOW, flip: bool = True,
                 state: LoaderState | None = None):
        super().__init__()
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in 0..{world_size - 1}")
        self.index = index
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.shuffle_window = shuffle_window
        self.flip = flip
        self.state = state if state is not None else LoaderState(seed, 0, 0)
        if self.state.seed != seed:
            raise DataError(f"loader state seed {self.state.seed} differs from seed {seed}")
        if len(index) < world_size * batch_size:
            raise DataError(f"{len(index)} {index.split} samples cannot fill one global batch of "
                            f"{world_size} rank(s) x {batch_size}; lower --batch-size or use more data")

    @property
    def global_batch(self) -> int:
        return self.world_size * self.batch_size

    def set_state(self, state: LoaderState) -> None:
        self.state = state

    def steps(self) -> int:
        """Batches this rank (every rank) gets from the current state to the end of the epoch."""
        return steps_in_epoch(len(self.index), self.state.consumed, self.world_size, self.batch_size)

    def __len__(self) -> int:
        return self.steps()

    def __iter__(self) -> Iterator[dict]:
        """The rank's samples from `samples.rank_samples` (the one reading path), stacked step by step."""
        info = torch.utils.data.get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        st = self.state
        samples = rank_samples(self.index, st, world_size=self.world_size, rank=self.rank, batch_size=self.batch_size,
                               worker=wid, workers=nw, shuffle_window=self.shuffle_window, flip=self.flip)
        for j, group in itertools.groupby(samples, key=lambda s: s[0]):
            items = list(group)
            batch = stack_batch([s[2] for s in items], [s[3] for s in items], np.array([s[1] for s in items]))
            batch["step"] = j
            batch["epoch"] = st.epoch
            yield batch


def iter_batches(index: SampleIndex, batch_size: int, limit: int | None = None) -> Iterator[dict]:
    """Every sample of ``index`` (first ``limit`` rows), in row order, read shard by shard; no flip.

    Used for validation on the hold-out; the last batch may be short.
    """
    rows = index.rows if limit is None else index.rows[:limit]
    if rows.shape[0] == 0:
        return
    reader = ShardReader(index, rows)
    try:
        for b0 in range(0, rows.shape[0], batch_size):
            yield make_batch(index, reader, rows[b0:b0 + batch_size], seed=0, epoch=0, flip=False)
    finally:
        reader.close()
