"""The contract's compacted index (format version 3): a run's index as a few large Parquet parts.

A finished dataset of many shards keeps its index as parts ``index/AAAAAA-BBBBBB.parquet`` (shards A..B),
each a Parquet file whose row groups hold whole shards, in shard and row order, written with page
checksums (CRC-32 of every page's data) and min/max statistics per row group. The manifest lists the
parts under ``"index": {"layout": "parts", "parts": [...]}``, each with the sha256 of the whole file
(what the dataset id covers through every shard entry's ``index_sha256``), the sha256 of its footer
(the file's last 8 + footer length bytes: schema, row groups, column chunk offsets, statistics), its size,
its first shard, its shard count, its rows and its row groups as ``[first_shard, shards, rows]``.

A reader that wants some columns of some shards reads the footer (checked against ``footer_sha256``), then
only those columns of the row groups holding those shards, with the page checksums verified: a changed
byte in what it read fails the footer's sha256 or a page's CRC-32, without reading the rest of the file.
``factory verify`` hashes every part whole.

Every shard entry of a version-3 manifest names its part in ``index`` and the part's sha256 in
``index_sha256``; the parts also carry ``key_bucket`` (int16), ``int(sha256(key).hexdigest(), 16) % 1000``,
the key's hold-out bucket, so that a reader splits a hold-out without hashing every key.
"""
from __future__ import annotations

import hashlib
import re

import numpy as np

from factory.format.errors import FormatError
from factory.format.names import INDEX_DIR, sha256_bytes
from factory.format.paths import is_remote_url, join
from factory.format.shardtable import columns_of
from factory.format.store import get_fs

PARTS_VERSION = 3  # the format version whose manifests may hold an index section of parts
LAYOUT_PARTS = "parts"
KEY_BUCKET = "key_bucket"
_PART = re.compile(r"^index/(\d{6})-(\d{6})\.parquet$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_FOOTER = 64 << 20


_WORD_WEIGHTS = np.array([pow(2, 64 * (3 - i), 1000) for i in range(4)], np.int64)


def key_buckets(rows: np.ndarray) -> np.ndarray:
    """``int(sha256(sample_key(row)).hexdigest(), 16) % 1000`` of every row (int16): one digest per row,
    the modulo vectorized over the digest's four big-endian 64-bit words."""
    rows = np.asarray(rows, np.int64)
    out = np.zeros(rows.shape[0], np.int16)
    sha = hashlib.sha256
    for i in range(0, rows.shape[0], 1 << 17):  # in chunks: the Python objects of a chunk only
        digests = b"".join([sha(b"%010d" % r).digest() for r in rows[i:i + (1 << 17)].tolist()])
        words = np.frombuffer(digests, ">u8").reshape(-1, 4)
        out[i:i + (1 << 17)] = ((words % np.uint64(1000)).astype(np.int64) @ _WORD_WEIGHTS) % 1000
    return out


def part_name(first_shard: int, last_shard: int) -> str:
    """Path of the part holding shards first_shard..last_shard."""
    return f"{INDEX_DIR}/{first_shard:06d}-{last_shard:06d}.parquet"


def has_parts(manifest: dict) -> bool:
    """Whether a dataset's index is compacted into parts (a version-3 manifest with an index section)."""
    return isinstance(manifest.get("index"), dict) and manifest["index"].get("layout") == LAYOUT_PARTS


def _int(obj: dict, key: str, where: str) -> int:
    v = obj.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise FormatError(f"{where}: {key} must be an integer >= 0, got {v!r}")
    return v


def index_parts(manifest: dict, where: str = "manifest") -> list[dict]:
    """The manifest's parts, checked: names, digests, sizes, row groups adding up, every shard in one
    part whose path and sha256 its entry names (FormatError, one line, naming the problem)."""
    sec = manifest.get("index")
    if not has_parts(manifest):
        raise FormatError(f"{where}: no index section of parts")
    if manifest.get("format_version", 0) < PARTS_VERSION:
        raise FormatError(f"{where}: an index section of parts needs format version {PARTS_VERSION}")
    parts = sec.get("parts")
    if not isinstance(parts, list):
        raise FormatError(f"{where}: index.parts must be a list")
    cols = _Columns(manifest["shards"])
    next_shard = 0
    for i, p in enumerate(parts):
        w = f"{where}: index.parts[{i}]"
        if not isinstance(p, dict):
            raise FormatError(f"{w} must be an object")
        path = p.get("path")
        first, shards, rows = _int(p, "first_shard", w), _int(p, "shards", w), _int(p, "rows", w)
        _int(p, "bytes", w)
        m = _PART.match(path) if isinstance(path, str) else None
        if m is None or (int(m.group(1)), int(m.group(2))) != (first, first + shards - 1) or shards < 1:
            raise FormatError(f"{w}: path {path!r} is not {part_name(first, first + max(shards, 1) - 1)}")
        for h in ("sha256", "footer_sha256"):
            if not (isinstance(p.get(h), str) and _HEX64.match(p[h])):
                raise FormatError(f"{w}: {h} is not a 64-digit lowercase hex digest")
        if first != next_shard:
            raise FormatError(f"{w}: starts at shard {first}, expected {next_shard} (parts are contiguous)")
        next_shard = first + shards
        groups = p.get("row_groups")
        if not isinstance(groups, list) or not groups:
            raise FormatError(f"{w}: row_groups must be a non-empty list")
        at, total = first, 0
        for g in groups:
            if not (isinstance(g, list) and len(g) == 3 and all(isinstance(x, int) and not isinstance(x, bool)
                                                              and x >= 0 for x in g)) or g[0] != at or g[1] < 1:
                raise FormatError(f"{w}: row group {g!r} is not [first_shard, shards, rows] following shard {at}")
            at, total = at + g[1], total + g[2]
        if not cols.part_matches(p, groups, at):
            _check_part_shards(p, groups, cols.entries(), w)
        if at != first + shards or total != rows:
            raise FormatError(f"{w}: row groups cover shards {first}..{at - 1} and {total} rows, "
                                  f"the part says {shards} shards and {rows} rows")
    if next_shard != cols.count:
        raise FormatError(f"{where}: index parts cover shards 0..{next_shard - 1} of {cols.count}")
    return parts


class _Columns:
    """The shard entries' columns `index_parts` compares with the parts (shard ids 0..K-1 in order: slices)."""

    def __init__(self, shards):
        self.shards = shards
        self.count = len(shards)
        ids, self.index, self.isha, n = columns_of(shards, "shard", "index", "index_sha256", "samples")
        self.in_order = bool((ids == np.arange(ids.shape[0])).all())
        self.ends = np.concatenate([[0], np.cumsum(n)])

    def part_matches(self, p: dict, groups: list, end: int) -> bool:
        """Whether every shard of part ``p``'s row groups (up to ``end``) is listed, names the part and its
        sha256, and the groups' rows add up."""
        a, b = p["first_shard"], end
        if not self.in_order or b > self.count:
            return False
        if self.index[a:b].count(p["path"]) != b - a or self.isha[a:b].count(p["sha256"]) != b - a:
            return False
        return all(int(self.ends[g[0] + g[1]] - self.ends[g[0]]) == g[2] for g in groups)

    def entries(self) -> dict:
        return {s["shard"]: s for s in self.shards}


def _check_part_shards(p: dict, groups: list, entries: dict, w: str) -> None:
    """The first shard of part ``p`` whose entry is missing or disagrees with it, as FormatError."""
    for g in groups:
        n = 0
        for k in range(g[0], g[0] + g[1]):
            e = entries.get(k)
            if e is None:
                raise FormatError(f"{w}: shard {k} is not in the manifest")
            if e["index"] != p["path"] or e["index_sha256"] != p["sha256"]:
                raise FormatError(f"{w}: shard {k}'s entry does not name this part and its sha256")
            n += e["samples"]
        if n != g[2]:
            raise FormatError(f"{w}: row group {g!r} holds {n} rows by the shard entries")


def part_of_shards(parts: list[dict], shards) -> dict[int, list[int]]:
    """{part position: [row group positions]} holding the given shard ids."""
    want = sorted(set(int(s) for s in shards))
    out: dict[int, list[int]] = {}
    j = 0
    for pi, p in enumerate(parts):
        for gi, (first, n, _) in enumerate(p["row_groups"]):
            while j < len(want) and want[j] < first:
                j += 1
            if j < len(want) and want[j] < first + n:
                out.setdefault(pi, []).append(gi)
    return out


def footer_bytes(f, size: int, where: str) -> bytes:
    """A Parquet file's tail: footer, its 4-byte length and the magic (what ``footer_sha256`` covers)."""
    if size < 12:
        raise FormatError(f"{where} is not a Parquet file ({size} bytes)")
    f.seek(size - 8)
    tail = f.read(8)
    n = int.from_bytes(tail[:4], "little")
    if tail[4:] != b"PAR1" or n + 12 > size or n > MAX_FOOTER:
        raise FormatError(f"{where} is not a Parquet file (no footer)")
    f.seek(size - 8 - n)
    return f.read(n + 8)


def open_part(root: str, part: dict):
    """A part as a ``pyarrow.parquet.ParquetFile`` verifying page checksums, its footer checked against the
    manifest's ``footer_sha256``, its size and row groups against the part entry. Close with ``.close()``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    url = join(root, part["path"])
    try:
        if is_remote_url(url):
            fs, path = get_fs(url)
            f = fs.open(path, "rb")
            size = fs.size(path)
        else:  # Arrow's own file: reads without Python objects or the GIL
            f = pa.OSFile(url, "rb")
            size = f.size()
    except FileNotFoundError:
        raise FormatError(f"index part missing: {url}") from None
    except (OSError, pa.ArrowException) as e:
        raise FormatError(f"cannot read index part {url}: {e}") from None
    try:
        if size != part["bytes"]:
            raise FormatError(f"index part {url} has {size} bytes, the manifest says {part['bytes']}")
        tail = footer_bytes(f, size, f"index part {url}")
        if sha256_bytes(tail) != part["footer_sha256"]:
            raise FormatError(f"index part {url}: its footer does not match the manifest's footer_sha256 "
                                  "(changed or corrupt)")
        meta = pq.read_metadata(pa.BufferReader(b"PAR1" + tail))
        pf = pq.ParquetFile(f, metadata=meta, page_checksum_verification=True)
    except FormatError:
        f.close()
        raise
    except (pa.ArrowException, OSError, ValueError) as e:
        f.close()
        raise FormatError(f"index part {url} is not a readable index: {e}") from None
    groups = part["row_groups"]
    if meta.num_row_groups != len(groups) or any(meta.row_group(i).num_rows != g[2] for i, g in enumerate(groups)):
        f.close()
        raise FormatError(f"index part {url}: its row groups are not the manifest's")
    return pf


def read_row_groups(pf, groups: list[int], columns: list[str] | None, where: str):
    """The given row groups of an opened part (``open_part``), only ``columns``; a failed page checksum is a
    FormatError naming the part."""
    import pyarrow as pa

    try:
        return pf.read_row_groups(groups, columns=columns, use_threads=False)
    except (pa.ArrowException, OSError, ValueError, KeyError) as e:
        raise FormatError(f"index part {where} is changed or corrupt ({e}); run factory verify") from None


def read_shards_index(root: str, manifest: dict, shards, columns: list[str] | None = None, *,
                      parts: list[dict] | None = None):
    """The index rows of the given shard ids (shard and row order), only ``columns``, from a compacted
    index: only the row groups holding them are read. ``parts``: the manifest's `index_parts`, when the
    caller has checked them already (a reader of many shards checks them once)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    parts = index_parts(manifest) if parts is None else parts
    want = sorted(set(int(s) for s in shards))
    cols = None if columns is None else list(dict.fromkeys([*columns, "shard"]))
    tables = []
    for pi, groups in part_of_shards(parts, want).items():
        pf = open_part(root, parts[pi])
        try:
            t = read_row_groups(pf, groups, cols, parts[pi]["path"])
        finally:
            pf.close()
        t = t.filter(pc.is_in(t.column("shard"), pa.array(want, pa.int32())))
        tables.append(t if columns is None or "shard" in columns else t.drop_columns(["shard"]))
    if not tables:
        return None
    return pa.concat_tables(tables)


def read_index_column(root: str, manifest: dict, column: str, threads: int = 4) -> np.ndarray:
    """One column of a compacted index, every row in row order (parts read in threads, footers and pages
    checked), as a numpy array."""
    from concurrent.futures import ThreadPoolExecutor

    parts = index_parts(manifest)

    def run(part):
        pf = open_part(root, part)
        try:
            t = read_row_groups(pf, list(range(len(part["row_groups"]))), [column], join(root, part["path"]))
        finally:
            pf.close()
        if t.num_rows != part["rows"]:
            raise FormatError(f"index part {join(root, part['path'])} has {t.num_rows} rows, the manifest says "
                              f"{part['rows']}")
        return t.column(column).to_numpy()

    with ThreadPoolExecutor(max(1, min(threads, len(parts)))) as ex:
        pieces = list(ex.map(run, parts))
    return np.concatenate(pieces) if pieces else np.zeros(0)
