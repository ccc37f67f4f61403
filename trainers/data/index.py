"""The sample index (`SampleIndex`): the accepted samples of a dataset or view for a split, known from the
manifest and the view alone (no tar is opened): global rows, their shard, the shard URLs; the key-hash
hold-out (`trainers.data.holdout`) splits it into ``train`` and ``val``."""
from __future__ import annotations

from dataclasses import dataclass, field
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
    exts = fmt.member_exts(manifest)
    info = {}
    for s in manifest["shards"]:
        sid = s["shard"]
        info[sid] = ShardInfo(sid, urls[sid], s["first_row"], s["samples"], s["sha256"], s["bytes"], exts, verify=verify)
    sids = np.array([s["shard"] for s in manifest["shards"]], np.int64)
    firsts = np.array([s["first_row"] for s in manifest["shards"]], np.int64)
    counts = np.array([s["samples"] for s in manifest["shards"]], np.int64)
    if resolved.accepted is None:
        rows = np.concatenate([np.arange(f, f + n, dtype=np.int64) for f, n in zip(firsts.tolist(), counts.tolist())]) \
            if len(sids) else np.zeros(0, np.int64)
        shards = np.repeat(sids, counts)
    else:
        unknown = sorted(set(resolved.accepted) - set(info))
        if unknown:
            raise DataError(f"view {resolved.view['view_id']} accepts rows of shard(s) {unknown[:5]} that the "
                            f"parent dataset {manifest['dataset_id']} does not have")
        listed = [k for k in sids.tolist() if k in resolved.accepted]
        if resolved.accepted.version == 1:
            parts = [np.asarray(resolved.accepted[k], np.int64) for k in listed]
            rows = np.concatenate(parts) if parts else np.zeros(0, np.int64)
            shards = np.repeat(np.array(listed, np.int64), [len(p) for p in parts])
        else:  # every shard's bitmap decoded at once; its bounds checked per shard (a bitmap spans first..first+n-1)
            objs = [resolved.accepted.raw[str(k)] for k in listed]
            rows, pos = fmt.decode_many(objs, f"view {resolved.view['view_id']}")
            shards = np.array(listed, np.int64)[pos] if len(listed) else np.zeros(0, np.int64)
            for k, o in zip(listed, objs):
                s = info[k]
                if o["n"] and (o["first"] < s.first_row or o["first"] + o["n"] > s.first_row + s.samples):
                    bad = o["first"] if o["first"] < s.first_row else o["first"] + o["n"] - 1
                    raise DataError(f"view {resolved.view['view_id']}: row {bad} is listed under shard {k}, "
                                    f"which holds rows {s.first_row}..{s.first_row + s.samples - 1}")
        if resolved.accepted.version == 1:
            where = np.empty(len(sids), np.int64)
            where[sids] = np.arange(len(sids))  # shard ids are 0..K-1 (check_manifest)
            where = where[shards]
            bad = np.flatnonzero((rows < firsts[where]) | (rows >= firsts[where] + counts[where]))
            if bad.size:
                i = int(bad[0])
                s = info[int(shards[i])]
                raise DataError(f"view {resolved.view['view_id']}: row {int(rows[i])} is listed under shard "
                                f"{s.shard}, which holds rows {s.first_row}..{s.first_row + s.samples - 1}")
    if rows.size > 1 and not (rows[1:] > rows[:-1]).all():
        order = np.argsort(rows, kind="stable")
        rows, shards = rows[order], shards[order]
    if holdout_permille and split != "all":
        held = key_buckets(resolved, rows) < holdout_permille
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


def key_buckets(resolved: fmt.Resolved, rows: np.ndarray) -> np.ndarray:
    """The hold-out bucket of every row: recorded in a compacted index (``key_bucket``, one column read, no
    digest per row), else one sha256 per row (`holdout_buckets`)."""
    m = resolved.manifest
    if not fmt.has_parts(m):
        return holdout_buckets(rows)
    try:
        recorded = fmt.read_index_column(resolved.root, m, fmt.KEY_BUCKET)
    except fmt.FormatError as e:
        raise DataError(str(e)) from None
    if recorded.shape[0] != m["samples"]:  # rows are 0..N-1 (check_manifest), the parts in row order
        raise DataError(f"dataset {m['dataset_id']}: its index holds {recorded.shape[0]} key buckets for "
                        f"{m['samples']} samples")
    return recorded[rows]


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
