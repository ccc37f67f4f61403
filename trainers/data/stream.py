"""Stream a factory dataset or view into training batches: view-aware, seeded, exact under DDP.

Architecture (reader / planner / worker):

* **index** (`SampleIndex`): the accepted sample list, known from the manifest
  and the view alone (no tar is opened): global rows, their shard, the shard
  URLs. A key-hash hold-out (``holdout_bucket(key) < holdout_permille``, with
  ``holdout_bucket(key) = int(sha256(key).hexdigest(), 16) % 1000``) splits it
  into ``train`` and ``val``.
* **planner** (`epoch_order`, `rank_steps`, `plan_epoch`): pure functions of
  (seed, epoch, consumed, world size, rank, batch size). Each epoch has one
  seeded order of the training samples, independent of ranks and workers. It
  has locality: shards are visited in a seeded random order, and samples are
  shuffled inside windows of consecutive shards holding at least
  ``shuffle_window`` samples (the "shuffle buffer", computed on row numbers, so
  it is exact and reproducible). Global step ``j`` of an epoch consumes the
  next ``W * B`` samples of that order, ``order[c + j*W*B : c + (j+1)*W*B]``
  (``c`` = samples consumed before this iterator started); rank ``r`` takes the
  ``r``-th slice of ``B``. Loader worker ``k`` of ``K`` produces the rank's
  steps ``j`` with ``j % K == k``, which is the order in which a torch
  DataLoader collects them (round robin), so batches come out in step order.
  The samples left after the last full global batch (fewer than ``W * B``) are
  DROPPED for this epoch (they get their turn in other epochs, whose order
  differs): every rank gets the same number of full batches, no sample is seen
  twice in an epoch, and no rank waits for another.
* **loader state** = ``(seed, epoch, consumed)``. Because the consumed samples
  are always a prefix of the epoch's order, a run resumed with another number
  of ranks or workers continues exactly where the epoch stood: the rest of the
  order is cut for the new world size (again dropping the new remainder).
  With the same world size the resumed batches are the very same batches, in
  the same order, whatever the number of loader workers.
* **worker** (`ShardReader`): reads the shards its rows live in, each at most
  once per epoch, sequentially, through fsspec (local folders or any URL).
  Tar headers are checked (regular files only, flat names, no ``..``, no
  absolute paths, keys that are rows of that shard); members of rows the worker
  does not need (rejected by the view, held out, or owned by another rank or
  worker) and members it does not use (``.json``, ``.latent.npy``) are skipped
  without reading their data, so nothing rejected is ever decoded. Kept samples
  wait, still PNG-encoded, until their step; decoding happens when a batch is
  assembled. Images become float32 CHW in [-1, 1], masks float32 ``[1, H, W]``
  in {0, 1}; an optional horizontal flip is a pure function of
  (seed, epoch, row). Errors name the shard URL and the member.

Reading all members of a shard once per worker costs one pass over the tar
headers plus the data of the worker's own samples (tar data are skipped by
seeking; fsspec files of object stores seek with range reads).
"""
from __future__ import annotations

import contextlib
import hashlib
import tarfile
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from factory import format as fmt
from trainers.errors import TrainersError
from trainers.model.unet import pixels_to_input

DEFAULT_SHUFFLE_WINDOW = 2000
MASK_SOURCES = ("mask", "teacher", "intersection")  # --mask-source: the GAN mask, the teacher's, both


class DataError(TrainersError, ValueError):
    """A dataset, view or shard that cannot be read as asked (message names the file)."""


# ----------------------------------------------------------------------------- hold-out


def holdout_bucket(key: str) -> int:
    """Bucket 0..999 of a sample key: ``int(sha256(key).hexdigest(), 16) % 1000``."""
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % 1000


_WORD_WEIGHTS = np.array([pow(2, 64 * (3 - i), 1000) for i in range(4)], np.int64)


def holdout_buckets(rows: np.ndarray) -> np.ndarray:
    """``holdout_bucket(sample_key(row))`` of every row: one digest per row, the modulo vectorized over the
    digest's four big-endian 64-bit words."""
    sha = hashlib.sha256
    out = np.zeros(rows.shape[0], np.int64)
    for i in range(0, rows.shape[0], 1 << 17):  # in chunks: the Python objects of a chunk only
        digests = b"".join([sha(b"%010d" % r).digest() for r in rows[i:i + (1 << 17)].tolist()])
        words = np.frombuffer(digests, ">u8").reshape(-1, 4)
        out[i:i + (1 << 17)] = ((words % np.uint64(1000)).astype(np.int64) @ _WORD_WEIGHTS) % 1000
    return out


def holdout_rule(permille: int) -> str:
    return f"int(sha256(key).hexdigest(), 16) % 1000 < {permille}"


# ----------------------------------------------------------------------------- index


@dataclass(frozen=True)
class ShardInfo:
    shard: int
    url: str
    first_row: int
    samples: int
    sha256: str | None = None  # the manifest's digest and size: the shard cache's key and its check
    bytes: int | None = None
    verify: bool = True  # sha256 checked while the shard is streamed (False: --no-verify)


# Shards whose sha256 this process has checked (url, sha256): each is hashed once, on its first read.
VERIFIED_SHARDS: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class SampleIndex:
    """The samples a split may use: global rows (sorted) and their shard ids."""

    rows: np.ndarray  # int64 [n], sorted
    shards: np.ndarray  # int64 [n], shard of each row
    shard_info: dict  # shard id -> ShardInfo
    dataset_id: str
    view_id: str | None
    split: str
    holdout_permille: int
    mask_member: str
    resolution: int | None
    image_member: str = fmt.EXT_IMAGE
    mask_source: str = "mask"
    cache: Any = field(default=None, compare=False)  # a cache.ShardCache for remote shards (cache.open_cache)

    def mask_members(self) -> tuple[str, ...]:
        """The members the training mask is made of (``mask_source``)."""
        return {"mask": (self.mask_member,), "teacher": (fmt.EXT_TEACHER,),
                "intersection": (self.mask_member, fmt.EXT_TEACHER)}[self.mask_source]

    def __len__(self) -> int:
        return int(self.rows.shape[0])


def build_index(resolved: fmt.Resolved, *, split: str = "train", holdout_permille: int = 0,
                mask: str = "clean", mask_source: str = "mask", verify: bool = True) -> SampleIndex:
    """Accepted samples of a dataset/view for ``split`` in {"train", "val", "all"}.

    ``train`` excludes the hold-out (keys whose bucket < holdout_permille),
    ``val`` is the hold-out only, ``all`` ignores it. ``mask_source``: one of MASK_SOURCES.
    A manifest whose fields disagree (as `factory verify` reports) is refused before anything is
    allocated; with ``verify`` each shard's sha256 is checked as it is read (once per process).
    """
    if split not in ("train", "val", "all"):
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
    if not isinstance(holdout_permille, int) or not 0 <= holdout_permille < 1000:
        raise DataError(f"holdout_permille must be an integer in 0..999, got {holdout_permille!r}")
    if mask not in ("clean", "raw"):
        raise DataError(f"mask must be 'clean' or 'raw', got {mask!r}")
    manifest = resolved.manifest
    try:
        fmt.check_manifest(manifest, f"dataset {manifest['dataset_id']}")
    except fmt.FormatError as e:
        raise DataError(str(e)) from None
    check_mask_source(manifest, mask_source)
    if mask == "raw" and not manifest.get("spec", {}).get("keep_raw_mask", False):
        raise DataError(f"dataset {manifest['dataset_id']} has no raw masks (it was generated without "
                        f"--keep-raw-mask); train with --mask clean")
    urls = dict(resolved.shard_urls())
    info = {}
    rows_l, shards_l = [], []
    for s in manifest["shards"]:
        sid = s["shard"]
        si = ShardInfo(sid, urls[sid], s["first_row"], s["samples"], s["sha256"], s["bytes"], verify)
        info[sid] = si
        if resolved.accepted is None:
            r = np.arange(si.first_row, si.first_row + si.samples, dtype=np.int64)
        else:
            acc = resolved.accepted.get(sid, ())
            r = np.asarray(acc, dtype=np.int64)  # sorted
            bad = r[(r < si.first_row) | (r >= si.first_row + si.samples)]
            if bad.size:
                raise DataError(f"view {resolved.view['view_id']}: row {int(bad[0])} is listed under shard "
                                f"{sid}, which holds rows {si.first_row}..{si.first_row + si.samples - 1}")
        rows_l.append(r)
        shards_l.append(np.full(r.shape, sid, np.int64))
    if resolved.accepted is not None:
        unknown = sorted(set(resolved.accepted) - set(info))
        if unknown:
            raise DataError(f"view {resolved.view['view_id']} accepts rows of shard(s) {unknown[:5]} that the "
                            f"parent dataset {manifest['dataset_id']} does not have")
    rows = np.concatenate(rows_l) if rows_l else np.zeros(0, np.int64)
    shards = np.concatenate(shards_l) if shards_l else np.zeros(0, np.int64)
    order = np.argsort(rows, kind="stable")
    rows, shards = rows[order], shards[order]
    if holdout_permille and split != "all":
        held = holdout_buckets(rows) < holdout_permille
        keep = held if split == "val" else ~held
        rows, shards = rows[keep], shards[keep]
    elif split == "val":
        rows, shards = rows[:0], shards[:0]
    return SampleIndex(
        rows=rows, shards=shards, shard_info=info, dataset_id=manifest["dataset_id"],
        view_id=resolved.view["view_id"] if resolved.view is not None else None, split=split,
        holdout_permille=holdout_permille,
        mask_member=fmt.EXT_MASK if mask == "clean" else fmt.EXT_RAW_MASK,
        resolution=manifest.get("resolution"),
        image_member=fmt.image_member(manifest), mask_source=mask_source,
    )


def check_mask_source(manifest: dict, mask_source: str) -> None:
    if mask_source not in MASK_SOURCES:
        raise DataError(f"--mask-source must be one of {', '.join(MASK_SOURCES)}, got {mask_source!r}")
    if mask_source != "mask" and "teacher" not in (manifest.get("members") or {}):
        raise DataError(f"dataset {manifest['dataset_id']} has no teacher masks (KEY.{fmt.EXT_TEACHER}); "
                        "make a relabelled one with trainers relabel + factory relabel, or use --mask-source mask")


def open_index(url: str, *, split: str = "train", holdout_permille: int = 0, mask: str = "clean",
               mask_source: str = "mask", allow_remote_shards: bool = False, verify: bool = True) -> SampleIndex:
    """Open a dataset folder/URL or a view JSON and build the sample index of ``split``."""
    try:
        resolved = fmt.open_dataset(url, allow_remote_shards=allow_remote_shards)
    except fmt.FormatError as e:
        raise DataError(str(e)) from None
    return build_index(resolved, split=split, holdout_permille=holdout_permille, mask=mask, mask_source=mask_source,
                       verify=verify)


# ----------------------------------------------------------------------------- planner


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


# ----------------------------------------------------------------------------- reading


def check_member(ti: tarfile.TarInfo, shard: ShardInfo) -> tuple[int, str]:
    """Validate one tar header by the format's rule; return (row, extension)."""
    try:
        return fmt.check_member(ti, url=shard.url, shard=shard.shard, first_row=shard.first_row,
                                samples=shard.samples)
    except fmt.FormatError as e:
        raise DataError(str(e)) from None


def open_shard(shard: ShardInfo, cache=None):
    """The shard's bytes as a binary file: its copy in ``cache`` (a cache.ShardCache) when given, else the store's."""
    if cache is not None:
        return cache.open(shard)
    fs, path = fmt.get_fs(shard.url)
    return fs.open(path, "rb")


def check_whole_shard(shard: ShardInfo) -> None:
    """For readers of byte ranges (random access): hash the whole of ``shard`` once per process, before its
    first sample is used; DataError naming the shard when it differs from the manifest."""
    if not shard.verify or shard.sha256 is None or (shard.url, shard.sha256) in VERIFIED_SHARDS:
        return
    with shard_errors(shard), open_shard(shard) as raw:
        fmt.HashingReader(raw, sha256=shard.sha256, size=shard.bytes, where=f"shard {shard.url}").finish()
    VERIFIED_SHARDS.add((shard.url, shard.sha256))


@contextlib.contextmanager
def shard_errors(shard: ShardInfo):
    """Errors met reading ``shard`` as one DataError line naming it."""
    try:
        yield
    except DataError:
        raise
    except fmt.FormatError as e:
        raise DataError(str(e)) from None
    except FileNotFoundError:
        raise DataError(f"shard {shard.url} not found (dataset incomplete or moved?)") from None
    except OSError as e:
        raise DataError(f"shard {shard.url}: cannot read: {e}") from None


def read_shard(shard: ShardInfo, wanted: set[int], exts: tuple[str, ...], cache=None) -> dict[int, dict[str, bytes]]:
    """Encoded members ``exts`` of the ``wanted`` rows of one shard, read in one sequential pass
    (through ``cache`` when given).

    Data of other members is skipped (seek), never read nor decoded.
    """
    out: dict[int, dict[str, bytes]] = {}
    if not wanted:
        return out
    # a cached copy was checked as it was written; a store's bytes are hashed as they stream past
    check = cache is None and shard.verify and shard.sha256 is not None and \
        (shard.url, shard.sha256) not in VERIFIED_SHARDS
    with shard_errors(shard), open_shard(shard, cache) as raw:
        f = fmt.HashingReader(raw, sha256=shard.sha256, size=shard.bytes, where=f"shard {shard.url}") \
            if check else raw
        try:
            _read_members(f, shard, wanted, exts, out)
        except DataError:
            if check:
                f.finish()  # a changed shard is named as such, rather than by its first odd member
            raise
        if check:
            f.finish()  # the rest of the file, then size and sha256 against the manifest
            VERIFIED_SHARDS.add((shard.url, shard.sha256))
    missing = [r for r in sorted(wanted) if set(exts) - set(out.get(r, {}))]
    if missing:
        r = missing[0]
        lacks = sorted(set(exts) - set(out.get(r, {})))
        raise DataError(f"shard {shard.url}: key {fmt.sample_key(r)} lacks member(s) {lacks} "
                        f"({len(missing)} sample(s) incomplete)")
    return out


def _read_members(f, shard: ShardInfo, wanted: set[int], exts: tuple[str, ...],
                  out: dict[int, dict[str, bytes]]) -> None:
    """The wanted members of the tar stream ``f`` into ``out``, in one sequential pass."""
    name = "?"
    try:
        with tarfile.open(fileobj=f, mode="r:") as tf:
            while True:
                ti = tf.next()
                if ti is None:
                    break
                name = ti.name
                row, ext = check_member(ti, shard)
                if row not in wanted or ext not in exts:
                    continue
                fh = tf.extractfile(ti)
                data = fh.read()
                if len(data) != ti.size:
                    raise DataError(f"shard {shard.url}: member {name!r} is truncated")
                out.setdefault(row, {})[ext] = data
    except fmt.FormatError as e:
        raise DataError(str(e)) from None
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"shard {shard.url}: cannot read after member {name!r}: {e}") from None


def decode_image(data: bytes, mode: str, where: str, expect: str = "PNG", side: int | None = None) -> np.ndarray:
    """Pixels of an encoded member whose container must be ``expect`` (a PIL format name) and, with
    ``side``, whose header declares side x side pixels (checked before decoding)."""
    try:
        with fmt.open_image_checked(data, where, side=side) as im:
            if im.format != expect:
                raise DataError(f"{where} is {im.format}, expected {expect}")
            return np.asarray(im.convert(mode))
    except DataError:
        raise
    except fmt.FormatError as e:
        raise DataError(str(e)) from None
    except Exception as e:  # PIL raises many types for corrupt files
        raise DataError(f"{where}: cannot decode {expect}: {e}") from None


def flip_bit(seed: int, epoch: int, row: int) -> bool:
    """Whether sample ``row`` is flipped horizontally in ``epoch`` (a pure function)."""
    return bool(hashlib.blake2b(f"{seed}:{epoch}:{row}".encode(), digest_size=1).digest()[0] & 1)


def decode_sample(members: dict[str, bytes], mask_member: str | tuple[str, ...], where: str,
                  image_member: str = fmt.EXT_IMAGE, side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 [3,H,W] in [-1,1], mask float32 [1,H,W] in {0,1}) from encoded members.

    ``image_member``: the manifest's image extension (png, webp or jpg; ``fmt.image_member``).
    ``mask_member``: one mask member, or several whose foregrounds are intersected (``SampleIndex.mask_members``);
    a mask is foreground above 127, a teacher map (KEY.teacher.png) from ``fmt.TEACHER_FG_MIN`` (p >= 0.5).
    """
    img = decode_image(members[image_member], "RGB", f"{where}.{image_member}", fmt.IMAGE_FORMATS[image_member], side)
    fg = None
    for name in (mask_member,) if isinstance(mask_member, str) else mask_member:
        mask = decode_image(members[name], "L", f"{where}.{name}", "PNG", side)
        if img.shape[:2] != mask.shape:
            raise DataError(f"{where}: image {img.shape[:2]} and {name} {mask.shape} differ in size")
        this = mask >= fmt.TEACHER_FG_MIN if name == fmt.EXT_TEACHER else mask > 127
        fg = this if fg is None else fg & this
    image = pixels_to_input(img.transpose(2, 0, 1))
    return image, fg.astype(np.float32)[None]


class ShardReader:
    """Serves encoded samples of a fixed set of rows, reading each shard once, when first needed.

    The rows are kept as sorted arrays (16 bytes a row), a shard's wanted set is made when it is read."""

    def __init__(self, index: SampleIndex, rows_needed: np.ndarray, prefetch: int = 2):
        self.index = index
        self.exts = (index.image_member, *index.mask_members())
        self.prefetcher = None
        if index.cache is not None:  # the shards in the order they are needed, fetched ahead
            from trainers.data.cache import Prefetcher

            need = index.shards[np.searchsorted(index.rows, np.asarray(rows_needed, np.int64))]
            _, first = np.unique(need, return_index=True)
            order = [index.shard_info[int(s)] for s in need[np.sort(first)]]
            self.prefetcher = Prefetcher(index.cache, order, prefetch)
        self._rows = np.sort(np.asarray(rows_needed, np.int64))
        self._shards = index.shards[np.searchsorted(index.rows, self._rows)]  # rows sorted -> shards sorted
        self._read: set[int] = set()
        self._cache: dict[int, dict[str, bytes]] = {}
        self.shards_read: list[int] = []

    def shard_of(self, row: int) -> int:
        return int(self._shards[np.searchsorted(self._rows, row)])

    def take(self, row: int) -> dict[str, bytes]:
        if row not in self._cache:
            s = self.shard_of(row)
            if s in self._read:
                raise RuntimeError(f"row {row} of shard {s} requested twice in one epoch")
            self._read.add(s)
            lo, hi = np.searchsorted(self._shards, [s, s + 1])
            wanted = set(self._rows[lo:hi].tolist())
            if self.prefetcher is not None:
                self.prefetcher.reading(self.index.shard_info[s])
            self._cache.update(read_shard(self.index.shard_info[s], wanted, self.exts, self.index.cache))
            self.shards_read.append(s)
        return self._cache.pop(row)

    def close(self) -> None:
        """Stop the prefetch threads (a fetch in flight stops at its next chunk)."""
        if self.prefetcher is not None:
            self.prefetcher.close()


def make_batch(index: SampleIndex, reader: ShardReader, rows: np.ndarray, *, seed: int, epoch: int,
               flip: bool) -> dict:
    images, masks = [], []
    for r in rows.tolist():
        s = reader.shard_of(r)
        where = f"shard {index.shard_info[s].url}: key {fmt.sample_key(r)}"
        image, mask = decode_sample(reader.take(r), index.mask_members(), where, index.image_member,
                                    index.resolution)
        if flip and flip_bit(seed, epoch, r):
            image, mask = image[:, :, ::-1], mask[:, :, ::-1]
        images.append(image)
        masks.append(mask)
    try:
        image_b = np.stack(images)
        mask_b = np.stack(masks)
    except ValueError:
        shapes = sorted({im.shape for im in images})
        raise DataError(f"samples of one batch differ in size {shapes[:3]}; a dataset holds one resolution") \
            from None
    return {"image": torch.from_numpy(image_b), "mask": torch.from_numpy(mask_b),
            "row": torch.from_numpy(rows.astype(np.int64))}


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
        info = torch.utils.data.get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        st = self.state
        order = epoch_order(self.index, st.seed, st.epoch, self.shuffle_window)
        steps = rank_steps(order, st.consumed, world_size=self.world_size, rank=self.rank,
                           batch_size=self.batch_size)
        mine = list(range(wid, len(steps), nw))
        if not mine:
            return
        rows_needed = self.index.rows[np.concatenate([steps[j] for j in mine])]
        reader = ShardReader(self.index, rows_needed)
        try:
            for j in mine:
                batch = make_batch(self.index, reader, self.index.rows[steps[j]], seed=st.seed, epoch=st.epoch,
                                   flip=self.flip)
                batch["step"] = j
                batch["epoch"] = st.epoch
                yield batch
        finally:
            reader.close()


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
