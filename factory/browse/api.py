"""`factory browse`'s questions as plain functions over a dataset's index (testable without a server).

A `Browser` opens a dataset or view once and reads its index lazily, a piece at a time, only the columns a
question needs (`browse.lazy`, `browse.queries`); the page only ever receives one page of rows. A filter is
exactly `factory filter --where`: parsed and type-checked by `views.predicate`, evaluated by
`views.views.apply_steps`, its counts those `factory filter` prints (`dataset.info.format_filter_line`), and
a saved filter is the view file `factory filter` writes (`views.views.view_of`, `write_view`).
"""
from __future__ import annotations

import math
import os
import posixpath
import re
import threading
from collections import OrderedDict

import numpy as np

from factory import format as fmt
from factory.browse import latentmap as lmap
from factory.browse import named as nm
from factory.browse import queries as qs
from factory.browse import samples as smp
from factory.browse.lazy import LazyIndex
from factory.dataset.info import format_filter_line
from factory.format import FactoryError
from factory.views.predicate import check_types, evaluate, parse_where
from factory.views.views import FilterSpec, check_steps, view_of, view_predicate, write_view

SHOW = ("accepted", "rejected", "all")
MAX_PAGE = 500
HIST_BINS = qs.HIST_BINS
BOOKKEEPING = ("row", "shard", "tar_offset", "tar_size")  # columns the page draws no histogram of
FILTER_BYTES = 64 << 20  # filters kept: their accepted rows' bits (12.5 MB at 100M rows)
ORDER_BYTES = 32 << 20  # sorted orders kept: 8 bytes a row
MAP_BYTES = 2 << 20  # one map's drawn points (rows and x, y)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")


def jsonable(v):
    """A value as JSON can hold it: NaN and infinities become None, numpy scalars plain numbers."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return jsonable(v.item())
    return v


def default_views_dir(url: str) -> str:
    """Where saved views go unless told: the folder holding the dataset (or the view file)."""
    u = url.rstrip("/")
    if fmt.is_remote_url(u):
        return posixpath.dirname(u)
    return os.path.dirname(os.path.abspath(u))


class Filtered:
    """One filter evaluated over the index: its steps, the CLI's counts and line, its accepted rows as bits."""

    def __init__(self, where: str, steps: list, refs: dict, summary: dict, *, bits, key=None):
        self.where = where
        self.key = where if key is None else key
        self.steps, self.refs = steps, refs  # refs: the ``#name`` columns -> their rows
        self.summary = summary
        self.bits = bits
        self.line = format_filter_line(summary)
        self.nbytes = bits.nbytes + sum(r.nbytes for r in refs.values())


class Browser:
    """A dataset or view opened for browsing: its index read lazily a piece at a time (`browse.lazy`), samples
    by key; what is kept (filters, sorted orders, histograms, read columns, maps) is bounded in bytes."""

    def __init__(self, url: str, *, allow_remote_shards: bool = False, views_dir: str | None = None):
        import pyarrow as pa

        self.url = url
        self.res = fmt.open_dataset(url, allow_remote_shards=allow_remote_shards)
        self.views_dir = views_dir or default_views_dir(url)
        self.index = LazyIndex(self.res)
        schema = self.index.schema
        self.columns = [f.name for f in schema if not pa.types.is_nested(f.type)]
        self.spans = None  # the columns of a sample's byte range where the index records them
        if fmt.has_offsets(self.res.manifest) and set(fmt.OFFSET_COLUMNS) <= set(self.columns):
            self.spans = fmt.OFFSET_COLUMNS
        self.reader = smp.SampleReader(self.res)
        self._filters: OrderedDict[str, Filtered] = OrderedDict()
        self._orders: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._hists: OrderedDict[tuple, dict] = OrderedDict()
        self._ranges: dict[str, tuple] = {}
        self._maps: OrderedDict[str, tuple] = OrderedDict()
        self._lock = threading.Lock()
        self._scan = threading.Lock()  # one scan of the index at a time: memory holds its pieces in flight
        self.named = nm.Named(self.views_dir, fmt.parent_ids(self.res.manifest))
        self.kinds = {c: {"bool": "bool", "number": "number"}.get(qs.kind_of(schema.field(c).type), "string")
                      for c in self.columns}
        self.view_steps = self._view_steps()
        self.index.bases()  # a view's rows, checked against its count

    # ------------------------------------------------------------ what the page is about
    def meta(self) -> dict:
        m, v = self.res.manifest, self.res.view
        return jsonable({
            "url": self.url, "kind": "view" if v is not None else "dataset", "dataset_id": m["dataset_id"],
            "view_id": v["view_id"] if v is not None else None, "predicate": v.get("predicate") if v else None,
            "samples": self.res.samples, "candidates": self.index.n, "shards": len(m["shards"]),
            "columns": self.kinds, "image": fmt.image_member(m), "resolution": m.get("resolution"),
            "relabelled": "teacher_iou" in self.columns, "views_dir": self.views_dir,
            "view_filters": [n for n, _ in self.view_steps] if self.view_steps is not None else ["view"],
            "map_methods": lmap.methods(), "key_width": len(fmt.sample_key(0)),
        })

    def _view_steps(self):
        """For a view: its filters as steps (names as `factory filter` counts them; earlier views of its lineage
        as ``lineage[i]``), so a tile says which filter rejected it; None when they cannot be evaluated."""
        v = self.res.view
        if v is None:
            return []
        lineage = v.get("lineage") or []
        try:
            steps = [(f"lineage[{i}]", parse_where(s["predicate"])) for i, s in enumerate(lineage[:-1])]
            steps += FilterSpec(**(v.get("filters") or {})).steps()
            for _, node in steps:
                check_types(node, self.index.schema)
        except (TypeError, FactoryError):  # filters of another version: the view as one filter
            return None
        return steps

    def _remember(self, cache: OrderedDict, key, value, *, budget: int, size: int) -> None:
        """Keep `value` under `key`: at most 8 entries and `budget` bytes (the newest always kept)."""
        with self._lock:
            cache[key] = (value, size)
            cache.move_to_end(key)
            while len(cache) > 8 or (len(cache) > 1 and sum(s for _, s in cache.values()) > budget):
                cache.popitem(last=False)

    def _recall(self, cache: OrderedDict, key):
        with self._lock:
            hit = cache.get(key)
            if hit is not None:
                cache.move_to_end(key)
                return hit[0]
        return None

    # ------------------------------------------------------------ filters
    def filtered(self, where: str = "") -> Filtered:
        """`factory filter URL --where WHERE` evaluated over the index a piece at a time (cached; PredicateError
        when it does not parse or fit the index)."""
        import pyarrow as pa

        where = (where or "").strip()
        parts = nm.split_refs(where)
        refs = sorted({s for k, s in parts if k == "ref"})
        key = (where, self.named.generation) if refs else where
        hit = self._recall(self._filters, key)
        if hit is not None:
            return hit
        if refs:
            col = {name: f"__ref{i}" for i, name in enumerate(refs)}
            node = parse_where("".join(s if k == "text" else col[s] for k, s in parts))
            schema = self.index.schema
            for name in refs:
                schema = schema.append(pa.field(col[name], pa.bool_()))
            if check_types(node, schema) != "bool":
                raise FactoryError("--where: the filter is not a condition (compare it, e.g. 'fg_ratio < 0.3')")
            steps, rows, predicate = [("where", node)], {col[n]: self.named.rows(n) for n in refs}, where
        else:
            spec = FilterSpec(where=where or None)
            steps = spec.steps()
            check_steps(self.res, steps)
            rows, predicate = {}, view_predicate(self.res, spec)[1]
        with self._scan:
            hit = self._recall(self._filters, key)
            if hit is not None:
                return hit
            counts, rejected, in_turn, bits = qs.evaluate_filter(self.index, steps, rows, where or "every row")
        if self.res.view is not None and counts["input"] != self.res.view["samples"]:
            raise fmt.FormatError(f"{self.url}: view accepts {self.res.view['samples']} rows but only "
                                  f"{counts['input']} exist in the parent's index")
        summary = {"samples": counts["accepted"], "counts": counts, "predicate": predicate,
                   "rejected": rejected, "rejected_in_turn": in_turn}
        f = Filtered(where, steps, rows, summary, bits=bits, key=key)
        self._remember(self._filters, key, f, budget=FILTER_BYTES, size=f.nbytes)
        return f

    def expand(self, where: str) -> str:
        """The filter with each ``#name`` written as its explicit rows: the --where `factory filter` runs."""
        parts = nm.split_refs((where or "").strip())
        if len(parts) == 1 and parts[0][0] == "ref":  # "#name" alone: exactly its explicit rows
            return nm.rows_where(self.named.rows(parts[0][1]))
        return "".join(s if k == "text" else f"({nm.rows_where(self.named.rows(s))})" for k, s in parts)

    def counts(self, where: str = "") -> dict:
        f = self.filtered(where)
        return {"where": f.where, "line": f.line, **jsonable(f.summary)}

    def _page_rows(self, f: Filtered, show: str, sort: str, *, descending: bool, offset: int, limit: int) -> np.ndarray:
        """The rows of one page: in row order straight from the bits; sorted by a column, from the cached
        first rows of that order (the pieces' top k merged, computed again deeper when a page needs it)."""
        if sort == "row" and not descending:
            if show == "all":
                return np.arange(offset, min(offset + limit, self.index.n), dtype=np.int64)
            return f.bits.select(offset, limit, invert=show == "rejected")
        total = self._total(f, show)
        if sort == "row":  # descending row order: the same rows counted from the end
            hi = max(0, total - offset)
            lo = max(0, hi - limit)
            rows = (np.arange(lo, hi, dtype=np.int64) if show == "all"
                    else f.bits.select(lo, hi - lo, invert=show == "rejected"))
            return rows[::-1].copy()
        qs.check_depth(offset, limit)
        key = (f.key, show, sort, descending)
        hit = self._recall(self._orders, key)
        if hit is None or (len(hit) < offset + limit and len(hit) < total):
            k = min(qs.SORT_DEPTH, max(4 * (offset + limit), 1024))
            with self._scan:
                hit = qs.sorted_rows(self.index, qs.selected(f.bits, show), sort, descending=descending, k=k,
                                     what=f"sort by {sort}")
            self._remember(self._orders, key, hit, budget=ORDER_BYTES, size=hit.nbytes)
        return hit[offset: offset + limit]

    def _total(self, f: Filtered, show: str) -> int:
        return f.bits.total if show == "accepted" else self.index.n - f.bits.total if show == "rejected" else \
            self.index.n

    def verdicts(self, f: Filtered, rows: np.ndarray, table) -> list[dict]:
        """Accepted, or which filters rejected each of `rows` (the view's, then the filter box's), evaluated on
        the page's own index rows `table`."""
        import pyarrow as pa

        acc = f.bits.at(rows)
        base = np.ones(rows.size, bool) if self.index.bases() is None else self.index.bases().at(rows)
        t = table
        for col, refs in f.refs.items():
            t = t.append_column(col, pa.array(np.isin(rows, refs)))
        by_where = {name: evaluate(node, t).to_numpy(zero_copy_only=False).astype(bool) for name, node in f.steps}
        by_view = {"view": base} if self.view_steps is None else \
            {name: evaluate(node, table).to_numpy(zero_copy_only=False).astype(bool) for name, node in self.view_steps}
        if by_view and not np.array_equal(np.logical_and.reduce(list(by_view.values())), base):
            by_view = {"view": base}
        out = []
        for j in range(rows.size):
            v = [n for n, ok in by_view.items() if not ok[j]]
            if not base[j] and not v:
                v = ["view"]
            out.append({"accepted": bool(acc[j]), "rejected_by_view": v,
                        "rejected_by": [n for n, ok in by_where.items() if not ok[j]]})
        return out

    def rows(self, where: str = "", *, show: str = "accepted", sort: str = "row", descending: bool = False,
             offset: int = 0, limit: int = 48) -> dict:
        """One page of rows of the filter's accepted (or rejected, or all) rows, sorted by an index column."""
        if show not in SHOW:
            raise FactoryError(f"show must be one of {', '.join(SHOW)}, got {show!r}")
        if sort not in self.columns:
            raise FactoryError(f"cannot sort by {sort!r}: sort by one of {', '.join(self.columns)}")
        if not (0 <= offset and 1 <= limit <= MAX_PAGE):
            raise FactoryError(f"offset must be >= 0 and limit 1..{MAX_PAGE}, got {offset} and {limit}")
        f = self.filtered(where)
        page = self._page_rows(f, show, sort, descending=descending, offset=offset, limit=limit)
        table = self.index.take(page, self.columns)
        rows = [{**jsonable(v), **verdict} for v, verdict in zip(table.to_pylist(), self.verdicts(f, page, table))]
        return {"counts": self.counts(where), "show": show, "sort": sort, "descending": descending,
                "offset": offset, "limit": limit, "total": self._total(f, show), "rows": rows}

    def histogram(self, column: str, where: str = "", bins: int = HIST_BINS) -> dict:
        """Counts of an index column's values among the accepted and the other candidates of the filter: the
        first asked of a filter counts every column the page shows in one pass over the index."""
        if column not in self.columns:
            raise FactoryError(f"no index column {column!r}: one of {', '.join(self.columns)}")
        f = self.filtered(where)
        key = (f.key, bins)
        got = self._recall(self._hists, key) or {}
        if column not in got:
            cols = [column] if column not in self._page_columns() else self._page_columns()
            with self._scan:
                got = self._recall(self._hists, key) or {}
                if column not in got:
                    todo = [c for c in cols if c not in self._ranges]
                    if todo:
                        self._ranges.update(qs.column_ranges(self.index, todo))
                    got = {**got, **qs.histograms(self.index, [c for c in cols if c not in got], self._ranges,
                                                  f.bits, what=f"histograms of {where or 'every row'}", bins=bins)}
            self._remember(self._hists, key, got, budget=1 << 20, size=len(got))
        h = got[column]
        if "error" in h:
            raise FactoryError(h["error"])
        return h

    def _page_columns(self) -> list[str]:
        """The columns the page draws a histogram or checkboxes of (as app.js picks them)."""
        return [c for c, k in self.kinds.items() if (k == "number" and c not in BOOKKEEPING) or k == "bool"
                or (k == "string" and c != "key")]

    # ------------------------------------------------------------ samples
    def _index_row(self, key: str, columns: list[str]) -> dict:
        """The index row of sample `key` (only `columns`); FactoryError unless it is a row of this index."""
        if not isinstance(key, str) or not key.isascii() or not key.isdigit() or len(key) > 20:
            raise FactoryError(f"no sample {key!r}: keys are the index's numeric keys")
        row = fmt.key_row(key)
        if not 0 <= row < self.index.n:
            raise FactoryError(f"no sample {key!r} in this dataset's index")
        got = self.index.take([row], list(dict.fromkeys(["key", "shard", *columns]))).to_pylist()[0]
        if got["key"] != key:
            raise FactoryError(f"no sample {key!r} in this dataset's index")
        return got

    def locate(self, key: str) -> int:
        """Index row of sample `key`; FactoryError unless it is a row of this dataset's index."""
        return int(self._index_row(key, ["row"])["row"])

    def members(self, key: str) -> dict[str, bytes]:
        r = self._index_row(key, list(self.spans or ()))
        span = None if self.spans is None else tuple(int(r[c]) for c in self.spans)
        return self.reader.members(key, int(r["shard"]), span)

    def tile(self, key: str, show: str = "mask") -> bytes:
        return smp.tile(self.members(key), self.res.manifest, key, show=show)

    def picture(self, key: str, which: str) -> tuple[bytes, str]:
        """A picture member of sample `key` as stored (bytes, content type)."""
        ext = smp.picture_ext(self.res.manifest, which)
        data = self.members(key).get(ext)
        if data is None:
            raise FactoryError(f"sample {key} has no {which} ({key}.{ext})")
        with fmt.open_image_checked(data, f"sample {key} {which}"):
            pass
        return data, smp.content_type(ext)

    def sample(self, key: str, where: str = "") -> dict:
        """A sample's detail: its index row (every column), JSON member, latent norm, members, verdict."""
        self._index_row(key, [])
        members = self.members(key)
        row = fmt.key_row(key)
        table = self.index.take([row], self.index.schema.names)
        index_row = table.to_pylist()[0]
        pictures = [w for w in smp.PICTURES if smp.picture_ext(self.res.manifest, w) in members]
        f = self.filtered(where)
        return jsonable({"key": key, "index": index_row, "meta": smp.meta_of(members),
                         "latent": smp.latent_summary(members, key), "pictures": pictures,
                         "members": {ext: len(b) for ext, b in sorted(members.items())},
                         **self.verdicts(f, np.array([row], np.int64), table)[0]})

    # ------------------------------------------------------------ saving the filter
    def view_path(self, name: str) -> str:
        """Where a view called `name` is saved: NAME.json inside the views folder (nowhere else)."""
        name = (name or "").strip()
        if name.endswith(".json"):
            name = name[:-5]
        if not _NAME.match(name) or ".." in name:
            raise FactoryError(f"view name {name!r}: use letters, digits, '.', '_' or '-' (no folders), "
                               "e.g. small-objects")
        if fmt.is_remote_url(self.views_dir):
            return fmt.join(self.views_dir, name + ".json")
        return os.path.join(self.views_dir, name + ".json")

    def save_view(self, name: str, where: str = "") -> dict:
        """Write the filter as a view file, the bytes `factory filter URL --where WHERE --out PATH` writes."""
        out = self.view_path(name)
        self.filtered(where)  # the filter box's error, before anything is written
        spec = FilterSpec(where=self.expand(where) or None)
        with self._scan:
            view = view_of(self.url, self.res, spec, view_url=out)
        try:
            written = write_view(view, out)
        except OSError as e:
            raise FactoryError(f"cannot write {out} ({e.strerror or e}); choose another --views-dir") from None
        self.named.changed()
        return {"path": out, "view_id": view["view_id"], "written": written, "samples": view["samples"],
                "line": format_filter_line(view)}

    # ------------------------------------------------------------ tags and the map's selection
    def tag(self, name: str, rows, mode: str = "add") -> dict:
        """Tag `rows` NAME: the view of explicit rows NAME.json gets them (``add``), loses them (``remove``)
        or becomes them (``set``); the file is what `factory filter URL --where "row in (...)"` writes."""
        if mode not in ("add", "remove", "set"):
            raise FactoryError(f"tag mode must be add, remove or set, got {mode!r}")
        out = self.view_path(name)
        name = os.path.basename(out)[:-5]
        if name == nm.SELECTION:
            raise FactoryError("'selection' names the map's selection: choose another tag name")
        rows = np.asarray(rows, np.int64)
        if rows.size and not self._inputs(rows).all():
            raise FactoryError(f"tag {name}: some rows are not samples of {self.url}")
        old = self.named.view(name)
        if old is not None and not nm.explicit_rows(old):
            raise FactoryError(f"{name}.json is a saved filter, not a tag: choose another tag name")
        have = self.named.rows(name) if old is not None else np.zeros(0, np.int64)
        new = np.union1d(have, rows) if mode == "add" else np.setdiff1d(have, rows) if mode == "remove" else rows
        if new.size > nm.MAX_SELECTION:
            raise FactoryError(f"a tag holds at most {nm.MAX_SELECTION:,} samples")
        spec = FilterSpec(where=nm.rows_where(new))
        with self._scan:
            view = view_of(self.url, self.res, spec, view_url=out)
        try:
            written = write_view(view, out, overwrite=True)
        except OSError as e:
            raise FactoryError(f"cannot write {out} ({e.strerror or e}); choose another --views-dir") from None
        self.named.changed()
        return {"name": name, "path": out, "view_id": view["view_id"], "written": written,
                "samples": view["samples"]}

    def select(self, rows) -> dict:
        """The map's selection (``#selection`` in the filter box)."""
        return {"selected": self.named.select(rows)}

    def views(self) -> dict:
        """The views folder's views of this dataset (tags marked) and the selection's size."""
        return {"views_dir": self.views_dir, "views": self.named.listing(),
                "selection": int(self.named.selection.size)}

    def _inputs(self, rows) -> np.ndarray:
        """Whether each of `rows` is a sample of this dataset or view."""
        rows = np.asarray(rows, np.int64)
        bases = self.index.bases()
        return ((rows >= 0) & (rows < self.index.n)) if bases is None else bases.at(rows)

    def compare(self, a: str, b: str) -> dict:
        """Samples of this dataset or view in both views, either, only one and neither (``#a``, ``#b``)."""
        ra, rb = self.named.rows(a), self.named.rows(b)
        ra, rb = ra[self._inputs(ra)], rb[self._inputs(rb)]
        both = int(np.intersect1d(ra, rb, assume_unique=True).size)
        either = int(ra.size + rb.size - both)
        return {"a": a, "b": b, "both": both, "either": either, "only_a": int(ra.size) - both,
                "only_b": int(rb.size) - both, "neither": int(self.res.samples) - either}

    # ------------------------------------------------------------ the latent map
    def _map(self, method: str):
        """(rows of the drawn points, their x, y): the input rows' deterministic sample (`latentmap.sample`) and
        its projection (last two kept)."""
        hit = self._recall(self._maps, method)
        if hit is not None:
            return hit
        n = int(self.res.samples)
        pick = lmap.sample(n)
        bases = self.index.bases()
        if bases is None:
            rows = pick.astype(np.int64)
        else:  # the k-th accepted rows of the view, a piece at a time
            ends = np.cumsum(bases.counts)
            owner = np.searchsorted(ends, pick, side="right")
            rows = np.zeros(pick.size, np.int64)
            for i in np.unique(owner).tolist():
                sel = owner == i
                local = np.flatnonzero(bases.piece(i))
                rows[sel] = local[pick[sel] - (ends[i - 1] if i else 0)] + self.index.starts[i]
        v = self.res.view
        xy = lmap.projection(self.res.root, rows, dataset_id=self.res.manifest["dataset_id"],
                             view_id=v["view_id"] if v else None, method=method)
        hit = (rows, xy)
        self._remember(self._maps, method, hit, budget=2 * MAP_BYTES, size=rows.nbytes + xy.nbytes)
        with self._lock:
            while len(self._maps) > 2:
                self._maps.popitem(last=False)
        return hit

    def latent_map(self, method: str = "pca") -> dict:
        """The drawn points of the latent map: their rows and x, y (little-endian int32 / float32, base64)."""
        rows, xy = self._map(method)
        return {"method": method, "points": int(rows.size), "total": int(self.res.samples),
                "rows": lmap.b64(rows.astype("<i4")), "x": lmap.b64(xy[:, 0].astype("<f4")),
                "y": lmap.b64(xy[:, 1].astype("<f4"))}

    def map_colours(self, column: str, where: str = "", method: str = "pca") -> dict:
        """Column `column` at the map's points, and which of them the filter accepts (packed bits)."""
        if column not in self.columns:
            raise FactoryError(f"cannot colour by {column!r}: use one of {', '.join(self.columns)}")
        rows, _ = self._map(method)
        key = ("colour", method, column)
        values = self.index.cache.value(key)
        if values is None:
            with self._scan:
                values = self.index.take(rows, [column]).column(column).to_numpy(zero_copy_only=False)
            self.index.cache.put(key, values, values.nbytes if values.dtype != object else 64 * values.size)
        acc = self.filtered(where).bits.at(rows)
        return {**lmap.colours(values, self.kinds[column]), "column": column,
                "accepted": lmap.b64(np.packbits(acc, bitorder="little"))}
