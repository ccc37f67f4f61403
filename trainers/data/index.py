"""The sample index (`SampleIndex`): the accepted samples of a dataset or view for a split, known from the
manifest and the view alone (no tar is opened): global rows, their shard, the shard URLs; the key-hash
hold-out (`trainers.data.holdout`) splits it into ``train`` and ``val``."""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from factory import format as fmt
from trainers.data.holdout import holdout_buckets
from trainers.errors import DataError

MASK_SOURCES = ("mask", "teacher", "intersection")  # --mask-source: the GAN mask, the teacher's, both


@dataclass(frozen=True)
class ShardInfo(fmt.ShardRef):
    """A shard as the reading room reads it (id, URL, rows; the manifest's sha256 and size: the shard cache's
    key and its check; the members every sample holds), and whether its sha256 is checked."""

    verify: bool = True  # sha256 checked while the shard is streamed (False: --no-verify)


class ShardInfos(Mapping):
    """Shard id -> `ShardInfo` of a manifest's shards, each made when first asked for (a 100,000-shard
    manifest makes the few a first batch reads)."""

    def __init__(self, resolved: fmt.Resolved, *, verify: bool):
        self.root, self.entries, self.verify = resolved.root, resolved.manifest["shards"], verify
        self.exts = fmt.member_exts(resolved.manifest)
        self.made: dict[int, ShardInfo] = {}

    def __getitem__(self, sid: int) -> ShardInfo:
        sid = int(sid)
        if sid not in self.made:
            if not 0 <= sid < len(self.entries):  # shard ids are 0..K-1 in order (check_manifest)
                raise KeyError(sid)
            s = self.entries[sid]
            self.made[sid] = ShardInfo(sid, fmt.join(self.root, s["path"]), s["first_row"], s["samples"], s["sha256"],
                                       s["bytes"], self.exts, verify=self.verify)
        return self.made[sid]

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self.entries)))

    def __len__(self) -> int:
        return len(self.entries)


@dataclass(frozen=True)
class SampleIndex:
    """The samples a split may use, shard by shard: the shards holding any (sorted ids), how many each
    holds, and which rows (one flag per dataset row, or None: every row of those shards). Position ``p``
    is the ``p``-th sample in row order; `rows` and `shards` give every position's row and shard (made
    on first use), `rows_at` those of a few."""

    shard_ids: np.ndarray  # int64 [S], sorted: the shards with samples in the split
    counts: np.ndarray  # int64 [S] > 0: samples of each
    firsts: np.ndarray  # int64 [S]: each shard's first row in the dataset
    sizes: np.ndarray  # int64 [S]: each shard's rows in the dataset
    member: np.ndarray | None  # bool per dataset row (in the split), or None: all rows of the shards
    shard_info: Mapping  # shard id -> ShardInfo
    dataset_id: str
    view_id: str | None
    split: str
    holdout_permille: int
    mask_member: str
    resolution: int | None
    image_member: str = fmt.EXT_IMAGE
    mask_source: str = "mask"
    cache: Any = field(default=None, compare=False)  # a cache.ShardCache for remote shards (cache.open_cache)
    source: Any = field(default=None, compare=False, repr=False)  # (url, remote shards allowed, fmt.Resolved)

    def mask_members(self) -> tuple[str, ...]:
        """The members the training mask is made of (``mask_source``)."""
        return {"mask": (self.mask_member,), "teacher": (fmt.EXT_TEACHER,),
                "intersection": (self.mask_member, fmt.EXT_TEACHER)}[self.mask_source]

    @cached_property
    def starts(self) -> np.ndarray:
        """int64 [S + 1]: the first position of each shard (the last: the number of samples)."""
        return np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def shard_rows(self, i: int) -> np.ndarray:
        """Rows (int64, sorted) of the ``i``-th shard of the index."""
        f, n = int(self.firsts[i]), int(self.sizes[i])
        if self.member is None:
            return np.arange(f, f + n, dtype=np.int64)
        return f + np.flatnonzero(self.member[f:f + n])

    def rows_at(self, positions) -> np.ndarray:
        """The rows (int64) at ``positions``."""
        pos = np.asarray(positions, np.int64)
        i = np.searchsorted(self.starts, pos, side="right") - 1
        within = pos - self.starts[i]
        if self.member is None:
            return self.firsts[i] + within
        out = np.empty(pos.shape[0], np.int64)
        for k in np.unique(i).tolist():
            sel = i == k
            out[sel] = self.shard_rows(k)[within[sel]]
        return out

    def shards_at(self, positions) -> np.ndarray:
        """The shard ids (int64) of the samples at ``positions``."""
        return self.shard_ids[np.searchsorted(self.starts, np.asarray(positions, np.int64), side="right") - 1]

    def shard_of_rows(self, rows) -> np.ndarray:
        """The shard ids (int64) of the given rows of the index."""
        return self.shard_ids[np.searchsorted(self.firsts, np.asarray(rows, np.int64), side="right") - 1]

    @cached_property
    def rows(self) -> np.ndarray:
        """Every sample's row, sorted (int64, 8 bytes a sample: for small indexes and audits)."""
        if self.member is None:
            return np.concatenate([np.arange(f, f + n, dtype=np.int64) for f, n in
                                   zip(self.firsts.tolist(), self.sizes.tolist())] or [np.zeros(0, np.int64)])
        return np.flatnonzero(self.member).astype(np.int64)

    @cached_property
    def shards(self) -> np.ndarray:
        """Every sample's shard id (int64, in position order)."""
        return np.repeat(self.shard_ids, self.counts)


def _shard_columns(manifest: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, first rows, samples) of the manifest's shards, as int64 columns."""
    ids, firsts, sizes = fmt.columns_of(manifest["shards"], "shard", "first_row", "samples")  # a shard table's own
    return ids, firsts, sizes


def _count_flags(flags: np.ndarray, firsts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """How many of ``flags[f:f + n]`` are set, for each (f, n): popcounts of the packed flags, cumulated per
    byte, plus the bits of each bound's partial byte."""
    cum = np.concatenate([[0], np.cumsum(np.bitwise_count(np.packbits(flags, bitorder="little")), dtype=np.int64)])

    def before(r: np.ndarray) -> np.ndarray:
        out = cum[r // 8].copy()
        for j in range(7):
            sel = r % 8 > j
            out[sel] += flags[(r - r % 8 + j)[sel]]
        return out

    return before(firsts + sizes) - before(firsts)


def _view_flags(resolved: fmt.Resolved, ids: np.ndarray, firsts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """One flag per dataset row: accepted by the view (its bounds checked against each shard's rows)."""
    manifest, view_id = resolved.manifest, resolved.view["view_id"]
    known = set(ids.tolist())
    unknown = sorted(int(k) for k in resolved.accepted if int(k) not in known)
    if unknown:
        raise DataError(f"view {view_id} accepts rows of shard(s) {unknown[:5]} that the "
                        f"parent dataset {manifest['dataset_id']} does not have")
    listed = np.array([k for k in ids.tolist() if k in resolved.accepted], np.int64)
    flags = np.zeros(int(manifest["samples"]), bool)
    if resolved.accepted.version == 1:
        for k in listed.tolist():
            rows = np.asarray(resolved.accepted[k], np.int64)
            bad = rows[(rows < firsts[k]) | (rows >= firsts[k] + counts[k])]
            if bad.size:
                raise DataError(f"view {view_id}: row {int(bad[0])} is listed under shard {k}, which holds rows "
                                f"{firsts[k]}..{firsts[k] + counts[k] - 1}")
            flags[rows] = True
        return flags
    # every shard's bitmap unpacked at once; its bounds checked per shard (a bitmap spans first..first+n-1)
    objs = [resolved.accepted.raw[str(k)] for k in listed.tolist()]
    if not objs:
        return flags
    try:
        unpacked = fmt.unpack_many(objs, f"view {view_id}")
    except fmt.FormatError as e:
        raise DataError(str(e)) from None
    f, n = np.asarray(unpacked[0], np.int64), unpacked[1]
    lo, hi = firsts[listed], firsts[listed] + counts[listed]
    bad = np.flatnonzero((n > 0) & ((f < lo) | (f + n > hi)))
    if bad.size:
        b = int(bad[0])
        row = int(f[b]) if f[b] < lo[b] else int(f[b] + n[b] - 1)
        raise DataError(f"view {view_id}: row {row} is listed under shard {int(listed[b])}, "
                        f"which holds rows {int(lo[b])}..{int(hi[b]) - 1}")
    fmt.mark_many(objs, flags, unpacked)
    return flags


def _holdout(resolved: fmt.Resolved, flags: np.ndarray | None, permille: int, split: str) -> np.ndarray:
    """``flags`` (None: every row) less the rows on the other side of the key-hash hold-out."""
    m = resolved.manifest
    n = int(m["samples"])
    if flags is None:
        flags = np.ones(n, bool)
    keep_val = split == "val"
    if not fmt.has_parts(m):
        rows = np.flatnonzero(flags)
        flags[rows[(holdout_buckets(rows) < permille) != keep_val]] = False
        return flags
    parts = index_parts(resolved)
    ends = np.cumsum([p["rows"] for p in parts]).tolist()
    if (ends[-1] if ends else 0) != n:
        raise DataError(f"dataset {m['dataset_id']}: its index holds {ends[-1] if ends else 0} key buckets for "
                        f"{n} samples")

    def one(k: int) -> None:  # rows are 0..N-1 (check_manifest), the parts in row order
        part, lo = parts[k], (ends[k - 1] if k else 0)
        pf = fmt.open_part(resolved.root, part)
        try:
            t = fmt.read_row_groups(pf, list(range(len(part["row_groups"]))), [fmt.KEY_BUCKET],
                                    fmt.join(resolved.root, part["path"]))
        finally:
            pf.close()
        if t.num_rows != part["rows"]:
            raise fmt.FormatError(f"index part {fmt.join(resolved.root, part['path'])} has {t.num_rows} rows, the "
                                  f"manifest says {part['rows']}")
        held = column_array(t, fmt.KEY_BUCKET) < permille
        flags[lo:ends[k]] &= held if keep_val else ~held

    try:
        with ThreadPoolExecutor(max(1, min(os.cpu_count() or 1, len(parts)))) as ex:
            list(ex.map(one, range(len(parts))))
    except fmt.FormatError as e:
        raise DataError(str(e)) from None
    return flags


def column_array(table, name: str) -> np.ndarray:
    """A numeric column of an Arrow table as numpy: its buffers viewed when it has no nulls (no copy, and
    no pandas import, which ``to_numpy`` makes for a table carrying pandas metadata), else ``to_numpy``."""
    col = table.column(name)
    try:
        dtype = np.dtype(col.type.to_pandas_dtype())
    except (NotImplementedError, TypeError):
        dtype = None
    if dtype is None or dtype.kind not in "iuf" or col.null_count:
        return col.to_numpy()
    pieces = [np.frombuffer(c.buffers()[1], dtype, count=len(c), offset=c.offset * dtype.itemsize)
              for c in col.chunks if len(c)]
    if not pieces:
        return np.zeros(0, dtype)
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


_CHECKED: set[str] = set()  # sha256 of manifest bytes whose fields were found to agree (`fmt.check_manifest`)
_PARTS: dict[str, list[dict]] = {}  # sha256 of manifest bytes -> its index parts, checked once per process


def index_parts(resolved: fmt.Resolved) -> list[dict]:
    """The compacted index's parts of an opened dataset, checked (`fmt.index_parts`) once per manifest."""
    m, key = resolved.manifest, resolved.manifest_sha256
    if key and key in _PARTS:
        return _PARTS[key]
    try:
        parts = fmt.index_parts(m, f"dataset {m['dataset_id']}")
    except fmt.FormatError as e:
        raise DataError(str(e)) from None
    if key:
        _PARTS[key] = parts
    return parts


def build_index(resolved: fmt.Resolved, *, split: str = "train", holdout_permille: int = 0,
                mask: str = "clean", mask_source: str = "mask", verify: bool = True,
                source: tuple | None = None) -> SampleIndex:
    """Accepted samples of a dataset/view for ``split`` in {"train", "val", "all"}.

    ``train`` excludes the hold-out (keys whose bucket < holdout_permille),
    ``val`` is the hold-out only, ``all`` ignores it. ``mask_source``: one of MASK_SOURCES.
    A manifest whose fields disagree (as `factory verify` reports) is refused before anything is
    allocated; with ``verify`` each shard's sha256 is checked as it is read (once per process).
    ``source``: (url, remote shards allowed) it was opened from, kept with ``resolved`` (`opened`). No array of rows is made: one flag per dataset row and a few numbers per shard.
    """
    if split not in ("train", "val", "all"):
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
    if not isinstance(holdout_permille, int) or not 0 <= holdout_permille < 1000:
        raise DataError(f"holdout_permille must be an integer in 0..999, got {holdout_permille!r}")
    if mask not in ("clean", "raw"):
        raise DataError(f"mask must be 'clean' or 'raw', got {mask!r}")
    manifest = resolved.manifest
    if not resolved.manifest_sha256 or resolved.manifest_sha256 not in _CHECKED:
        try:
            fmt.check_manifest(manifest, f"dataset {manifest['dataset_id']}")
        except fmt.FormatError as e:
            raise DataError(str(e)) from None
        if resolved.manifest_sha256:
            _CHECKED.add(resolved.manifest_sha256)
    check_mask_source(manifest, mask_source)
    if mask == "raw" and not manifest.get("spec", {}).get("keep_raw_mask", False):
        raise DataError(f"dataset {manifest['dataset_id']} has no raw masks (it was generated without "
                        f"--keep-raw-mask); train with --mask clean")
    ids, firsts, sizes = _shard_columns(manifest)
    flags = None if resolved.accepted is None else _view_flags(resolved, ids, firsts, sizes)
    if split == "val" and not holdout_permille:
        flags = np.zeros(int(manifest["samples"]), bool)
    elif holdout_permille and split != "all":
        flags = _holdout(resolved, flags, holdout_permille, split)
    counts = sizes if flags is None else _count_flags(flags, firsts, sizes)
    has = counts > 0
    return SampleIndex(
        shard_ids=ids[has], counts=counts[has], firsts=firsts[has], sizes=sizes[has], member=flags,
        shard_info=ShardInfos(resolved, verify=verify), dataset_id=manifest["dataset_id"],
        view_id=resolved.view["view_id"] if resolved.view is not None else None, split=split,
        holdout_permille=holdout_permille,
        mask_member=fmt.EXT_MASK if mask == "clean" else fmt.EXT_RAW_MASK,
        resolution=manifest.get("resolution"),
        image_member=fmt.image_member(manifest), mask_source=mask_source, source=source,
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
                       verify=verify, source=(url, allow_remote_shards, resolved))


def opened(url: str, allow_remote_shards: bool, index: SampleIndex | None = None) -> fmt.Resolved:
    """The dataset or view ``url``, opened: the one ``index`` was built from when it was opened from the same
    URL (a 100M-row manifest is parsed once), else opened now."""
    if index is not None and index.source is not None and index.source[:2] == (url, allow_remote_shards):
        return index.source[2]
    try:
        return fmt.open_dataset(url, allow_remote_shards=allow_remote_shards)
    except fmt.FormatError as e:
        raise DataError(str(e)) from None


def other_split(index: SampleIndex, split: str) -> SampleIndex:
    """The index of ``split`` of the dataset or view ``index`` was opened from (same hold-out, masks, checks)."""
    return build_index(index.source[2], split=split, holdout_permille=index.holdout_permille,
                       mask="clean" if index.mask_member == fmt.EXT_MASK else "raw", mask_source=index.mask_source,
                       verify=getattr(index.shard_info, "verify", True), source=index.source)
