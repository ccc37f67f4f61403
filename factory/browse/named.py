"""Named row sets of `factory browse`: the views in the views folder, tags and the map's selection.

A tag is a view of explicit rows: the view `factory filter URL --where "row in (r1, r2, ...)"` writes, saved
as ``NAME.json`` in the views folder (tagging more samples rewrites that file; a saved filter is never
rewritten). ``#NAME`` in the filter box stands for the rows of view ``NAME.json`` (a tag or any saved view)
and ``#selection`` for the map's current selection; the page evaluates the reference as a bool column and
saves it as its explicit rows, so a saved view is always what `factory filter` writes for the expanded
filter.
"""
from __future__ import annotations

import os
import re
import threading

import numpy as np

from factory import format as fmt
from factory.format import FactoryError

SELECTION = "selection"
REF = re.compile(r"#([A-Za-z0-9][A-Za-z0-9_.-]{0,79})")
MAX_VIEWS = 200  # view files listed from one folder
MAX_ROW_SETS = 8  # views' decoded rows kept (8 bytes a row)
MAX_SELECTION = 110_000  # rows of an explicit-rows view (its --where stays under the language's limit)


def rows_where(rows) -> str:
    """The --where of a set of rows: ``row in (r1, r2, ...)`` sorted (``row < 0`` for none)."""
    rows = np.unique(np.asarray(rows, np.int64))
    if rows.size == 0:
        return "row < 0"
    return "row in (" + ", ".join(map(str, rows.tolist())) + ")"


def explicit_rows(view: dict) -> bool:
    """Whether a view is a tag: made by a --where of explicit rows alone."""
    w = (view.get("filters") or {}).get("where")
    return set(view.get("filters") or {}) == {"where"} and isinstance(w, str) and (
        w.startswith("row in (") or w == "row < 0")


def split_refs(where: str) -> list[tuple[str, str]]:
    """The filter text cut into ("text", s) and ("ref", NAME) parts; ``#`` inside quoted strings is text."""
    out: list[tuple[str, str]] = []
    i, buf, quote = 0, [], None
    while i < len(where):
        c = where[i]
        if quote:
            buf.append(c)
            if c == "\\" and i + 1 < len(where):
                buf.append(where[i + 1])
                i += 1
            elif c == quote:
                quote = None
        elif c in "'\"":
            quote = c
            buf.append(c)
        elif c == "#":
            m = REF.match(where, i)
            if not m:
                raise FactoryError(f"--where: '#' at position {i} must name a view or tag, e.g. #selection")
            out.append(("text", "".join(buf)))
            buf = []
            out.append(("ref", m.group(1)))
            i = m.end()
            continue
        else:
            buf.append(c)
        i += 1
    out.append(("text", "".join(buf)))
    return [p for p in out if p != ("text", "")]


class Named:
    """The views folder's views (read when asked, cached by file size and time) and the map's selection."""

    def __init__(self, views_dir: str, dataset_ids: tuple[str, ...]):
        self.views_dir = views_dir
        self.dataset_ids = dataset_ids
        self.selection = np.zeros(0, np.int64)
        self.generation = 0  # grows with every change of a set (the filter cache's key)
        self._files: dict[str, tuple[tuple, dict | None]] = {}  # name -> (stamp, summary)
        self._rows: dict[str, tuple[tuple, np.ndarray]] = {}  # name -> (stamp, rows): the last MAX_ROW_SETS
        self._lock = threading.Lock()

    def _path(self, name: str) -> str:
        return fmt.join(self.views_dir, name + ".json") if fmt.is_remote_url(self.views_dir) else \
            os.path.join(self.views_dir, name + ".json")

    def _names(self) -> list[str]:
        if fmt.is_remote_url(self.views_dir):
            fs, path = fmt.get_fs(self.views_dir)
            try:
                files = [posix.rsplit("/", 1)[-1] for posix in fs.ls(path, detail=False)]
            except OSError:
                return []
        else:
            try:
                files = os.listdir(self.views_dir)
            except OSError:
                return []
        return sorted(f[:-5] for f in files if f.endswith(".json") and REF.fullmatch("#" + f[:-5]))[:MAX_VIEWS]

    def _stamp(self, path: str):
        if fmt.is_remote_url(path):
            fs, p = fmt.get_fs(path)
            info = fs.info(p)
            return (info.get("size"), info.get("mtime") or info.get("LastModified") or info.get("ETag"))
        st = os.stat(path)
        return (st.st_size, st.st_mtime_ns)

    def _read(self, name: str):
        """(stamp, view) of NAME.json when it is a view of this dataset, else (stamp, None); None if absent."""
        path = self._path(name)
        try:
            stamp = self._stamp(path)
        except OSError:
            return None
        try:
            obj = fmt.validate_view(fmt.read_json(path, "view"), path)
        except FactoryError:
            return stamp, None
        return stamp, (obj if obj["parent"]["dataset_id"] in self.dataset_ids else None)

    def summary(self, name: str) -> dict | None:
        """Name, samples, whether it is a tag, id and predicate of view NAME.json (kept per file size and time,
        without its rows: at most MAX_VIEWS small entries)."""
        path = self._path(name)
        try:
            stamp = self._stamp(path)
        except OSError:
            return None
        with self._lock:
            hit = self._files.get(name)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        got = self._read(name)
        if got is None:
            return None
        stamp, v = got
        s = None
        if v is not None:
            tag = explicit_rows(v)
            s = {"name": name, "samples": v["samples"], "tag": tag, "view_id": v["view_id"],
                 "predicate": None if tag else v.get("predicate")}
        with self._lock:
            self._files[name] = (stamp, s)
            while len(self._files) > MAX_VIEWS:
                self._files.pop(next(iter(self._files)))
        return s

    def view(self, name: str) -> dict | None:
        """View NAME.json of the views folder when it is a view of this dataset, else None (read each time)."""
        got = self._read(name)
        return None if got is None else got[1]

    def listing(self) -> list[dict]:
        """Every view of this dataset in the views folder: name, samples, whether it is a tag, its predicate."""
        return [s for s in map(self.summary, self._names()) if s is not None]

    def rows(self, name: str) -> np.ndarray:
        """Sorted rows of ``#name``: the selection, or view NAME.json's accepted rows (the last few kept)."""
        if name == SELECTION:
            return self.selection
        try:
            stamp = self._stamp(self._path(name))
        except OSError:
            stamp = None
        with self._lock:
            hit = self._rows.get(name)
        if stamp is not None and hit is not None and hit[0] == stamp:
            return hit[1]
        v = self.view(name)
        if v is None:
            raise FactoryError(f"#{name}: no view {name}.json of this dataset in {self.views_dir}; "
                               "tag samples or save a view first")
        rows = fmt.AcceptedRows(v["accepted"], v["format_version"], name).all_rows()
        with self._lock:
            self._rows[name] = (stamp, rows)
            while len(self._rows) > MAX_ROW_SETS:
                self._rows.pop(next(iter(self._rows)))
        return rows

    def select(self, rows) -> int:
        rows = np.unique(np.asarray(rows, np.int64))
        if rows.size > MAX_SELECTION:
            raise FactoryError(f"a selection holds at most {MAX_SELECTION:,} samples, got {rows.size:,}: "
                               "select a smaller region")
        with self._lock:
            self.selection = rows
            self.generation += 1
        return int(rows.size)

    def changed(self) -> None:
        with self._lock:
            self.generation += 1
