"""`factory browse`'s questions over a lazily read index (`browse.lazy.LazyIndex`), a piece at a time.

A filter is `factory filter --where`: its steps evaluated by `views.views.apply_steps` on each piece's
needed columns, its counts summed as `factory filter` sums its parts' (`format_filter_line` prints them);
what is kept of it is those counts and its accepted rows as bits (`RowBits`). A sorted page is the bounded
top-k of each piece merged (at most `SORT_DEPTH` rows deep); a histogram has fixed bins (the column's range,
read once) and is counted piece by piece, every column the page shows in one pass.
"""
from __future__ import annotations

import threading

import numpy as np

from factory.browse.lazy import LazyIndex, RowBits
from factory.format import FactoryError
from factory.views.predicate import columns_of
from factory.views.views import apply_steps, summed_counts

SORT_DEPTH = 1_000_000  # rows of a sorted order a page may reach (16 bytes a row while merging)
HIST_BINS = 30
MAX_CATEGORIES = 50  # values of a string column shown as checkboxes


def with_refs(index: LazyIndex, i: int, table, refs: dict[str, np.ndarray]):
    """Piece i's table with a bool column per ``#name`` reference (column name -> its sorted rows)."""
    import pyarrow as pa

    n = int(index.sizes[i])
    cols = {} if table is None else {c: table.column(c) for c in table.column_names}
    for col, rows in refs.items():
        local = rows[(rows >= index.starts[i]) & (rows < index.starts[i] + n)] - index.starts[i]
        flags = np.zeros(n, bool)
        flags[local] = True
        cols[col] = pa.array(flags)
    return pa.table(cols)


def evaluate_filter(index: LazyIndex, steps: list, refs: dict[str, np.ndarray], what: str):
    """`steps` over every piece: (counts, rejected per step, steps in turn, accepted rows as RowBits)."""
    needed = set().union(*(columns_of(node) for _, node in steps)) - set(refs) if steps else set()
    cols = sorted(needed) or (["row"] if steps and not refs else [])

    def piece(i, table):
        if refs:
            table = with_refs(index, i, table, refs)
        out = apply_steps(steps, table, index.base(i))
        return out.counts(), out.rejected, out.in_turn, np.packbits(out.mask, bitorder="little"), int(out.mask.sum())

    pieces = index.scan(cols, piece, what)
    counts, rejected, in_turn = summed_counts(steps, [p[:3] for p in pieces])
    bits = RowBits(index, [p[3] for p in pieces], [p[4] for p in pieces])
    return counts, rejected, in_turn, bits


def selected(bits: RowBits, show: str):
    """Piece i's flags of the rows a page shows: the accepted, the others, or all."""
    def flags(i):
        if show == "all":
            return np.ones(int(bits.index.sizes[i]), bool)
        f = bits.piece(i)
        return f if show == "accepted" else ~f
    return flags


def sorted_rows(index: LazyIndex, flags, sort: str, *, descending: bool, k: int, what: str) -> np.ndarray:
    """The first `k` rows among those `flags` marks, ordered by `sort` (ties by row): each piece's top k,
    merged as they come (memory: 2k rows)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    keys = [(sort, "descending" if descending else "ascending")] + ([] if sort == "row" else [("row", "ascending")])
    cols = [sort] if sort == "row" else [sort, "row"]
    best: list = [None]
    lock = threading.Lock()

    def top(t):
        return t.take(pc.select_k_unstable(t, k, sort_keys=keys)) if t.num_rows > k else t

    def piece(i, table):
        t = top(table.select(cols).filter(pa.array(flags(i))))
        with lock:
            best[0] = t if best[0] is None else top(pa.concat_tables([best[0], t]))

    index.scan(cols, piece, what)
    if best[0] is None:
        return np.zeros(0, np.int64)
    t = best[0]
    return t.column("row").take(pc.sort_indices(t, sort_keys=keys)).to_numpy().astype(np.int64)


def kind_of(t) -> str:
    import pyarrow as pa

    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return "number"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        return "category"
    return "other"


def _values(table, c: str) -> np.ndarray:
    return table.column(c).to_numpy(zero_copy_only=False)


def column_ranges(index: LazyIndex, columns: list[str]) -> dict[str, tuple]:
    """Per column, what fixes its histogram's bins: a number column's finite (min, max) (None when it has no
    finite value; from the parts' statistics where they say), a string column's sorted values (None past
    MAX_CATEGORIES); one pass over the pieces for what statistics do not say."""
    import pyarrow.compute as pc

    kinds = {c: kind_of(index.schema.field(c).type) for c in columns}
    ranges: dict[str, tuple] = {}
    for c in columns:
        r = index.stats_range(c) if kinds[c] == "number" else None
        if r is not None:
            ranges[c] = ("number", r)
    cols = [c for c in columns if kinds[c] in ("number", "category") and c not in ranges]

    def piece(i, table):
        out = {}
        for c in cols:
            if kinds[c] == "number":
                x = _values(table, c)
                x = x.astype(np.float64)
                x = x[np.isfinite(x)]
                out[c] = (float(x.min()), float(x.max())) if x.size else None
            else:
                u = pc.unique(table.column(c))
                out[c] = {str(v) for v in u.to_pylist()} if len(u) <= MAX_CATEGORIES else None
        return out

    pieces = index.scan(cols, piece, "column ranges") if cols else []
    for c in cols:
        got = [p[c] for p in pieces]
        if kinds[c] == "number":
            got = [g for g in got if g is not None]
            ranges[c] = ("number", (min(g[0] for g in got), max(g[1] for g in got)) if got else None)
        elif any(g is None for g in got) or len(set().union(*got)) > MAX_CATEGORIES:
            ranges[c] = ("category", None)
        else:
            ranges[c] = ("category", sorted(set().union(*got)))
    for c in columns:
        if kinds[c] not in ("number", "category"):
            ranges[c] = (kinds[c], None)
    return ranges


def bin_of(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bin of each value among `edges` (evenly spaced) as ``numpy.histogram`` counts it (the last bin
    closed, values outside the range or not finite: len(edges) - 1)."""
    nb = len(edges) - 1
    lo, hi = edges[0], edges[-1]
    ok = np.isfinite(x) & (x >= lo) & (x <= hi)
    b = np.full(x.shape[0], nb, np.int64)
    xo = x[ok]
    i = ((xo - lo) * (nb / (hi - lo))).astype(np.int64)
    i[i == nb] -= 1
    i[xo < edges[i]] -= 1  # rounding: the edges decide, as numpy's own correction does
    up = (xo >= edges[i + 1]) & (i != nb - 1)
    i[up] += 1
    b[ok] = i
    return b


def histograms(index: LazyIndex, columns: list[str], ranges: dict[str, tuple], accepted: RowBits, *,
               what: str, bins: int = HIST_BINS) -> dict[str, dict]:
    """Histograms of `columns` among the accepted and the other rows, counted piece by piece in one pass;
    a column that has none maps to {"error": why}."""
    import pyarrow as pa
    import pyarrow.compute as pc

    out: dict[str, dict] = {}
    plan: dict[str, tuple] = {}
    for c in columns:
        t = index.schema.field(c).type
        kind, r = ranges[c]
        if kind == "bool":
            plan[c] = ("bool", None)
        elif kind == "category":
            if r is None:
                out[c] = {"error": f"column {c!r} has more than {MAX_CATEGORIES} values: no histogram over more "
                                   f"than {MAX_CATEGORIES}"}
            else:
                plan[c] = ("category", r)
        elif kind == "number":
            lo, hi = r if r is not None else (0.0, 1.0)
            integer = bool(pa.types.is_integer(t) and hi - lo < bins)
            edges = np.arange(lo - 0.5, hi + 1.5) if integer else np.linspace(lo, hi if hi > lo else lo + 1.0,
                                                                               bins + 1)
            plan[c] = ("number", (integer, edges))
        else:
            out[c] = {"error": f"column {c!r} ({t}) has no histogram: choose a number or bool column"}

    def piece(i, table):
        acc = accepted.piece(i)
        res = {}
        for c, (kind, arg) in plan.items():
            if kind == "bool":
                x = _values(table, c).astype(bool)
                res[c] = (np.array([(acc & ~x).sum(), (acc & x).sum()]), np.array([(~acc & ~x).sum(), (~acc & x).sum()]),
                          0)
            elif kind == "category":
                codes = pc.index_in(pc.cast(table.column(c), pa.string()), value_set=pa.array(arg, pa.string()))
                codes = pc.fill_null(codes, 0).to_numpy()
                res[c] = (np.bincount(codes[acc], minlength=len(arg)), np.bincount(codes[~acc], minlength=len(arg)), 0)
            else:
                x = _values(table, c).astype(np.float64)
                b = bin_of(x, arg[1])
                nb = len(arg[1]) - 1
                counts = np.bincount(b + (nb + 1) * acc, minlength=2 * (nb + 1))
                res[c] = (counts[nb + 1:2 * nb + 1], counts[:nb], int(np.count_nonzero(b == nb)))
        return res

    pieces = index.scan(sorted(plan), piece, what) if plan else []
    for c, (kind, arg) in plan.items():
        a = sum((p[c][0] for p in pieces), np.zeros(0 if not pieces else len(pieces[0][c][0]), np.int64))
        r = sum((p[c][1] for p in pieces), np.zeros_like(a))
        if not pieces:
            size = 2 if kind == "bool" else len(arg) if kind == "category" else len(arg[1]) - 1
            a = r = np.zeros(size, np.int64)
        if kind == "bool":
            out[c] = {"column": c, "kind": "bool", "labels": ["false", "true"], "accepted": a.tolist(),
                      "rejected": r.tolist()}
        elif kind == "category":
            out[c] = {"column": c, "kind": "category", "labels": list(arg), "accepted": a.tolist(),
                      "rejected": r.tolist()}
        else:
            out[c] = {"column": c, "kind": "number", "integer": arg[0], "edges": [float(e) for e in arg[1]],
                      "accepted": a.tolist(), "rejected": r.tolist(), "missing": sum(p[c][2] for p in pieces)}
    return out


def check_depth(offset: int, limit: int) -> None:
    if offset + limit > SORT_DEPTH:
        raise FactoryError(f"a sorted order is paged {SORT_DEPTH:,} rows deep (offset {offset:,}): narrow the "
                           "filter, reverse the order or sort by row")
