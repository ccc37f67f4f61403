"""Map-style training data (``trainers train --access random``): every batch drawn from the whole dataset.

The streaming reader (`trainers.data.TrainStream`) reads shard after shard and shuffles inside windows
of consecutive shards. This one reads each sample by key with one range read of its shard
(the index's ``tar_offset`` / ``tar_size``, format version 2), so an epoch is a seeded permutation of
all accepted samples:

* **order** (`RandomBatchSampler`): the same planner as the stream, its order with a window as
  large as the dataset (a seeded permutation of every sample per epoch, computed a batch at a time) cut by
  `rank_steps`: global step
  ``j`` takes ``order[c + j*W*B : c + (j+1)*W*B]``, rank ``r`` its ``r``-th slice of ``B``; the
  remainder is dropped. Exact under DDP, and the loader state ``(seed, epoch, consumed)`` resumes it
  with any number of ranks or loader workers (a torch DataLoader returns batches in sampler order).
* **samples** (`RandomAccessDataset`): a torch map-style Dataset over the accepted rows. Each shard's
  sha256 is checked once per process, by a pass over the whole shard before its first sample is used
  (``--no-verify`` skips it; with ``--cache-dir`` the cached copy was checked as it was fetched). A sample's
  byte range comes from its shard's index fragment (read once per shard and loader worker, sha256
  checked, 12 bytes a sample kept), its members from the reading room's `format.range_members` (safe tar rules, the key
  checked, exactly the members the manifest names); members are decoded as the stream decodes them, flips are the same pure function of
  (seed, epoch, row).

A dataset written before format version 2 has no offsets: refused in one line naming `factory upgrade`.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from factory import format as fmt
from trainers.data.index import SampleIndex, column_array, index_parts, opened
from trainers.data.planner import LoaderState, flip_bit, lazy_order, rank_steps, steps_in_epoch
from trainers.data.reader import check_whole_shard, decode_sample, shard_errors
from trainers.errors import DataError

ACCESS_MODES = ("stream", "random")  # trainers train --access


class ShardOffsets:
    """Byte ranges of the samples of each shard, read from the index fragments on first use."""

    def __init__(self, resolved: fmt.Resolved):
        m = resolved.manifest
        if not fmt.has_offsets(m):
            raise DataError(f"dataset {m['dataset_id']} (format version {m.get('format_version')}) has no tar "
                            f"offsets for random access; run factory upgrade {resolved.root}")
        self.root = resolved.root
        self.manifest = m
        self.resolved = resolved
        self.entries = m["shards"]  # shard ids are 0..K-1 in order (check_manifest)
        self.cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def shard(self, sid: int) -> tuple[np.ndarray, np.ndarray]:
        """(tar_offset int64, tar_size int32) of shard ``sid``'s rows, in row order from its first row."""
        if sid not in self.cache:
            import pyarrow as pa
            import pyarrow.parquet as pq

            e = self.entries[sid]
            url = fmt.join(self.root, e["index"])
            if fmt.has_parts(self.manifest):  # a compacted index: the row group holding the shard
                try:
                    t = fmt.read_shards_index(self.root, self.manifest, [sid], ["row", *fmt.OFFSET_COLUMNS],
                                              parts=index_parts(self.resolved))
                except fmt.FormatError as err:
                    raise DataError(str(err)) from None
            else:
                try:
                    data = fmt.read_bytes(url)
                except OSError as err:
                    raise DataError(f"cannot read index fragment {url}: {err}") from None
                if fmt.sha256_bytes(data) != e["index_sha256"]:
                    raise DataError(f"index fragment {url} does not match the manifest's sha256 (changed or corrupt)")
                t = pq.ParquetFile(pa.BufferReader(data)).read(columns=["row", *fmt.OFFSET_COLUMNS])
            rows = column_array(t, "row")
            if not np.array_equal(rows, np.arange(e["first_row"], e["first_row"] + e["samples"])):
                raise DataError(f"index fragment {url}: rows are not {e['first_row']}..{e['first_row'] + e['samples'] - 1}")
            self.cache[sid] = (column_array(t, "tar_offset").astype(np.int64),
                               column_array(t, "tar_size").astype(np.int32))
        return self.cache[sid]

    def range_of(self, sid: int, row: int) -> tuple[int, int]:
        off, size = self.shard(sid)
        i = row - self.entries[sid]["first_row"]
        return int(off[i]), int(size[i])


class RandomAccessDataset(torch.utils.data.Dataset):
    """Map-style Dataset: item ``(pos, epoch)`` -> one decoded sample of ``index`` (position ``pos``)."""

    def __init__(self, index: SampleIndex, resolved: fmt.Resolved, *, seed: int = 0, flip: bool = True):
        if resolved.manifest["dataset_id"] != index.dataset_id:
            raise DataError(f"{resolved.root} is dataset {resolved.manifest['dataset_id']}, the index is of "
                            f"{index.dataset_id}")
        self.index, self.seed, self.flip = index, seed, flip
        self.offsets = ShardOffsets(resolved)

    def __len__(self) -> int:
        return len(self.index)

    def members(self, pos: int) -> dict[str, bytes]:
        """Encoded members of the sample at position ``pos`` (one range read)."""
        row, sid = int(self.index.rows_at([pos])[0]), int(self.index.shards_at([pos])[0])
        shard = self.index.shard_info[sid]
        off, size = self.offsets.range_of(sid, row)
        with shard_errors(shard):
            if self.index.cache is None:
                check_whole_shard(shard)  # once per shard and process (a cached copy was checked as it was fetched)
                return fmt.range_members(shard, fmt.sample_key(row), off, size)
            with self.index.cache.open(shard) as f:  # the shard's copy in the node's cache (fetched once per node)
                return fmt.range_members(shard, fmt.sample_key(row), off, size, f=f)

    def __getitem__(self, item: tuple[int, int]) -> dict:
        pos, epoch = item
        row, sid = int(self.index.rows_at([pos])[0]), int(self.index.shards_at([pos])[0])
        where = f"shard {self.index.shard_info[sid].url}: key {fmt.sample_key(row)}"
        members = self.members(pos)
        lacks = [m for m in (self.index.image_member, *self.index.mask_members()) if m not in members]
        if lacks:
            raise DataError(f"{where} lacks member(s) {lacks}")
        image, mask = decode_sample(members, self.index.mask_members(), where, image_member=self.index.image_member,
                                    side=self.index.resolution)
        if self.flip and flip_bit(self.seed, epoch, row):
            image, mask = image[:, :, ::-1], mask[:, :, ::-1]
        return {"image": np.ascontiguousarray(image), "mask": np.ascontiguousarray(mask), "row": row}


class RandomBatchSampler(torch.utils.data.Sampler):
    """This rank's batches of the epoch from the loader state: lists of ``(pos, epoch)`` (see module doc)."""

    def __init__(self, index: SampleIndex, *, batch_size: int, world_size: int = 1, rank: int = 0,
                 state: LoaderState | None = None):
        self.index, self.batch_size, self.world_size, self.rank = index, batch_size, world_size, rank
        self.state = state or LoaderState()

    def steps(self) -> int:
        return steps_in_epoch(len(self.index), self.state.consumed, self.world_size, self.batch_size)

    def __len__(self) -> int:
        return self.steps()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        st = self.state
        order = lazy_order(self.index, st.seed, st.epoch, max(1, len(self.index)))
        for b in rank_steps(order, st.consumed, world_size=self.world_size, rank=self.rank,
                            batch_size=self.batch_size):
            yield [(int(p), st.epoch) for p in b]


def collate(samples: list[dict]) -> dict:
    images = [s["image"] for s in samples]
    if len({im.shape for im in images}) != 1:
        raise DataError(f"samples of one batch differ in size {sorted({im.shape for im in images})[:3]}; "
                        "a dataset holds one resolution")
    return {"image": torch.from_numpy(np.stack(images)), "mask": torch.from_numpy(np.stack([s["mask"] for s in samples])),
            "row": torch.tensor([s["row"] for s in samples], dtype=torch.int64)}


class RandomAccessStream:
    """The `TrainStream` interface (``set_state``, ``steps``, batches with ``step`` and ``epoch``) over random
    access: ``loader(num_workers=K)`` is the DataLoader to iterate, once per epoch."""

    def __init__(self, index: SampleIndex, resolved: fmt.Resolved, *, batch_size: int, seed: int = 0,
                 world_size: int = 1, rank: int = 0, flip: bool = True, state: LoaderState | None = None):
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in 0..{world_size - 1}")
        if len(index) < world_size * batch_size:
            raise DataError(f"{len(index)} {index.split} samples cannot fill one global batch of "
                            f"{world_size} rank(s) x {batch_size}; lower --batch-size or use more data")
        self.dataset = RandomAccessDataset(index, resolved, seed=seed, flip=flip)
        self.sampler = RandomBatchSampler(index, batch_size=batch_size, world_size=world_size, rank=rank,
                                          state=state or LoaderState(seed, 0, 0))
        if self.sampler.state.seed != seed:
            raise DataError(f"loader state seed {self.sampler.state.seed} differs from seed {seed}")

    def set_state(self, state: LoaderState) -> None:
        self.sampler.state = state

    def steps(self) -> int:
        return self.sampler.steps()

    def loader(self, *, num_workers: int = 0, pin_memory: bool = False) -> Iterator[dict]:
        """Batches of the epoch from the current state, each with ``step`` and ``epoch`` (iterate it again
        after ``set_state`` for the next epoch)."""
        return _Epochs(self, num_workers=num_workers, pin_memory=pin_memory)


class _Epochs:
    """Iterable over one epoch's batches per ``iter()``, numbered like `TrainStream`'s."""

    def __init__(self, stream: RandomAccessStream, *, num_workers: int, pin_memory: bool):
        self.stream = stream
        self.dl = torch.utils.data.DataLoader(stream.dataset, batch_sampler=stream.sampler, collate_fn=collate,
                                              num_workers=num_workers, pin_memory=pin_memory,
                                              prefetch_factor=4 if num_workers else None)

    def __iter__(self) -> Iterator[dict]:
        epoch = self.stream.sampler.state.epoch
        for j, batch in enumerate(self.dl):
            batch["step"] = j
            batch["epoch"] = epoch
            yield batch


def require_offsets(url: str, *, allow_remote_shards: bool = False, index: SampleIndex | None = None) -> None:
    """DataError (one line naming `factory upgrade`) unless dataset/view ``url`` can be read by key (``index``:
    one opened from ``url``, whose opened manifest is used)."""
    ShardOffsets(opened(url, allow_remote_shards, index))


def open_random_access(url: str, index: SampleIndex, *, allow_remote_shards: bool = False, **kw) -> RandomAccessStream:
    """`RandomAccessStream` of dataset/view ``url`` (whose sample index is ``index``); DataError without offsets."""
    return RandomAccessStream(index, opened(url, allow_remote_shards, index), **kw)
