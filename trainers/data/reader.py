"""The shard reader (the loader worker's side): reads the shards its rows live in, each at most once per
epoch, sequentially, through fsspec (local folders or any URL) or the node's shard cache.

Shards are read through the contract's reading room (`format.tar`): tar headers are checked (regular files
only, flat names, no ``..``, no absolute paths, keys that are rows of that shard, exactly the members the
manifest names, once each); members of rows the worker does not need (rejected by the view, held out, or owned by
another rank or worker) and members it does not use (``.json``, ``.latent.npy``) are skipped without
reading their data, so nothing rejected is ever decoded. Kept samples wait, still encoded, until their
step; decoding happens when a batch is assembled (`decode_sample`). Images become float32 CHW in
[-1, 1], masks float32 ``[1, H, W]`` in {0, 1}. Errors name the shard URL and the member. A shard's
sha256 is checked as it streams past, once per process (`VERIFIED_SHARDS`).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import numpy as np

from factory import format as fmt
from trainers.data.index import SampleIndex, ShardInfo
from trainers.errors import DataError
from trainers.model.unet import pixels_to_input

# Shards whose sha256 this process has checked (url, sha256): each is hashed once, on its first read.
VERIFIED_SHARDS: set[tuple[str, str]] = set()


def open_shard(shard: ShardInfo, cache=None):
    """The shard's bytes as a binary file: its copy in ``cache`` (a cache.ShardCache) when given, else the store's."""
    return cache.open(shard) if cache is not None else fmt.open_shard(shard.url)


def check_whole_shard(shard: ShardInfo) -> None:
    """For readers of byte ranges (random access): hash the whole of ``shard`` once per process, before its
    first sample is used; DataError naming the shard when it differs from the manifest."""
    if not shard.verify or shard.sha256 is None or (shard.url, shard.sha256) in VERIFIED_SHARDS:
        return
    with shard_errors(shard):
        fmt.hash_shard(shard)
    VERIFIED_SHARDS.add((shard.url, shard.sha256))


@contextlib.contextmanager
def shard_errors(shard: ShardInfo):
    """Errors met reading ``shard`` as one DataError line naming it (the reading room's translation)."""
    try:
        with fmt.read_errors(shard.url):
            yield
    except DataError:
        raise
    except fmt.FormatError as e:
        raise DataError(str(e)) from None


def read_shard(shard: ShardInfo, wanted: set[int], exts: tuple[str, ...], cache=None) -> dict[int, dict[str, bytes]]:
    """Encoded members ``exts`` of the ``wanted`` rows of one shard, read in one sequential pass through the
    reading room (`format.stream_members`; through ``cache`` when given).

    Data of other members is skipped (seek), never read nor decoded; every header is checked, and a member
    the manifest does not name, or one twice, is refused.
    """
    if not wanted:
        return {}
    # a cached copy was checked as it was written; a store's bytes are hashed as they stream past
    check = cache is None and shard.verify and shard.sha256 is not None and \
        (shard.url, shard.sha256) not in VERIFIED_SHARDS
    with shard_errors(shard), (cache.open(shard) if cache is not None else contextlib.nullcontext()) as f:
        out = fmt.stream_members(shard, wanted=wanted, exts=exts, f=f, check=check)
    if check:
        VERIFIED_SHARDS.add((shard.url, shard.sha256))
    missing = [r for r in sorted(wanted) if set(exts) - set(out.get(r, {}))]
    if missing:
        r = missing[0]
        lacks = sorted(set(exts) - set(out.get(r, {})))
        raise DataError(f"shard {shard.url}: key {fmt.sample_key(r)} lacks member(s) {lacks} "
                        f"({len(missing)} sample(s) incomplete)")
    return out


def decode_image(data: bytes, mode: str, where: str, *, expect: str = "PNG", side: int | None = None) -> np.ndarray:
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


def decode_sample(members: dict[str, bytes], mask_member: str | tuple[str, ...], where: str, *,
                  image_member: str = fmt.EXT_IMAGE, side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 [3,H,W] in [-1,1], mask float32 [1,H,W] in {0,1}) from encoded members.

    ``image_member``: the manifest's image extension (png, webp or jpg; ``fmt.image_member``).
    ``mask_member``: one mask member, or several whose foregrounds are intersected (``SampleIndex.mask_members``);
    a mask is foreground above 127, a teacher map (KEY.teacher.png) from ``fmt.TEACHER_FG_MIN`` (p >= 0.5).
    """
    img = decode_image(members[image_member], "RGB", f"{where}.{image_member}", expect=fmt.IMAGE_FORMATS[image_member],
                       side=side)
    fg = None
    for name in (mask_member,) if isinstance(mask_member, str) else mask_member:
        mask = decode_image(members[name], "L", f"{where}.{name}", expect="PNG", side=side)
        if img.shape[:2] != mask.shape:
            raise DataError(f"{where}: image {img.shape[:2]} and {name} {mask.shape} differ in size")
        this = mask >= fmt.TEACHER_FG_MIN if name == fmt.EXT_TEACHER else mask > 127
        fg = this if fg is None else fg & this
    image = pixels_to_input(img.transpose(2, 0, 1))
    return image, fg.astype(np.float32)[None]


class ShardReader:
    """Serves encoded samples of a fixed set of rows, reading each shard once, when first needed.

    The rows come as one array (``rows_needed``: kept sorted, 8 bytes a row) or, for an epoch of any size, as
    ``wanted(shard id)`` (the rows of that shard, asked for when it is read) with ``order`` (the shard ids in
    the order they will be needed: what a cache prefetches; an iterable consumed as it goes)."""

    def __init__(self, index: SampleIndex, rows_needed: np.ndarray | None = None, prefetch: int = 2, *,
                 wanted: Callable[[int], np.ndarray] | None = None, order: Iterable[int] | None = None):
        self.index = index
        self.exts = (index.image_member, *index.mask_members())
        if wanted is None:
            rows = np.sort(np.asarray(rows_needed, np.int64))
            shards = index.shard_of_rows(rows)  # rows sorted -> shards sorted

            def wanted(s: int) -> np.ndarray:
                lo, hi = np.searchsorted(shards, [s, s + 1])
                return rows[lo:hi]

            if order is None:
                need = index.shard_of_rows(np.asarray(rows_needed, np.int64))
                _, first = np.unique(need, return_index=True)
                order = need[np.sort(first)].tolist()
        self.wanted = wanted
        self.prefetcher = None
        if index.cache is not None and order is not None:  # the shards in the order they are needed, fetched ahead
            from trainers.data.cache import Prefetcher

            self.prefetcher = Prefetcher(index.cache, (index.shard_info[int(s)] for s in order), prefetch)
        self._read: set[int] = set()
        self._cache: dict[int, dict[str, bytes]] = {}
        self.shards_read: list[int] = []

    def shard_of(self, row: int) -> int:
        return int(self.index.shard_of_rows([row])[0])

    def take(self, row: int) -> dict[str, bytes]:
        if row not in self._cache:
            s = self.shard_of(row)
            if s in self._read:
                raise RuntimeError(f"row {row} of shard {s} requested twice in one epoch")
            self._read.add(s)
            wanted = set(self.wanted(s).tolist())
            if self.prefetcher is not None:
                self.prefetcher.reading(self.index.shard_info[s])
            self._cache.update(read_shard(self.index.shard_info[s], wanted, self.exts, self.index.cache))
            self.shards_read.append(s)
        return self._cache.pop(row)

    def close(self) -> None:
        """Stop the prefetch threads (a fetch in flight stops at its next chunk)."""
        if self.prefetcher is not None:
            self.prefetcher.close()
