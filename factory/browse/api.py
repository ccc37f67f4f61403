"""`factory browse`'s questions as plain functions over a dataset's index (testable without a server).

A `Browser` opens a dataset or view once and keeps its index (every column but the list ones) in memory;
the page only ever receives one page of rows. A filter is exactly `factory filter --where`: parsed and
type-checked by `views.predicate`, evaluated by `views.views.apply_steps`, its counts those `factory filter`
prints (`dataset.info.format_filter_line`), and a saved filter is the view file `factory filter` writes
(`views.views.view_from_index`, `write_view`).
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
from factory.browse import samples as smp
from factory.dataset.info import format_filter_line
from factory.dataset.reader import index_schema, load_index
from factory.format import FactoryError
from factory.views.predicate import check_types, evaluate, parse_where
from factory.views.views import (
    FilterSpec,
    apply_steps,
    check_steps,
    input_rows,
    view_from_index,
    view_predicate,
    write_view,
)

SHOW = ("accepted", "rejected", "all")
MAX_PAGE = 500
HIST_BINS = 30
MAX_CATEGORIES = 50  # values of a string column shown as checkboxes
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
    """One filter evaluated over the index: the outcome, the CLI's counts and the line it prints."""

    def __init__(self, where: str, outcome, summary: dict, key=None):
        self.where = where
        self.key = where if key is None else key
        self.outcome = outcome
        self.summary = summary
        self.line = format_filter_line(summary)


class Browser:
    """A dataset or view opened for browsing: its index in memory, samples read lazily by key."""

    def __init__(self, url: str, *, allow_remote_shards: bool = False, views_dir: str | None = None):
        import pyarrow as pa

        self.url = url
        self.res = fmt.open_dataset(url, allow_remote_shards=allow_remote_shards)
        self.views_dir = views_dir or default_views_dir(url)
        schema = index_schema(self.res.root, self.res.manifest)
        self.columns = [f.name for f in schema if not pa.types.is_nested(f.type)]
        table = load_index(self.res.root, self.res.manifest, columns=self.columns)
        if table is None:
            table = pa.table({c: pa.array([], schema.field(c).type) for c in self.columns})
        self.table = table
        self.row_col = table.column("row").to_numpy()
        self.shard_col = table.column("shard").to_numpy()
        self.by_row = np.argsort(self.row_col, kind="stable")
        self.spans = None  # (tar_offset, tar_size) per row where the index records them
        if fmt.has_offsets(self.res.manifest) and set(fmt.OFFSET_COLUMNS) <= set(self.columns):
            self.spans = tuple(table.column(c).to_numpy() for c in fmt.OFFSET_COLUMNS)
        self.base = input_rows(url, self.res, self.row_col)
        self.view_passed = self._view_verdicts()
        self.reader = smp.SampleReader(self.res)
        self._filters: OrderedDict[str, Filtered] = OrderedDict()
        self._orders: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._fragments: OrderedDict[int, object] = OrderedDict()
        self._maps: OrderedDict[str, tuple] = OrderedDict()
        self._lock = threading.Lock()
        self.named = nm.Named(self.views_dir, fmt.parent_ids(self.res.manifest))
        self.kinds = self._kinds()

    # ------------------------------------------------------------ what the page is about
    def _kinds(self) -> dict[str, str]:
        import pyarrow as pa

        kinds = {}
        for name in self.columns:
            t = self.table.schema.field(name).type
            kinds[name] = ("bool" if pa.types.is_boolean(t) else "number" if (pa.types.is_integer(t) or
                           pa.types.is_floating(t)) else "string")
        return kinds

    def meta(self) -> dict:
        m, v = self.res.manifest, self.res.view
        kinds = self.kinds
        return jsonable({
            "url": self.url, "kind": "view" if v is not None else "dataset", "dataset_id": m["dataset_id"],
            "view_id": v["view_id"] if v is not None else None, "predicate": v.get("predicate") if v else None,
            "samples": self.res.samples, "candidates": self.table.num_rows, "shards": len(m["shards"]),
            "columns": kinds, "image": fmt.image_member(m), "resolution": m.get("resolution"),
            "relabelled": "teacher_iou" in self.columns, "views_dir": self.views_dir,
            "view_filters": list(self.view_passed), "map_methods": lmap.methods(),
            "key_width": len(fmt.sample_key(0)),
        })

    def _view_verdicts(self) -> dict[str, np.ndarray]:
        """For a view: per row, whether each of its filters passes (names as `factory filter` counts them;
        earlier views of its lineage as ``lineage[i]``), so a tile says which filter rejected it."""
        v = self.res.view
        if v is None:
            return {}
        lineage = v.get("lineage") or []
        steps = [(f"lineage[{i}]", parse_where(s["predicate"])) for i, s in enumerate(lineage[:-1])]
        try:
            steps += FilterSpec(**(v.get("filters") or {})).steps()
            for _, node in steps:
                check_types(node, self.table.schema)
            out = {name: evaluate(node, self.table).to_numpy(zero_copy_only=False).astype(bool)
                   for name, node in steps}
        except (TypeError, FactoryError):  # filters of another version: the view as one filter
            return {"view": self.base.copy()}
        if out and not np.array_equal(np.logical_and.reduce(list(out.values())), self.base):
            return {"view": self.base.copy()}
        return out

    # ------------------------------------------------------------ filters
    def filtered(self, where: str = "") -> Filtered:
        """`factory filter URL --where WHERE` evaluated on the resident index (cached; PredicateError when
        it does not parse or fit the index)."""
        where = (where or "").strip()
        parts = nm.split_refs(where)
        refs = sorted({s for k, s in parts if k == "ref"})
        key = (where, self.named.generation) if refs else where
        with self._lock:
            hit = self._filters.get(key)
            if hit is not None:
                self._filters.move_to_end(key)
                return hit
        if refs:
            out, predicate = self._with_refs(parts, refs), where
        else:
            spec = FilterSpec(where=where or None)
            steps = spec.steps()
            check_steps(self.res, steps)
            out, predicate = apply_steps(steps, self.table, self.base), view_predicate(self.res, spec)[1]
        counts = out.counts()
        summary = {"samples": counts["accepted"], "counts": counts, "predicate": predicate,
                   "rejected": out.rejected, "rejected_in_turn": out.in_turn}
        f = Filtered(where, out, summary, key)
        with self._lock:
            self._filters[key] = f
            while len(self._filters) > 8:
                self._filters.popitem(last=False)
        return f

    def _with_refs(self, parts: list, refs: list[str]):
        """A filter naming views, tags or the selection (``#name``): each evaluated as a bool column."""
        import pyarrow as pa

        col = {name: f"__ref{i}" for i, name in enumerate(refs)}
        node = parse_where("".join(s if k == "text" else col[s] for k, s in parts))
        table = self.table
        for name in refs:
            table = table.append_column(col[name], pa.array(np.isin(self.row_col, self.named.rows(name))))
        if check_types(node, table.schema) != "bool":
            raise FactoryError("--where: the filter is not a condition (compare it, e.g. 'fg_ratio < 0.3')")
        return apply_steps([("where", node)], table, self.base)

    def expand(self, where: str) -> str:
        """The filter with each ``#name`` written as its explicit rows: the --where `factory filter` runs."""
        parts = nm.split_refs((where or "").strip())
        if len(parts) == 1 and parts[0][0] == "ref":  # "#name" alone: exactly its explicit rows
            return nm.rows_where(self.named.rows(parts[0][1]))
        return "".join(s if k == "text" else f"({nm.rows_where(self.named.rows(s))})" for k, s in parts)

    def counts(self, where: str = "") -> dict:
        f = self.filtered(where)
        return {"where": f.where, "line": f.line, **jsonable(f.summary)}

    def _order(self, f: Filtered, show: str, sort: str, descending: bool) -> np.ndarray:
        import pyarrow.compute as pc

        key = (f.key, show, sort, descending)
        with self._lock:
            hit = self._orders.get(key)
            if hit is not None:
                self._orders.move_to_end(key)
                return hit
        mask = f.outcome.mask
        sel = mask if show == "accepted" else ~mask if show == "rejected" else np.ones(len(mask), bool)
        idx = np.flatnonzero(sel)
        sub = self.table.select([sort] if sort == "row" else [sort, "row"]).take(idx)
        keys = [(sort, "descending" if descending else "ascending")] + ([] if sort == "row" else [("row", "ascending")])
        order = idx[pc.sort_indices(sub, sort_keys=keys).to_numpy()]
        with self._lock:
            self._orders[key] = order
            while len(self._orders) > 8:
                self._orders.popitem(last=False)
        return order

    def verdict(self, f: Filtered, i: int) -> dict:
        """Accepted, or which filters rejected index row position `i` (the view's, then the filter box's)."""
        by_view = [n for n, ok in self.view_passed.items() if not ok[i]]
        by_where = [n for n, ok in f.outcome.passed.items() if not ok[i]]
        if not self.base[i] and not by_view:
            by_view = ["view"]
        return {"accepted": bool(f.outcome.mask[i]), "rejected_by_view": by_view, "rejected_by": by_where}

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
        order = self._order(f, show, sort, descending)
        page = order[offset: offset + limit]
        values = self.table.take(page).to_pylist()
        rows = [{**jsonable(v), **self.verdict(f, int(i))} for v, i in zip(values, page)]
        return {"counts": self.counts(where), "show": show, "sort": sort, "descending": descending,
                "offset": offset, "limit": limit, "total": int(len(order)), "rows": rows}

    def histogram(self, column: str, where: str = "", bins: int = HIST_BINS) -> dict:
        """Counts of an index column's values among the accepted and the other candidates of the filter."""
        import pyarrow as pa

        if column not in self.columns:
            raise FactoryError(f"no index column {column!r}: one of {', '.join(self.columns)}")
        f = self.filtered(where)
        t = self.table.schema.field(column).type
        acc = f.outcome.mask
        if pa.types.is_boolean(t):
            x = self.table.column(column).to_numpy(zero_copy_only=False).astype(bool)
            return {"column": column, "kind": "bool", "labels": ["false", "true"],
                    "accepted": [int((acc & ~x).sum()), int((acc & x).sum())],
                    "rejected": [int((~acc & ~x).sum()), int((~acc & x).sum())]}
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
            x = self.table.column(column).to_numpy(zero_copy_only=False).astype(str)
            labels, codes = np.unique(x, return_inverse=True)
            if labels.size > MAX_CATEGORIES:
                raise FactoryError(f"column {column!r} has {labels.size:,} values: no histogram over more than "
                                   f"{MAX_CATEGORIES}")
            return {"column": column, "kind": "category", "labels": labels.tolist(),
                    "accepted": np.bincount(codes[acc], minlength=labels.size).tolist(),
                    "rejected": np.bincount(codes[~acc], minlength=labels.size).tolist()}
        if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
            raise FactoryError(f"column {column!r} ({t}) has no histogram: choose a number or bool column")
        x = self.table.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
        ok = np.isfinite(x)
        lo, hi = (float(x[ok].min()), float(x[ok].max())) if ok.any() else (0.0, 1.0)
        integer = bool(pa.types.is_integer(t) and hi - lo < bins)
        if integer:
            edges = np.arange(lo - 0.5, hi + 1.5)
        else:
            edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
        return {"column": column, "kind": "number", "integer": integer, "edges": [float(e) for e in edges],
                "accepted": np.histogram(x[ok & acc], edges)[0].tolist(),
                "rejected": np.histogram(x[ok & ~acc], edges)[0].tolist(),
                "missing": int((~ok).sum())}

    # ------------------------------------------------------------ samples
    def locate(self, key: str) -> int:
        """Index position of sample `key`; FactoryError unless it is a row of this dataset's index."""
        if not isinstance(key, str) or not key.isascii() or not key.isdigit() or len(key) > 20:
            raise FactoryError(f"no sample {key!r}: keys are the index's numeric keys")
        row = fmt.key_row(key)
        j = int(np.searchsorted(self.row_col, row, sorter=self.by_row))
        if j >= len(self.by_row) or self.row_col[self.by_row[j]] != row:
            raise FactoryError(f"no sample {key!r} in this dataset's index")
        i = int(self.by_row[j])
        if self.table.column("key")[i].as_py() != key:
            raise FactoryError(f"no sample {key!r} in this dataset's index")
        return i

    def members(self, key: str) -> dict[str, bytes]:
        i = self.locate(key)
        span = None if self.spans is None else (int(self.spans[0][i]), int(self.spans[1][i]))
        return self.reader.members(key, int(self.shard_col[i]), span)

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

    def _fragment(self, shard: int):
        """Every column of one shard's index fragment (the last few kept)."""
        with self._lock:
            hit = self._fragments.get(shard)
        if hit is None:
            hit = load_index(self.res.root, self.res.manifest, shards=[shard])
            with self._lock:
                self._fragments[shard] = hit
                while len(self._fragments) > 4:
                    self._fragments.popitem(last=False)
        return hit

    def sample(self, key: str, where: str = "") -> dict:
        """A sample's detail: its index row (every column), JSON member, latent norm, members, verdict."""
        i = self.locate(key)
        members = self.members(key)
        frag = self._fragment(int(self.shard_col[i]))
        rows = frag.column("row").to_numpy()
        index_row = frag.slice(int(np.flatnonzero(rows == self.row_col[i])[0]), 1).to_pylist()[0]
        pictures = [w for w in smp.PICTURES if smp.picture_ext(self.res.manifest, w) in members]
        return jsonable({"key": key, "index": index_row, "meta": smp.meta_of(members),
                         "latent": smp.latent_summary(members, key), "pictures": pictures,
                         "members": {ext: len(b) for ext, b in sorted(members.items())},
                         **self.verdict(self.filtered(where), i)})

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
        view = view_from_index(self.url, self.res, spec, self.table, view_url=out)
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
        if rows.size and not np.isin(rows, self.row_col[self.base]).all():
            raise FactoryError(f"tag {name}: some rows are not samples of {self.url}")
        old = self.named.view(name)
        if old is not None and not nm.explicit_rows(old):
            raise FactoryError(f"{name}.json is a saved filter, not a tag: choose another tag name")
        have = self.named.rows(name) if old is not None else np.zeros(0, np.int64)
        new = np.union1d(have, rows) if mode == "add" else np.setdiff1d(have, rows) if mode == "remove" else rows
        if new.size > nm.MAX_SELECTION:
            raise FactoryError(f"a tag holds at most {nm.MAX_SELECTION:,} samples")
        spec = FilterSpec(where=nm.rows_where(new))
        view = view_from_index(self.url, self.res, spec, self.table, view_url=out)
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

    def compare(self, a: str, b: str) -> dict:
        """Samples of this dataset or view in both views, either, only one and neither (``#a``, ``#b``)."""
        fa = np.isin(self.row_col, self.named.rows(a)) & self.base
        fb = np.isin(self.row_col, self.named.rows(b)) & self.base
        return {"a": a, "b": b, "both": int((fa & fb).sum()), "either": int((fa | fb).sum()),
                "only_a": int((fa & ~fb).sum()), "only_b": int((fb & ~fa).sum()),
                "neither": int((self.base & ~fa & ~fb).sum())}

    # ------------------------------------------------------------ the latent map
    def _map(self, method: str):
        """(index positions of the drawn points, their x, y) of the input rows' projection (last two kept)."""
        with self._lock:
            hit = self._maps.get(method)
            if hit is not None:
                self._maps.move_to_end(method)
                return hit
        pos = np.flatnonzero(self.base)
        pos = pos[np.argsort(self.row_col[pos], kind="stable")]
        v = self.res.view
        xy = lmap.projection(self.res.root, self.row_col[pos].astype(np.int64),
                             dataset_id=self.res.manifest["dataset_id"], view_id=v["view_id"] if v else None,
                             method=method)
        pick = lmap.sample(pos.size)
        hit = (pos[pick], xy[pick])
        with self._lock:
            self._maps[method] = hit
            while len(self._maps) > 2:
                self._maps.popitem(last=False)
        return hit

    def latent_map(self, method: str = "pca") -> dict:
        """The drawn points of the latent map: their rows and x, y (little-endian int32 / float32, base64)."""
        pos, xy = self._map(method)
        return {"method": method, "points": int(pos.size), "total": int(self.base.sum()),
                "rows": lmap.b64(self.row_col[pos].astype("<i4")), "x": lmap.b64(xy[:, 0].astype("<f4")),
                "y": lmap.b64(xy[:, 1].astype("<f4"))}

    def map_colours(self, column: str, where: str = "", method: str = "pca") -> dict:
        """Column `column` at the map's points, and which of them the filter accepts (packed bits)."""
        if column not in self.columns:
            raise FactoryError(f"cannot colour by {column!r}: use one of {', '.join(self.columns)}")
        pos, _ = self._map(method)
        values = self.table.column(column).take(pos).to_numpy(zero_copy_only=False)
        acc = self.filtered(where).outcome.mask[pos]
        return {**lmap.colours(values, self.kinds[column]), "column": column,
                "accepted": lmap.b64(np.packbits(acc, bitorder="little"))}
