"""The index of a dataset as `factory browse` reads it: lazily, a piece at a time, never whole.

A piece is a row group of a compacted index's part (format 3: whole shards, ~2^17 rows) or, before
compaction, a run of shard fragments of about `PIECE_ROWS` rows (each fragment a unit, its sha256 checked). A question
reads only the columns it needs of only the units it needs (`take`: a page's rows; `scan`: every piece in
turn, in as many threads as cores, a progress line on stderr after a second), through the contract's
readers (`format.index.open_part`: footer sha256 and page checksums; `dataset.reader.load_index`). Index
positions are rows: shard k holds rows ``first_row .. first_row + samples - 1`` in row order and shards
follow each other from row 0 (as `factory verify` checks; checked again on every read of the ``row`` column, a
page's included). What is read is kept in a cache
bounded in bytes (`CACHE_BYTES`); a set of rows (a filter's accepted rows, a view's) is a `RowBits`, one bit
per index row.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from factory import format as fmt
from factory.dataset.reader import PART_THREADS, index_schema, load_index
from factory.format import index as fidx

PIECE_ROWS = 1 << 17  # rows of a piece of an index not compacted (shard fragments read together)
CACHE_BYTES = 24 << 20  # columns of units kept once read
PROGRESS_AFTER = 1.0  # seconds before a scan prints its progress


def release_memory() -> None:
    """Hand Arrow's freed buffers back to the system (its allocator keeps them otherwise: RSS would stay at a
    scan's peak)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


class ByteCache:
    """A least-recently-used map whose values' ``nbytes`` add up to at most `limit` (bigger values not kept)."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit

    def put(self, key, value, nbytes: int) -> None:
        if nbytes > self.limit // 4:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.used -= old[1]
            self._items[key] = (value, nbytes)
            self.used += nbytes
            while self.used > self.limit:
                _, (_, n) = self._items.popitem(last=False)
                self.used -= n

    def value(self, key):
        hit = self.get(key)
        return None if hit is None else hit[0]

    def __len__(self) -> int:
        return len(self._items)


class RowBits:
    """A set of index rows as one bit per row, piece by piece (packed, little bit order), with each piece's
    count: 100M rows in 12.5 MB."""

    def __init__(self, index: LazyIndex, packed: list[np.ndarray], counts):
        self.index, self.packed = index, packed
        self.counts = np.asarray(counts, np.int64)
        self.total = int(self.counts.sum())
        self.nbytes = sum(p.nbytes for p in packed)

    @classmethod
    def of(cls, index: LazyIndex, flags: list[np.ndarray]) -> RowBits:
        return cls(index, [np.packbits(f, bitorder="little") for f in flags], [int(f.sum()) for f in flags])

    def piece(self, i: int) -> np.ndarray:
        """Piece i's flags (bool, one per row of the piece)."""
        return np.unpackbits(self.packed[i], count=int(self.index.sizes[i]), bitorder="little").view(bool)

    def at(self, rows) -> np.ndarray:
        """Whether each of `rows` is in the set (rows outside the index are not)."""
        rows = np.asarray(rows, np.int64)
        out = np.zeros(rows.shape[0], bool)
        ok = (rows >= 0) & (rows < self.index.n)
        pieces = self.index.piece_of(rows[ok])
        local = rows[ok] - self.index.starts[pieces]
        byte, bit = local >> 3, local & 7
        vals = np.zeros(local.shape[0], bool)
        for i in np.unique(pieces).tolist():
            sel = pieces == i
            vals[sel] = (self.packed[i][byte[sel]] >> bit[sel]) & 1 == 1
        out[ok] = vals
        return out

    def select(self, offset: int, limit: int, invert: bool = False) -> np.ndarray:
        """Rows number offset .. offset + limit - 1 of the set (or of its complement), in row order."""
        counts = self.index.sizes - self.counts if invert else self.counts
        ends = np.cumsum(counts)
        out, i = [], int(np.searchsorted(ends, offset, side="right"))
        before = int(ends[i - 1]) if i else 0
        while i < len(counts) and limit > 0:
            flags = self.piece(i)
            rows = np.flatnonzero(~flags if invert else flags)[offset - before: offset - before + limit]
            out.append(rows + self.index.starts[i])
            limit -= rows.size
            offset = before = int(ends[i])
            i += 1
        return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


class LazyIndex:
    """The index of an opened dataset (`format.Resolved`), read when asked."""

    def __init__(self, res: fmt.Resolved, *, cache_bytes: int = CACHE_BYTES, threads: int | None = None):
        self.res, self.root, self.manifest = res, res.root, res.manifest
        self.schema = index_schema(self.root, self.manifest)
        self.cache = ByteCache(cache_bytes)
        self.threads = threads or PART_THREADS
        entries = sorted(((s["shard"], s["samples"]) for s in self.manifest["shards"]))
        self.parts = fidx.index_parts(self.manifest) if fidx.has_parts(self.manifest) else None
        # every piece: (its part's position or None, its shard ids, its units: (start row in the piece, rows,
        # reference)); a piece is a row group of a part, or a run of fragments, each fragment a unit
        self.pieces: list[tuple[int | None, list[int], list[tuple[int, int, object]]]] = []
        if self.parts is not None:
            for pi, p in enumerate(self.parts):
                for gi, (first, shards, rows) in enumerate(p["row_groups"]):
                    self.pieces.append((pi, list(range(first, first + shards)), [(0, rows, gi)]))
        else:
            ids, units, at = [], [], 0
            for k, rows in entries:
                ids.append(k)
                units.append((at, rows, k))
                at += rows
                if at >= PIECE_ROWS:
                    self.pieces.append((None, ids, units))
                    ids, units, at = [], [], 0
            if units:
                self.pieces.append((None, ids, units))
        self.sizes = np.array([sum(u[1] for u in units) for _, _, units in self.pieces], np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64) if self.pieces else \
            np.zeros(0, np.int64)
        self.n = int(self.sizes.sum())
        self._bases: RowBits | None = None

    # ------------------------------------------------------------ reading
    def piece_of(self, rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.starts, rows, side="right") - 1

    def _read(self, i: int, units: list[int], columns: list[str]):
        """Columns of some units of piece i, from the index files (row column checked)."""
        cols = list(columns)
        pi, ids, all_units = self.pieces[i]
        if pi is not None:
            part = self.parts[pi]
            pf = fidx.open_part(self.root, part)
            try:
                t = fidx.read_row_groups(pf, [all_units[u][2] for u in units], cols, fmt.join(self.root, part["path"]))
            finally:
                pf.close()
        else:
            t = load_index(self.root, self.manifest, columns=cols, shards=[all_units[u][2] for u in units])
        if "row" not in cols:
            return t
        rows, at = t.column("row").to_numpy(), 0
        for u in units:
            a, n, _ = all_units[u]
            first = int(self.starts[i]) + a
            if n and not (rows[at] == first and rows[at + n - 1] == first + n - 1
                          and np.array_equal(rows[at:at + n], np.arange(first, first + n))):
                raise fmt.FormatError(f"{self.root}: the index rows of shards {ids[0]}..{ids[-1]} are not rows "
                                      f"{first}..{first + n - 1} in order; run factory verify")
            at += n
        return t

    def units(self, i: int, units: list[int], columns: list[str], keep: bool = True):
        """Columns of some units of piece i (in unit order) as one table, through the cache (what is read is
        kept when `keep`)."""
        import pyarrow as pa

        all_units = self.pieces[i][2]
        got: dict[tuple[int, str], object] = {}
        missing: set[str] = set()
        need: list[int] = []
        for u in units:
            lack = False
            for c in columns:
                hit = self.cache.value((i, u, c))
                if hit is None:
                    missing.add(c)
                    lack = True
                else:
                    got[(u, c)] = hit
            if lack:
                need.append(u)
        if need:
            cols = [c for c in columns if c in missing]
            t = self._read(i, need, cols)
            at = 0
            for u in need:
                n = all_units[u][1]
                for c in cols:
                    arr = t.column(c).slice(at, n).combine_chunks()
                    got[(u, c)] = arr
                    if keep:
                        self.cache.put((i, u, c), arr, arr.nbytes)
                at += n
        return pa.table({c: pa.chunked_array([got[(u, c)] for u in units], self.schema.field(c).type)
                         for c in columns})

    def take(self, rows, columns: list[str]):
        """The given rows (any order) of `columns`, as one table in that order: only the units holding them read."""
        import pyarrow as pa

        rows = np.asarray(rows, np.int64)
        if not rows.size:
            return pa.table({c: pa.array([], self.schema.field(c).type) for c in columns})
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        pieces = self.piece_of(srt)
        tables = []
        for i in np.unique(pieces).tolist():
            local = srt[pieces == i] - self.starts[i]
            ustarts = np.array([u[0] for u in self.pieces[i][2]], np.int64)
            us = np.searchsorted(ustarts, local, side="right") - 1
            wanted = np.unique(us).tolist()
            t = self.units(i, wanted, columns)
            offsets = np.concatenate([[0], np.cumsum([self.pieces[i][2][u][1] for u in wanted])])
            idx = offsets[np.searchsorted(wanted, us)] + local - ustarts[us]
            tables.append(t.take(pa.array(idx)))
        t = pa.concat_tables(tables)
        return t.take(pa.array(np.argsort(order, kind="stable")))

    def _row_bytes(self, column: str) -> int:
        """About how many bytes a value of `column` takes in memory."""
        try:
            return max(1, self.schema.field(column).type.bit_width // 8)
        except ValueError:  # strings, lists
            return 16

    def scan(self, columns: list[str], fn, what: str) -> list:
        """``fn(i, table)`` of every piece i in order, `table` its `columns` (None when no column is needed),
        in threads; a progress line (rate, ETA) on stderr once it takes over a second."""
        # a scan of more than half the cache reads past what it could keep: nothing of it is kept
        keep = self.n * sum(map(self._row_bytes, columns)) <= self.cache.limit // 2

        def run(i):
            t = self.units(i, list(range(len(self.pieces[i][2]))), columns, keep) if columns else None
            return fn(i, t)

        if not self.pieces:
            return []
        if not columns:
            return [run(i) for i in range(len(self.pieces))]
        out: list = []
        bar = None
        t0 = time.perf_counter()
        try:
            with ThreadPoolExecutor(min(self.threads, len(self.pieces))) as ex:
                for r in (ex.map if self.threads > 1 else map)(run, range(len(self.pieces))):
                    out.append(r)
                    if bar is None and time.perf_counter() - t0 > PROGRESS_AFTER and len(out) < len(self.pieces):
                        from factory.progress import progress_bar

                        bar = progress_bar(total=self.n, initial=int(self.sizes[:len(out)].sum()), unit="row",
                                           unit_scale=True, desc=f"browse: {what}"[:60], leave=False)
                    elif bar is not None:
                        bar.update(int(self.sizes[len(out) - 1]))
        finally:
            if bar is not None:
                bar.close()
            release_memory()
        return out

    def stats_range(self, column: str) -> tuple[float, float] | None:
        """A number column's (min, max) from the parts' row-group statistics (footers only, each checked
        against its sha256); None where they cannot say (no statistics, a value not finite, no parts)."""
        if self.parts is None or not self.parts:
            return None
        lo, hi = np.inf, -np.inf
        for part in self.parts:
            pf = fidx.open_part(self.root, part)
            try:
                meta = pf.metadata
                j = meta.schema.to_arrow_schema().get_field_index(column)
                for g in range(meta.num_row_groups):
                    st = meta.row_group(g).column(j).statistics
                    if st is None or not st.has_min_max:
                        return None
                    lo, hi = min(lo, float(st.min)), max(hi, float(st.max))
            finally:
                pf.close()
        return (lo, hi) if np.isfinite(lo) and np.isfinite(hi) else None

    # ------------------------------------------------------------ the input rows
    def bases(self) -> RowBits | None:
        """The view's accepted rows as bits (None for a dataset: every row); the view's count checked."""
        res = self.res
        if res.accepted is None:
            return None
        if self._bases is None:
            shard_ids = {s["shard"] for s in self.manifest["shards"]}
            missing = set(res.accepted) - shard_ids
            if missing:
                raise fmt.FormatError(f"view lists shards {sorted(missing)[:10]} that the parent dataset does not have")
            flags = []
            for i, (_, ids, _) in enumerate(self.pieces):
                f = np.zeros(int(self.sizes[i]), bool)
                mine = [k for k in ids if k in res.accepted]
                if mine:
                    if res.accepted.version == 1:
                        rows = np.concatenate([res.accepted[k] for k in mine])
                    else:
                        rows = fmt.decode_many([res.accepted.raw[str(k)] for k in mine], res.accepted.where)[0]
                    local = rows - self.starts[i]
                    f[local[(local >= 0) & (local < f.size)]] = True
                flags.append(f)
            bits = RowBits.of(self, flags)
            if bits.total != res.view["samples"]:
                raise fmt.FormatError(f"view accepts {res.view['samples']} rows but only {bits.total} exist in the "
                                      "parent's index")
            self._bases = bits
        return self._bases

    def base(self, i: int) -> np.ndarray:
        """Piece i's input flags (the view's rows, or every row)."""
        b = self.bases()
        return np.ones(int(self.sizes[i]), bool) if b is None else b.piece(i)
