"""`factory verify`: recompute every shard's sha256/bytes/samples and cross-check tar, index and latents.

Per shard (in a thread pool; I/O-bound on object stores): the tar is read
whole through the reading room's hashing reader (`format.read_whole`), then parsed
(`format.shard_samples`: no links, no absolute or '..' names, regular members only, each
member one the manifest lists, once). Its keys must be exactly the rows
[first_row, first_row + samples), each with every member the manifest lists; the index fragment must hash to its recorded sha256 and hold
the same keys/rows/shard; the latent rows of latents.zarr must equal the
`KEY.latent.npy` members bit for bit (and hash to the recorded latents_sha256).
Dataset level: shard ids 0..K-1 complete, first rows contiguous, dataset id and
latents hash recomputed from the shard records. Views: view id recomputed,
accepted rows inside their shards. Every problem is collected (one line per
bad shard); nothing stops at the first.
"""
from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from factory import format as fmt
from factory.dataset import parts_check
from factory.format import index as fidx


@dataclass
class VerifyReport:
    url: str
    dataset_id: str
    view_id: str | None
    shards: int
    samples: int
    bytes: int
    problems: list[str] = field(default_factory=list)  # one line each, naming the shard or file
    bad_shards: list[int] = field(default_factory=list)
    index_only: bool = False  # only the manifest and the index fragments were checked

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        what = f"view {self.view_id} of {self.dataset_id}" if self.view_id else self.dataset_id
        if self.ok:
            checked = ("index fragments only: sha256, keys, rows match; no tar read" if self.index_only
                       else "sha256, members, index, latents all match")
            return (f"OK {self.url}: {what}, {self.samples:,} samples in {self.shards} shards, "
                    f"{self.bytes:,} bytes ({checked})")
        return (f"FAILED {self.url}: {len(self.bad_shards)} of {self.shards} shards bad, "
                f"{len(self.problems)} problem(s) in {what}")


def _open_latents(root: str):
    from factory.dataset.shards import open_latents

    return open_latents(root, "r")


def _read_or_report(url: str, what: str, problems: list[str]) -> bytes | None:
    """The bytes at `url`, or None with the problem appended (`what` names a missing file)."""
    try:
        return fmt.read_bytes(url)
    except FileNotFoundError:
        problems.append(f"{what} missing ({url})")
    except OSError as e:
        problems.append(f"cannot read {url}: {e}")
    return None


def _read_shard_or_report(root: str, entry: dict, problems: list[str]) -> tuple[bytes, str] | None:
    """(bytes, sha256) of a shard read whole through the hashing reader (not refused when they differ from
    the manifest: verify reports it), or None with the problem appended."""
    ref = fmt.ShardRef(entry["shard"], fmt.join(root, entry["path"]), entry["first_row"], entry["samples"])
    try:
        return fmt.read_whole(ref, check=False)
    except fmt.FormatError as e:
        problems.append(str(e))
        return None


def _check_image_sizes(samples: dict[str, dict[str, bytes]], members: dict, resolution: int | None,
                       problems: list[str]) -> None:
    """Every image and mask member's header against the manifest's resolution (no pixel decoded)."""
    exts = [e for k, e in members.items() if e.endswith(tuple(fmt.IMAGE_FORMATS)) or k in ("image", "mask")]
    for kk, parts in sorted(samples.items()):
        for ext in exts:
            if ext not in parts:
                continue
            try:
                fmt.open_image_checked(parts[ext], f"{kk}.{ext}", side=resolution).close()
            except fmt.FormatError as e:
                problems.append(str(e))
                return


def _check_tar(data: bytes, digest: str, entry: dict, *, members: dict, problems: list[str],
               resolution: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, dict[str, bytes]]]:
    """Problems of a shard's tar bytes and sha256 (appended to `problems`); returns its latents (key -> array)
    and its samples (key -> ext -> bytes)."""
    n, first = entry["samples"], entry["first_row"]
    expected_keys = [fmt.sample_key(r) for r in range(first, first + n)]
    if len(data) != entry["bytes"]:
        problems.append(f"{len(data)} bytes, manifest says {entry['bytes']}")
    if digest != entry["sha256"]:
        problems.append("sha256 differs from the manifest")
    try:  # safe members, each named by the manifest, once (an extra KEY.sh or a second KEY.png is named)
        samples = fmt.shard_samples(data, fmt.ShardRef(entry["shard"], entry["path"], first, n,
                                                       exts=frozenset(members.values())))
    except fmt.FormatError as e:
        problems.append(str(e).replace(f"shard {entry['path']}: ", ""))
        return {}, {}
    if len(samples) != n:
        problems.append(f"{len(samples)} samples in the tar, manifest says {n}")
    keys = set(samples)
    if keys != set(expected_keys):
        extra = sorted(keys - set(expected_keys))
        missing = sorted(set(expected_keys) - keys)
        problems.append(
            "tar keys differ from rows "
            f"{first}..{first + n - 1}" + (f"; unexpected {extra[:3]}" if extra else "")
            + (f"; missing {missing[:3]}" if missing else "")
        )
    need = set(members.values())
    incomplete = [kk for kk, parts in sorted(samples.items()) if need - set(parts)]
    if incomplete:
        kk = incomplete[0]
        problems.append(f"{len(incomplete)} sample(s) lack members, e.g. {kk} lacks "
                        f"{sorted(need - set(samples[kk]))}")
    _check_image_sizes(samples, members, resolution, problems)
    lat_ext = members.get("latent", fmt.EXT_LATENT)
    latents_tar: dict[str, np.ndarray] = {}
    for kk, parts in samples.items():
        if lat_ext in parts:
            try:
                latents_tar[kk] = np.load(io.BytesIO(parts[lat_ext]), allow_pickle=False)
            except (ValueError, OSError):
                problems.append(f"{kk}.{lat_ext} is not a readable .npy")
                break
    return latents_tar, samples


def _check_index(idata: bytes, entry: dict, problems: list[str], tar: bytes | None = None) -> None:
    """Problems of a shard's index fragment bytes (appended to `problems`); with the shard's `tar`, its
    samples' byte ranges (tar_offset, tar_size) are checked against the tar's records too."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if fmt.sha256_bytes(idata) != entry["index_sha256"]:
        problems.append(f"index fragment {entry['index']} sha256 differs from the manifest")
    try:
        # ParquetFile.read: ~4x less CPU per small file than pq.read_table (no dataset layer, no thread pool)
        t = pq.ParquetFile(pa.BufferReader(idata)).read(
            columns=["key", "shard", "row", *(fmt.OFFSET_COLUMNS if tar else ())], use_threads=False)
    except Exception as e:  # noqa: BLE001 - any unreadable fragment is reported, not raised
        problems.append(f"index fragment {entry['index']} unreadable: {e}")
        return
    check_index_table(t, entry, problems, tar)


def check_index_table(t, entry: dict, problems: list[str], tar: bytes | None = None) -> None:
    """Problems of a shard's index rows (a fragment's, or its slice of a part): count, keys, rows, shard ids,
    and with the shard's `tar`, the byte ranges."""
    k, n, first = entry["shard"], entry["samples"], entry["first_row"]
    if t.num_rows != n:
        problems.append(f"index has {t.num_rows} rows, manifest says {n}")
        return
    if not _keys_are_rows(t.column("key"), first, n):
        problems.append(f"index keys differ from rows {first}..{first + n - 1}")
    if not np.array_equal(t.column("row").to_numpy(), np.arange(first, first + n)):
        problems.append("index 'row' column differs from the shard's rows")
    if not (t.column("shard").to_numpy() == k).all():
        problems.append(f"index 'shard' column is not {k} everywhere")
    if tar is not None:
        _check_offsets(t, tar, entry, problems)


def _keys_are_rows(keys, first: int, n: int) -> bool:
    """Whether an index's key column is exactly sample_key(first), ..., sample_key(first + n - 1) (vectorized)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if n == 0:
        return len(keys) == 0
    rows = np.arange(first, first + n, dtype=np.int64)
    # sample_key pads to 10 digits
    width = 10 if first + n <= 10**10 else np.maximum(10, np.char.str_len(rows.astype(str)))
    try:
        as_int = pc.cast(keys, pa.int64()).to_numpy(zero_copy_only=False)
        lengths = pc.utf8_length(keys).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    digits = pc.all(pc.match_substring_regex(keys, r"^[0-9]+$")).as_py()
    return bool(digits) and np.array_equal(as_int, rows) and bool((lengths == width).all())


def _check_offsets(t, tar: bytes, entry: dict, problems: list[str]) -> None:
    """The index's byte range of every sample equals where its records lie in the tar."""
    try:
        ranges = fmt.member_ranges(tar, entry["path"])
    except fmt.FormatError as e:
        problems.append(str(e))
        return
    got = np.stack([t.column(c).to_numpy() for c in fmt.OFFSET_COLUMNS], 1)
    want = np.array([ranges.get(k, (-1, -1)) for k in t.column("key").to_pylist()], np.int64).reshape(-1, 2)
    bad = np.flatnonzero((got != want).any(1))
    if bad.size:
        problems.append(f"index tar_offset/tar_size of {bad.size} sample(s) differ from the tar, "
                        f"e.g. {t.column('key')[int(bad[0])].as_py()}")


def _check_latents(z, entry: dict, *, dim_z: int, latents_tar: dict[str, np.ndarray], problems: list[str]) -> None:
    """Problems of a shard's rows of latents.zarr, against the manifest and the tar's latents."""
    n, first = entry["samples"], entry["first_row"]
    try:
        rows = np.asarray(z[first : first + n], np.float32)
    except Exception as e:  # noqa: BLE001
        problems.append(f"latents.zarr rows {first}..{first + n - 1} unreadable: {e}")
        return
    if rows.shape != (n, dim_z):
        problems.append(f"latents.zarr rows {first}..{first + n - 1} have shape {rows.shape}")
        return
    sha = fmt.sha256_bytes(np.ascontiguousarray(rows).tobytes())
    if entry.get("latents_sha256") and sha != entry["latents_sha256"]:
        problems.append("latents.zarr rows differ from the manifest's latents_sha256")
    bad = [kk for kk, v in latents_tar.items() if first <= fmt.key_row(kk) < first + n
           if not (v.shape == (dim_z,) and np.array_equal(v.astype(np.float32), rows[fmt.key_row(kk) - first]))]
    if bad:
        problems.append(f"{len(bad)} latent(s) in the tar differ from latents.zarr, e.g. {sorted(bad)[0]}")


def check_shard(root: str, entry: dict, *, members: dict, z, dim_z: int, offsets: bool = False,
                index_only: bool = False, resolution: int | None = None, spec: dict | None = None,
                index_rows=None) -> list[str]:
    """Problems of one shard (empty = good): its tar (image sizes against `resolution`), its index fragment
    (or its rows of a part, `index_rows`, the part checked by `parts_check`) and the statistics and decisions
    it holds (recomputed from the stored members, `statcheck`), its rows of latents.zarr (`z`, or None); with
    `index_only`, its index alone."""
    from factory.dataset.statcheck import stat_problems

    problems: list[str] = []
    data = None if index_only else _read_shard_or_report(root, entry, problems)
    latents_tar, samples = ({}, {}) if data is None else _check_tar(*data, entry, members=members, problems=problems,
                                                                    resolution=resolution)
    tar = data[0] if offsets and data else None
    if index_rows is not None:
        check_index_table(index_rows, entry, problems, tar=tar)
        if samples:
            problems += stat_problems(samples, index_rows, members=members, spec=spec)
    elif (idata := _read_or_report(fmt.join(root, entry["index"]), "index fragment", problems)) is not None:
        _check_index(idata, entry, problems, tar=tar)
        if samples:
            problems += stat_problems(samples, idata, members=members, spec=spec)
    if index_only:
        return problems
    if z is not None and entry["samples"]:
        _check_latents(z, entry, dim_z=dim_z, latents_tar=latents_tar, problems=problems)
    return problems


def _check_dataset(rep: VerifyReport, m: dict) -> None:
    """Dataset-level problems (``format.manifest_problems``): shard ids 0..K-1, contiguous first rows,
    samples that fit in their bytes, latents hash and dataset id."""
    for shard, problem in fmt.manifest_problems(m):
        rep.problems.append(problem)
        if shard is not None and shard not in rep.bad_shards:
            rep.bad_shards.append(shard)


def _checked_latents(problems: list[str], root: str, m: dict):
    """latents.zarr of the dataset when it opens with the manifest's shape, else None (problem appended)."""
    dim_z = int(m["dim_z"])
    import zarr  # noqa: F401 - missing in a training install: the CLI names the extra (format.user_error)

    try:
        z = _open_latents(root)
        if tuple(z.shape) != (m["samples"], dim_z):
            problems.append(f"{fmt.join(root, fmt.LATENTS)}: shape {tuple(z.shape)}, expected {(m['samples'], dim_z)}")
            return None
        return z
    except Exception as e:  # noqa: BLE001 - zarr raises several types for a missing/corrupt array
        problems.append(f"{fmt.join(root, fmt.LATENTS)} missing or unreadable ({type(e).__name__})")
        return None


def _check_view(rep: VerifyReport, url: str, res: fmt.Resolved, entries: list[dict]) -> None:
    """View-level problems: the view id recomputed, accepted rows inside their shards."""
    v = res.view
    if v.get("predicate") is not None:
        vid = fmt.view_id(v["parent"]["dataset_id"], v["predicate"], fmt.accepted_sha256(v["accepted"]))
        if vid != v["view_id"]:
            rep.problems.append(f"{url}: view_id {v['view_id']} is not the hash of its parent, predicate and rows")
    by_id = {s["shard"]: s for s in entries}
    for k in res.accepted:
        rows = res.accepted[k]
        s = by_id.get(int(k))
        if s is None:
            rep.problems.append(f"{url}: accepts rows of shard {k}, which the parent does not have")
            continue
        if len(rows) and (rows[0] < s["first_row"] or rows[-1] >= s["first_row"] + s["samples"]):
            rep.problems.append(f"{url}: accepted rows of shard {k} lie outside its rows")
    rep.samples = v["samples"]


def _check_parts(problems: list[str], root: str, m: dict, *, ex, check, index_only: bool,
                 lo: int, hi: int) -> dict[int, list[str]]:
    """Per-shard problems of the shards lo..hi-1 of a dataset with a compacted index (its index section
    valid): each part starting in that range read whole and checked (`parts_check`, problems appended to
    `problems`), then its shards checked with their slices of it (one part in memory at a time)."""
    by_id = {s["shard"]: s for s in m["shards"]}
    out: dict[int, list[str]] = {k: [] for k in by_id if lo <= k < hi}
    # every column when the tars are read too (their statistics are recomputed from the members)
    columns = ["key", "shard", "row", *(fmt.OFFSET_COLUMNS if fmt.has_offsets(m) else ())] if index_only else None
    for part in m["index"]["parts"]:
        if not lo <= part["first_shard"] < hi:
            continue
        table, probs = parts_check.read_part(root, part, columns)
        problems += probs
        shards = range(part["first_shard"], part["first_shard"] + part["shards"])
        if table is None:
            for k in shards:
                out.setdefault(k, []).append(f"index part {part['path']} unusable")
            continue
        for k in shards:
            if probs:
                out.setdefault(k, []).append(f"index part {part['path']} differs from the manifest")
        slices = list(parts_check.shard_slices(table, part, by_id))
        for (e, _), p in zip(slices, ex.map(lambda a: check(*a), slices)):
            out.setdefault(e["shard"], []).extend(p)
    return out


def _check_shards(res: fmt.Resolved, z, *, index_only: bool, lo: int, hi: int) -> tuple[list[str], list[list[str]]]:
    """(problems of index parts, the problems of each shard) for the shards lo..hi-1 in shard order (without
    a compacted index: the manifest's shard entries sorted by id, at positions lo..hi-1), checked in a thread
    pool: the work of one process, or of one cluster task (`check_range`)."""
    m = res.manifest
    dim_z = int(m["dim_z"])
    members = m.get("members") or {"image": fmt.EXT_IMAGE, "mask": fmt.EXT_MASK, "latent": fmt.EXT_LATENT,
                                   "meta": fmt.EXT_META}
    # reading tars (or an object store) waits on I/O: twice the cores; checking local index fragments is
    # CPU work that more threads than cores only slow down (10M rows on 2 cores: 5.7 s wall with 2, 10.7 with 8)
    cpu_bound = index_only and not fmt.is_remote_url(res.root)
    nthreads = (min(4, os.cpu_count() or 1) if cpu_bound else min(8, max(2, (os.cpu_count() or 1) * 2)))

    def check(s, rows=None):
        return check_shard(res.root, s, members=members, z=z, dim_z=dim_z, offsets=fmt.has_offsets(m),
                           index_only=index_only, resolution=m.get("resolution"), spec=m.get("spec"),
                           index_rows=rows)

    part_problems: list[str] = []
    with ThreadPoolExecutor(nthreads) as ex:
        if fidx.has_parts(m):
            if parts_check.section_problems(m):
                ids = sorted(s["shard"] for s in m["shards"] if lo <= s["shard"] < hi)
                return [], [["index section invalid"] for _ in ids]
            out = _check_parts(part_problems, res.root, m, ex=ex, check=check, index_only=index_only, lo=lo, hi=hi)
            return part_problems, [out[k] for k in sorted(out)]
        entries = sorted(m["shards"], key=lambda s: s["shard"])[lo:hi]
        return part_problems, list(ex.map(check, entries))


def check_range(url: str, *, dataset_id: str, lo: int, hi: int, allow_remote_shards: bool = False,
                index_only: bool = False) -> tuple[list[str], list[list[str]]]:
    """A cluster task of `verify`: the shards lo..hi-1 of the dataset at `url`, opened by the worker itself
    (its manifest must still have `dataset_id`); returns what `_check_shards` returns."""
    res = fmt.open_dataset(url, allow_remote_shards=allow_remote_shards)
    if res.manifest["dataset_id"] != dataset_id:
        raise fmt.FactoryError(f"{url} changed during verify (dataset id {res.manifest['dataset_id']}, "
                               f"was {dataset_id}); run verify again")
    z = None if index_only else _checked_latents([], res.root, res.manifest)  # its problems: the client's
    return _check_shards(res, z, index_only=index_only, lo=lo, hi=hi)


def _cluster_ranges(m: dict) -> list[tuple[int, int]]:
    """The shard ranges of a dataset's cluster tasks: one per index part (a part is read once), else up to 64."""
    from factory.cluster import shard_ranges

    if fidx.has_parts(m) and not parts_check.section_problems(m):
        starts = sorted(p["first_shard"] for p in m["index"]["parts"])[1:]
        end = max(s["shard"] for s in m["shards"]) + 1
        return list(zip([0, *starts], [*starts, end]))
    return shard_ranges(len(m["shards"]))


def verify(url: str, allow_remote_shards: bool = False, workers: int | None = None, *,
           index_only: bool = False, scheduler: str | None = None) -> VerifyReport:
    """Verify a dataset or view; FormatError only for an unreadable/invalid manifest, else a report.
    ``index_only``: the manifest, view and index fragments only (no tar, no latents). ``scheduler``: the
    shards are checked as shard-range tasks on that dask cluster (`factory.cluster`), each worker reading
    only its shards; ``workers`` > 0 without a scheduler: the same tasks on a local cluster of that many
    processes (0 or None: this process, a thread pool). The report is the one this process would make."""
    res = fmt.open_dataset(url, allow_remote_shards=allow_remote_shards)
    m = res.manifest
    entries = sorted(m["shards"], key=lambda s: s["shard"])
    rep = VerifyReport(url=url, dataset_id=m["dataset_id"], view_id=res.view["view_id"] if res.view else None,
                       shards=len(entries), samples=m["samples"], bytes=sum(s["bytes"] for s in entries),
                       index_only=index_only)
    _check_dataset(rep, m)
    z = None if index_only else _checked_latents(rep.problems, res.root, m)
    if fidx.has_parts(m):
        rep.problems += parts_check.section_problems(m)
    if scheduler or workers:
        from factory.cluster import run_tasks

        tasks = [dict(url=url, dataset_id=m["dataset_id"], lo=lo, hi=hi, allow_remote_shards=allow_remote_shards,
                      index_only=index_only) for lo, hi in _cluster_ranges(m)]
        results: list[list[str]] = []
        for part_problems, shard_problems in run_tasks(scheduler, check_range, tasks, workers=workers or 0,
                                                       name=f"verify-{m['dataset_id'][3:15]}"):
            rep.problems += part_problems
            results += shard_problems
    else:
        end = max((s["shard"] for s in entries), default=0) + len(entries) + 1
        part_problems, results = _check_shards(res, z, index_only=index_only, lo=0, hi=end)
        rep.problems += part_problems
    for s, probs in zip(entries, results):
        if probs:
            rep.problems.append(f"shard {s['shard']} ({fmt.join(res.root, s['path'])}): " + "; ".join(probs))
            if s["shard"] not in rep.bad_shards:
                rep.bad_shards.append(s["shard"])
    if not index_only and not rep.problems and isinstance(m.get("index_stats"), dict):
        _check_index_stats(rep, res)
    if res.view is not None:
        _check_view(rep, url, res, entries)
    rep.bad_shards.sort()
    return rep


def _check_index_stats(rep: VerifyReport, res: fmt.Resolved) -> None:
    """The manifest's summary of the index (``index_stats``: pass rates, quantiles) recomputed from the
    fragments just checked."""
    from factory.dataset.card import index_stats

    if index_stats(res.root, res.manifest) != res.manifest["index_stats"]:
        rep.problems.append(f"{fmt.join(res.root, fmt.MANIFEST)}: index_stats differ from the statistics of "
                            "the index (edited?)")
