"""The shard table (format version 4): a dataset's shard entries as a Parquet table beside the manifest.

A dataset whose index is compacted (format 3's parts) keeps its shard entries in ``shards.parquet`` (one
row per shard, typed columns, zstd, a CRC-32 checksum on every page) instead of a JSON list, and its
manifest names the table in a small section::

    "shard_table": {"path": "shards.parquet", "sha256": "<64 hex>", "bytes": 9876543, "rows": 100000}

The manifest's bytes hold the table's sha256, so the dataset id (still the content hash of every shard's
path, sha256, samples and index sha256) and a signature over the manifest cover the table too.

``read_shard_table`` is the one reader: the file's size and sha256 are checked against the section before
a byte of it is parsed, its size, rows and uncompressed size within limits, then its schema and every
column's values at once (numpy / pyarrow); ``ShardTable`` hands the entries to every consumer as a
read-only sequence of the same dicts a JSON list holds (built on access) and as numpy columns.
A column that fails a check is looked at entry by entry (``raw_entries``) so that the error names the
entry, with the messages of the JSON list's checks (`schema.validate_manifest`).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from factory.format.errors import FormatError
from factory.format.names import MANIFEST, MAX_SAMPLES, PLATFORM_ID, SHARD_TABLE, SHARD_TABLE_SECTION, sha256_bytes
from factory.format.paths import check_plain_paths, join, plain_concat
from factory.format.store import atomic_write, read_bytes

TABLE_VERSION = 4  # manifests of this version keep their shard entries in the shard table
SECTION = SHARD_TABLE_SECTION
MAX_TABLE_BYTES = 256 << 20  # a million shards (a billion rows in shards of 1,000) take ~100 MB
MAX_TABLE_ROWS = 1 << 24
MAX_TABLE_DECODED = 2 << 30  # the columns' declared uncompressed bytes
INT_COLUMNS = ("shard", "samples", "bytes", "first_row", "batch_size")
TEXT_COLUMNS = ("path", "index")
DIGEST_COLUMNS = ("sha256", "index_sha256", "latents_sha256")
OPTIONAL_COLUMNS = ("latents_sha256", "platform", "batch_size")  # null where an entry has no such field
COLUMNS = ("shard", "path", "index", "sha256", "bytes", "samples", "first_row", "index_sha256", "latents_sha256",
           "platform", "batch_size")
DICTIONARY_COLUMNS = ("index", "platform")  # few distinct values: read as dictionaries
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _arrow_schema():
    import pyarrow as pa

    types = {**{c: pa.int64() for c in INT_COLUMNS}, **{c: pa.string() for c in TEXT_COLUMNS},
             **{c: pa.binary(32) for c in DIGEST_COLUMNS}, "platform": pa.string()}
    return pa.schema([pa.field(c, types[c], nullable=c in OPTIONAL_COLUMNS) for c in COLUMNS])


def has_table(manifest: dict) -> bool:
    """Whether a manifest (as stored) names a shard table instead of listing its shards."""
    return SECTION in manifest


class ShardTable(Sequence):
    """A dataset's shard entries read from its shard table: ``table[i]`` is entry i as the dict a JSON list
    holds (digests as hex; optional fields absent when null), built on access (a new dict each time:
    changing it changes nothing); ``column(name)`` the column as a numpy array (integers) or a list."""

    def __init__(self, table, *, checked_total: int | None = None):
        self.arrow = table
        self.checked_total = checked_total  # samples of a table whose every column passed the checks
        self._cols: dict[str, object] = {}
        self._names = [c for c in COLUMNS if c in table.column_names]

    def __len__(self) -> int:
        return self.arrow.num_rows

    def __repr__(self) -> str:
        return f"ShardTable({len(self)} shards)"

    def column(self, name: str):
        """An integer column without nulls as a read-only int64 numpy array; any other column as a list
        (digests as hex, None where null), shared by every caller: not to be changed."""
        if name not in self._cols:
            if name not in self._names:
                self._cols[name] = [None] * len(self)
            elif name in INT_COLUMNS and not self.arrow.column(name).null_count:
                self._cols[name] = _int64s(self.arrow.column(name))
                self._cols[name].flags.writeable = False  # shared by every caller
            elif name in DIGEST_COLUMNS:
                self._cols[name] = _hexes(self.arrow.column(name))
            else:
                self._cols[name] = _texts(self.arrow.column(name))
        return self._cols[name]

    def total(self, name: str) -> int:
        """The sum of an integer column."""
        return int(self.column(name).sum())

    def _row(self, i: int) -> dict:
        out = {}
        for c in self._names:
            v = self.column(c)[i]
            if v is not None:
                out[c] = int(v) if c in INT_COLUMNS else v  # numpy integers as Python ints
        return out

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._row(j) for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError("shard table index out of range")
        return self._row(i % n)

    def __iter__(self):
        names = self._names
        cols = [self.column(c) for c in names]
        cols = [c.tolist() if isinstance(c, np.ndarray) else c for c in cols]
        if not any(self.arrow.column(c).null_count for c in names):
            yield from map(dict, map(zip, [names] * len(self), zip(*cols)))
            return
        for values in zip(*cols):
            yield {c: v for c, v in zip(names, values) if v is not None}

    def __eq__(self, other) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(self) == len(other) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def raw_entries(self) -> list[dict]:
        """The rows as they are stored (any column, any type: what the entry-by-entry check reads)."""
        rows = self.arrow.to_pylist()
        for r in rows:
            for k in [k for k, v in r.items() if v is None]:
                del r[k]
            for k in DIGEST_COLUMNS:
                if isinstance(r.get(k), bytes):
                    r[k] = r[k].hex()
        return rows


def _int64s(column) -> np.ndarray:
    """An integer column without nulls as int64 numpy (from its buffers: pyarrow's to_numpy imports pandas)."""
    parts = [np.zeros(0, np.int64)]
    for chunk in column.chunks:
        if str(chunk.type) != "int64":
            chunk = chunk.cast("int64")
        if len(chunk):
            parts.append(np.frombuffer(chunk.buffers()[1], np.int64)[chunk.offset:chunk.offset + len(chunk)])
    return parts[-1] if len(parts) == 2 else np.concatenate(parts)


def _hexes(column) -> list:
    """A digest column as hex strings (None where null): a fixed-size column without nulls in one hex pass."""
    import pyarrow as pa

    if column.null_count or not pa.types.is_fixed_size_binary(column.type):
        return [None if b is None else b.hex() for b in column.to_pylist()]
    width = 2 * column.type.byte_width
    out: list = []
    for chunk in column.chunks:
        text = chunk.buffers()[1].to_pybytes()[chunk.offset * width // 2:(chunk.offset + len(chunk)) * width // 2].hex()
        out += [text[i:i + width] for i in range(0, len(text), width)]
    return out


def _codes(chunk) -> np.ndarray:
    """The value positions of a dictionary-coded chunk, -1 where null (from its buffers)."""
    ids = chunk.indices
    if not len(ids):
        return np.zeros(0, np.int64)
    width = ids.type.bit_width // 8
    codes = np.frombuffer(ids.buffers()[1], f"<i{width}")[ids.offset:ids.offset + len(ids)].astype(np.int64)
    if ids.null_count:
        bits = np.unpackbits(np.frombuffer(ids.buffers()[0], np.uint8), bitorder="little")
        codes[bits[ids.offset:ids.offset + len(ids)] == 0] = -1
    return codes


def _texts(column) -> list:
    """A text column as a list (None where null); a dictionary-coded one through its few distinct values."""
    import pyarrow as pa

    if not pa.types.is_dictionary(column.type):
        return column.to_pylist()
    out: list = []
    for chunk in column.chunks:
        values = chunk.dictionary.to_pylist() + [None]  # code -1: null
        out += list(map(values.__getitem__, _codes(chunk).tolist()))
    return out


def value_counts(shards, name: str) -> dict:
    """How many entries of a shard list or table hold each non-null value of field ``name`` (first seen first;
    a shard table's dictionary-coded column counted without a string per entry)."""
    import pyarrow as pa

    if isinstance(shards, ShardTable) and name in shards.arrow.column_names \
            and pa.types.is_dictionary(shards.arrow.column(name).type):
        counts: dict = {}
        for chunk in shards.arrow.column(name).chunks:
            codes = _codes(chunk)
            codes = codes[codes >= 0]
            values = chunk.dictionary.to_pylist()
            seen, first = np.unique(codes, return_index=True)
            n = np.bincount(codes, minlength=len(values))
            for code in seen[np.argsort(first)].tolist():
                counts[values[code]] = counts.get(values[code], 0) + int(n[code])
        return counts
    from collections import Counter

    return {v: n for v, n in Counter(columns_of(shards, name)[0]).items() if v is not None}


def _plain_column(column) -> bool:
    """Whether every value of a string column (no nulls) is a plain path, checked on its buffers."""
    for chunk in column.chunks:
        if len(chunk):
            offsets = np.frombuffer(chunk.buffers()[1], np.int32)[chunk.offset:chunk.offset + len(chunk) + 1]
            data = chunk.buffers()[2]
            data = data.to_pybytes()[offsets[0]:offsets[-1]] if data is not None else b""
            if not plain_concat(data, offsets.astype(np.int64) - offsets[0]):
                return False
    return True


def columns_of(shards, *names: str) -> list:
    """Columns of a shard list or table: integers as int64 numpy arrays, other fields as lists."""
    if isinstance(shards, ShardTable):
        return [shards.column(n) for n in names]
    out = []
    for n in names:
        if n in INT_COLUMNS:
            out.append(np.fromiter((s[n] for s in shards), np.int64, len(shards)))
        else:
            out.append([s.get(n) for s in shards])
    return out


def shard_ids(manifest: dict) -> np.ndarray:
    """The shard ids of a manifest's entries, in entry order (int64)."""
    return columns_of(manifest["shards"], "shard")[0]


# ---------------------------------------------------------------- writing

def table_bytes(entries) -> bytes:
    """The shard table of ``entries`` (dicts as a JSON list holds them, or a ShardTable) as Parquet bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _arrow_schema()
    if isinstance(entries, ShardTable):
        table = entries.arrow
    else:
        entries = list(entries)
        extra = sorted({k for e in entries for k in e} - set(COLUMNS))
        if extra:
            raise FormatError(f"shard entries hold field(s) {extra} that the shard table has no column for")
        cols = {}
        for c in COLUMNS:
            vals = [e.get(c) for e in entries]
            if c in DIGEST_COLUMNS:
                vals = [None if v is None else bytes.fromhex(v) for v in vals]
            cols[c] = pa.array(vals, schema.field(c).type)
        table = pa.table(cols, schema=schema)
    if table.schema != schema:
        table = table.cast(schema)
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, schema, compression="zstd", use_dictionary=["index", "index_sha256", "platform"],
                          column_encoding={c: "DELTA_BINARY_PACKED" for c in ("shard", "first_row")},
                          write_statistics=False, write_page_checksum=True) as w:
        w.write_table(table, row_group_size=max(1, table.num_rows))
    return sink.getvalue().to_pybytes()


def stored_manifest(manifest: dict) -> tuple[dict, bytes | None]:
    """What a writer stores of ``manifest``: for version 4 the JSON object with the ``shard_table`` section
    in place of the shard list, and the table's bytes; for older versions the manifest itself and None."""
    if manifest.get("format_version", 0) < TABLE_VERSION:
        return {k: v for k, v in manifest.items() if k != SECTION}, None
    data = table_bytes(manifest["shards"])
    out = {k: v for k, v in manifest.items() if k != "shards"}
    out[SECTION] = {"path": SHARD_TABLE, "sha256": sha256_bytes(data), "bytes": len(data),
                    "rows": len(manifest["shards"])}
    return out, data


def write_manifest(root: str, manifest: dict) -> dict:
    """Write a dataset's manifest (the writers' one way): for version 4 the shard table first, then
    manifest.json (indented JSON, sorted keys) naming it. Returns the JSON object written."""
    import json

    stored, data = stored_manifest(manifest)
    if data is not None:
        atomic_write(join(root, SHARD_TABLE), data)
    atomic_write(join(root, MANIFEST), json.dumps(stored, indent=1, sort_keys=True).encode())
    return stored


# ---------------------------------------------------------------- reading and checking

def _section(sec, where: str) -> dict:
    if not isinstance(sec, dict):
        raise FormatError(f"{where}: {SECTION} must be an object")
    if sec.get("path") != SHARD_TABLE:
        raise FormatError(f"{where}: {SECTION}.path is {str(sec.get('path'))[:80]!r}; a dataset keeps its shard "
                          f"table in {SHARD_TABLE} inside its folder")
    if not (isinstance(sec.get("sha256"), str) and _HEX64.match(sec["sha256"])):
        raise FormatError(f"{where}: {SECTION}.sha256 is not a 64-digit lowercase hex digest")
    for key, hi in (("bytes", MAX_TABLE_BYTES), ("rows", MAX_TABLE_ROWS)):
        v = sec.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= hi:
            raise FormatError(f"{where}: {SECTION}.{key} must be an integer in 0..{hi}, got {str(v)[:40]!r}")
    return sec


def read_shard_table(root: str, manifest: dict, where: str, *, checked: bool = False) -> ShardTable:
    """The shard table a version-4 manifest names, read and checked: size and sha256 of its bytes against
    the manifest's section first, then rows, schema and every column (``checked``: these same bytes, by
    sha256, passed every check in this process before). FormatError (one line) for anything else."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sec = _section(manifest.get(SECTION), where)
    url = join(root, sec["path"])
    try:
        data = read_bytes(url, MAX_TABLE_BYTES)
    except FileNotFoundError:
        raise FormatError(f"shard table missing: {url} (the manifest names it)") from None
    except OSError as e:
        raise FormatError(f"cannot read shard table {url}: {e}") from None
    if len(data) != sec["bytes"]:
        raise FormatError(f"shard table {url} has {len(data)}{'+' if len(data) > MAX_TABLE_BYTES else ''} bytes, "
                          f"the manifest says {sec['bytes']} (changed or corrupt)")
    if sha256_bytes(data) != sec["sha256"]:
        raise FormatError(f"shard table {url} does not match the manifest's {SECTION}.sha256 (changed or corrupt)")
    try:
        pf = pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=True,
                            read_dictionary=list(DICTIONARY_COLUMNS))
        meta = pf.metadata
        if meta.num_rows != sec["rows"]:
            raise FormatError(f"shard table {url} has {meta.num_rows} rows, the manifest says {sec['rows']}")
        decoded = sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
        if decoded > MAX_TABLE_DECODED:
            raise FormatError(f"shard table {url} declares {decoded:,} bytes of columns, over the "
                              f"{MAX_TABLE_DECODED:,} byte limit")
        table = pf.read(use_threads=False)  # index and platform dictionary-coded: their few values checked once
    except FormatError:
        raise
    except (pa.ArrowException, OSError, ValueError) as e:
        raise FormatError(f"shard table {url} is not a readable Parquet table: {str(e)[:200]}") from None
    if table.num_rows != sec["rows"]:
        raise FormatError(f"shard table {url} has {table.num_rows} rows, the manifest says {sec['rows']}")
    unknown = [c for c in table.column_names if c not in COLUMNS]
    if unknown or len(set(table.column_names)) != len(table.column_names):
        raise FormatError(f"shard table {url}: column {str((unknown or table.column_names)[0])[:40]!r} is not a "
                          f"shard table column (or is listed twice)")
    shards = ShardTable(table)
    if checked or _columns_ok(shards):
        shards.checked_total = shards.total("samples") if len(shards) else 0
    return shards


def schema_problem(shards: ShardTable) -> str | None:
    """The first column whose type is not the shard table's, as a phrase, or None."""
    schema = _arrow_schema()
    t = shards.arrow
    for f in schema:
        if f.name not in t.column_names:
            if f.name not in OPTIONAL_COLUMNS:
                return f"has no column {f.name!r}"
            continue
        typ = t.schema.field(f.name).type
        if f.name in DICTIONARY_COLUMNS and str(typ) == "dictionary<values=string, indices=int32, ordered=0>":
            continue
        if typ != f.type:
            return f"column {f.name!r} has type {typ}, expected {f.type}"
    return None


def _columns_ok(shards: ShardTable) -> bool:
    """Whether every entry passes every check of a JSON shard list (``schema.validate_manifest``), a column at
    a time; False sends the caller to the entry-by-entry check, which names the first bad entry."""
    t = shards.arrow
    if schema_problem(shards) is not None:
        return False
    if any(t.column(c).null_count for c in COLUMNS if c in t.column_names and c not in OPTIONAL_COLUMNS):
        return False
    if not len(shards):
        return True
    ids, n, b, first = (shards.column(c) for c in ("shard", "samples", "bytes", "first_row"))
    if not (ids[1:] > ids[:-1]).all() and np.unique(ids).shape[0] != ids.shape[0]:
        return False
    if min(n.min(), b.min(), first.min()) < 0 or n.max() > MAX_SAMPLES or first.max() > MAX_SAMPLES:
        return False
    if (first + n).max() > MAX_SAMPLES:
        return False
    if not _plain_column(t.column("path")):
        return False
    index, platform = (_distinct(t, c) for c in ("index", "platform"))
    if not check_plain_paths(tuple(index)):
        return False
    return all(PLATFORM_ID.match(p) for p in platform)


def _distinct(t, name: str) -> set:
    """The distinct non-null values of a text column (of a dictionary-coded one: its dictionaries' values)."""
    import pyarrow as pa

    if name not in t.column_names:
        return set()
    col = t.column(name)
    if pa.types.is_dictionary(col.type):
        return {v for chunk in col.chunks for v in chunk.dictionary.to_pylist()} - {None}
    return set(col.to_pylist()) - {None}
