"""Views: filter specs over the Parquet index, computing a view (small immutable JSON) and writing it.

Architecture
------------
* ``factory.views.predicate.parse_where`` turns the ``--where`` language into an AST (no ``eval``);
  ``FilterSpec.steps`` adds the flag filters (``--max-fg``, ``--histogram``...) as ASTs of the same kind.
* ``compute_view`` reads only the needed columns of every index fragment
  (``factory.dataset.reader.load_index``: never a tar, never a pixel, each fragment's sha256 checked),
  evaluates the steps with pyarrow compute and counts rejections per step. A view of a view
  filters the accepted rows further; the new view's parent is still the root dataset and
  ``lineage`` records the chain of predicates.
* ``write_view`` writes it (the same content again is a no-op; views are immutable).
* `factory filter` is ``factory.api.run_filter``: the public API's ``open(url).apply(spec)`` and
  ``View.save`` over these calls (or, with ``materialize``, a compact new dataset, ``factory.views.materialize``).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from factory import __version__
from factory import format as fmt
from factory.dataset.card import STATS_COLUMNS, stats_columns, summary_stats
from factory.dataset.reader import accepted_flags, index_schema, load_index, scan_index
from factory.format import FactoryError, parent_url_for
from factory.views.predicate import (
    BoolOp,
    Cmp,
    Col,
    Lit,
    PredicateError,
    check_types,
    columns_of,
    evaluate,
    parse_where,
    render,
)
from factory.views.scan import Stats, column_np, freed_memory_kept, shard_bitmaps

# ================================================================ filter specs

@dataclass
class FilterSpec:
    """The flags of `factory filter`; `steps()` lists (name, AST) in a fixed order."""

    max_fg: float | None = None
    min_fg: float | None = None
    histogram: str = "off"  # reference | paper | off
    min_components: int | None = None
    max_components: int | None = None
    where: str | None = None

    def validate(self) -> None:
        for name in ("max_fg", "min_fg"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and 0.0 <= v <= 1.0):
                raise FactoryError(f"--{name.replace('_', '-')} must be a fraction in [0, 1], got {v}")
        if self.histogram not in ("reference", "paper", "off"):
            raise FactoryError(f"--histogram must be reference, paper or off, got {self.histogram!r}")
        for name in ("min_components", "max_components"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise FactoryError(f"--{name.replace('_', '-')} must be >= 0, got {v}")

    def steps(self) -> list[tuple[str, Any]]:
        self.validate()
        out: list[tuple[str, Any]] = []
        if self.max_fg is not None:
            out.append(("max_fg", Cmp("<", Col("fg_ratio"), Lit(float(self.max_fg)))))
        if self.min_fg is not None:
            out.append(("min_fg", Cmp(">=", Col("fg_ratio"), Lit(float(self.min_fg)))))
        if self.histogram == "reference":
            out.append(("histogram", Col("pass_hist_reference")))
        elif self.histogram == "paper":
            out.append(("histogram", Col("pass_hist_paper")))
        if self.min_components is not None:
            out.append(("min_components", Cmp(">=", Col("n_components"), Lit(int(self.min_components)))))
        if self.max_components is not None:
            out.append(("max_components", Cmp("<=", Col("n_components"), Lit(int(self.max_components)))))
        if self.where is not None:  # "" is refused like "   " (an empty expression), never "every row"
            out.append(("where", parse_where(self.where)))
        return out


def predicate_of(steps: list[tuple[str, Any]]) -> str:
    if not steps:
        return "true"
    nodes = tuple(n for _, n in steps)
    return render(nodes[0] if len(nodes) == 1 else BoolOp("and", nodes))


def combine_predicates(parts: list[str]) -> str:
    """Canonical AND of canonical predicates (each re-parsed so precedence stays right)."""
    parts = [p for p in parts if p and p != "true"]
    if not parts:
        return "true"
    nodes = []
    for p in parts:
        n = parse_where(p)
        nodes.extend(n.operands if isinstance(n, BoolOp) and n.op == "and" else [n])
    return render(nodes[0] if len(nodes) == 1 else BoolOp("and", tuple(nodes)))


# ================================================================ views

@dataclass
class FilterResult:
    view: dict
    url: str | None = None
    written: bool = False
    materialized: dict | None = None


def _as_rows_by_shard(shard_col: np.ndarray, row_col: np.ndarray, mask: np.ndarray,
                      shard_ids: list[int]) -> dict[str, dict]:
    """The view's ``accepted`` in the contract's compact form (`format.encode_accepted`), every shard listed."""
    by_shard = {k: np.zeros(0, np.int64) for k in shard_ids}
    n = len(shard_col)
    cuts = np.flatnonzero(shard_col[1:] != shard_col[:-1]) + 1
    starts = np.concatenate([[0], cuts]) if n else cuts
    if len(np.unique(shard_col[starts])) == len(starts):  # each shard's rows are contiguous (as an index is read)
        for a, b in zip(starts.tolist(), np.concatenate([cuts, [n]]).tolist()):
            by_shard[int(shard_col[a])] = row_col[a:b][mask[a:b]]  # encode_rows sorts only what is unsorted
    elif mask.any():
        for sid in np.unique(shard_col[mask]).tolist():
            by_shard[sid] = row_col[mask & (shard_col == sid)]
    return fmt.encode_accepted(by_shard)


def check_steps(res: fmt.Resolved, steps: list[tuple[str, Any]]):
    """Type-check every step against the index schema; return the schema (PredicateError names the problem)."""
    schema = index_schema(res.root, res.manifest)
    for _, node in steps:
        if check_types(node, schema) != "bool":
            raise PredicateError(f"--where: '{render(node)}' is not a condition (compare it, e.g. '{render(node)} > 0')")
    return schema


def index_table(res: fmt.Resolved, steps: list[tuple[str, Any]]):
    """The index columns the steps need (plus shard and row), after type-checking every step."""
    import pyarrow as pa

    needed = {"shard", "row", *stats_columns(res.root, res.manifest)}
    for _, node in steps:
        needed |= columns_of(node)
    schema = check_steps(res, steps)
    table = load_index(res.root, res.manifest, columns=sorted(needed))
    if table is None:
        table = pa.table({c: pa.array([], schema.field(c).type) for c in sorted(needed)})
    return table


def input_rows(url: str, res: fmt.Resolved, row_col: np.ndarray) -> np.ndarray:
    """Bool flag per index row: True where the input (the whole dataset, or a view's accepted rows) has it."""
    n = len(row_col)
    if res.accepted is None:
        return np.ones(n, bool)
    shard_ids = fmt.shard_ids(res.manifest).tolist()
    missing = set(res.accepted) - set(shard_ids)
    if missing:
        raise fmt.FormatError(f"{url}: view lists shards {sorted(missing)} that the parent dataset does not have")
    base = accepted_flags(res.accepted, row_col) if n else np.zeros(0, bool)
    if int(base.sum()) != res.view["samples"]:
        raise fmt.FormatError(
            f"{url}: view accepts {res.view['samples']} rows but only {int(base.sum())} exist in the parent's index"
        )
    return base


@dataclass
class Outcome:
    """A filter's steps evaluated over an index: the input rows, the accepted ones, each step's verdict per
    row (over every row of the index), and the counts `factory filter` reports."""

    base: np.ndarray
    mask: np.ndarray
    passed: dict[str, np.ndarray]
    rejected: dict[str, int]
    in_turn: list[dict]

    def counts(self) -> dict:
        n_in, n_acc = int(self.base.sum()), int(self.mask.sum())
        return {"candidates": len(self.base), "input": n_in, "accepted": n_acc, "rejected": n_in - n_acc}


def apply_steps(steps: list[tuple[str, Any]], table, base: np.ndarray) -> Outcome:
    """Rows that pass every step; how many input rows each step rejects alone (a row failing two steps
    counts for both); and the steps in turn, as the paper's Table 4: `rejected` among the rows the earlier
    steps kept (these add up to every rejected row), `also_rejected` among those they had already rejected."""
    import pyarrow as pa

    mask = base.copy()
    passed: dict[str, np.ndarray] = {}
    alone: dict[str, int] = {}
    in_turn: list[dict] = []
    for name, node in steps:
        try:
            verdict = evaluate(node, table)
        except pa.ArrowException as e:
            raise PredicateError(f"--where: cannot evaluate '{render(node)}' on the index: {e}") from None
        ok = column_np(verdict)
        if ok is None:
            ok = verdict.to_numpy(zero_copy_only=False).astype(bool)
        passed[name] = ok
        alone[name] = int((base & ~ok).sum())
        kept = int((mask & ~ok).sum())
        in_turn.append({"filter": name, "rejected": kept, "also_rejected": alone[name] - kept})
        mask &= ok
    return Outcome(base, mask, passed, alone, in_turn)


def _lineage(res: fmt.Resolved, step: dict) -> list[dict]:
    """The chain of predicates from the root dataset to the new view (its own `step` last)."""
    lineage = list(res.view.get("lineage", [])) if res.view is not None else []
    if res.view is not None and not lineage:
        lineage = [{"view_id": res.view["view_id"], "predicate": res.view.get("predicate"),
                    "samples": res.view["samples"]}]
    lineage.append(step)
    return lineage


def view_predicate(res: fmt.Resolved, spec: FilterSpec) -> tuple[str, str]:
    """(the spec's own predicate, the new view's whole predicate: the input view's AND the spec's)."""
    own = predicate_of(spec.steps())
    prev_pred = res.view["predicate"] if res.view is not None else None
    return own, (combine_predicates([prev_pred, own]) if prev_pred else own)


def view_from_index(url: str, res: fmt.Resolved, spec: FilterSpec, table, *, view_url: str | None = None) -> dict:
    """The view of `spec` on dataset/view `url` (opened as `res`) from its index `table` (not written).
    `table` holds at least shard, row and every column the spec reads (`index_table`)."""
    steps = spec.steps()
    check_steps(res, steps)
    shard_ids = fmt.shard_ids(res.manifest).tolist()
    shard_col = table.column("shard").to_numpy()
    row_col = table.column("row").to_numpy()
    out = apply_steps(steps, table, input_rows(url, res, row_col))
    accepted = _as_rows_by_shard(shard_col, row_col, out.mask, shard_ids)
    return _view(res, spec, accepted, counts=out.counts(), rejected=out.rejected, in_turn=out.in_turn,
                 stats=summary_stats(table, out.mask), view_url=view_url)


def _view(res: fmt.Resolved, spec: FilterSpec, accepted: dict, *, counts: dict, rejected: dict, in_turn: list,
          stats: dict, view_url: str | None) -> dict:
    """The view document from a filter's outcome."""
    own, predicate = view_predicate(res, spec)
    acc_sha = fmt.accepted_sha256(accepted)
    parent_id = res.manifest["dataset_id"]
    vid = fmt.view_id(parent_id, predicate, acc_sha)
    filters = {k: v for k, v in spec.__dict__.items() if v is not None and not (k == "histogram" and v == "off")}
    return {
        "kind": fmt.VIEW_KIND,
        "format_version": fmt.FORMAT_VERSION,
        "view_id": vid,
        "parent": {"dataset_id": parent_id,
                   "url": parent_url_for(view_url or "view.json", res.root)},
        "predicate": predicate,
        "filters": filters,
        "lineage": _lineage(res, {"view_id": vid, "predicate": own, "samples": counts["accepted"]}),
        "samples": counts["accepted"],
        "counts": counts,
        "rejected": rejected,
        "rejected_in_turn": in_turn,
        "accepted_sha256": acc_sha,
        "accepted_stats": stats,
        "code_version": __version__,
        "accepted": accepted,
    }


def _needed_columns(res: fmt.Resolved, steps: list[tuple[str, Any]], schema=None) -> list[str]:
    """shard, row, the statistics' columns and the steps' (`schema`: the index's, when already read)."""
    stats = stats_columns(res.root, res.manifest) if schema is None else \
        [*STATS_COLUMNS, *(["true_iou"] if "true_iou" in schema.names else [])]
    needed = {"shard", "row", *stats}
    for _, node in steps:
        needed |= columns_of(node)
    return sorted(needed)


def _piece(res: fmt.Resolved, steps: list[tuple[str, Any]], table) -> tuple:
    """A filter's outcome over one piece of the index (a part, or a shard range's rows): counts, rejections,
    steps in turn, accepted rows (encoded) and summary statistics, merged by `_merged_view`. Columns are
    read as numpy views of Arrow's buffers (`scan.column_np`), each shard's bitmap cut from one packing
    (`scan.shard_bitmaps`) and the statistics summed from the same columns (`scan.Stats`)."""
    shard_col, row_col = _numpy(table.column("shard")), _numpy(table.column("row"))
    base = np.ones(len(row_col), bool)
    if res.accepted is not None:
        mine = [k for k in np.unique(shard_col).tolist() if k in res.accepted]
        rows = [res.accepted[k] for k in mine]
        base = np.isin(row_col, np.concatenate(rows)) if rows else np.zeros(len(row_col), bool)
    out = apply_steps(steps, table, base)
    accepted = shard_bitmaps(shard_col, row_col, out.mask)
    if accepted is None:
        accepted = _as_rows_by_shard(shard_col, row_col, out.mask, np.unique(shard_col).tolist())
    return out.counts(), out.rejected, out.in_turn, accepted, Stats().add(table, out.mask)


def _numpy(col) -> np.ndarray:
    arr = column_np(col)
    return col.to_numpy() if arr is None else arr


def summed_counts(steps: list, outcomes: list) -> tuple[dict, dict, list[dict]]:
    """The filter's counts, rejections per step and in-turn rejections summed over pieces' outcomes
    (each ``(counts, rejected, in_turn)`` as one piece's `apply_steps` gives them)."""
    counts = {"candidates": 0, "input": 0, "accepted": 0, "rejected": 0}
    rejected = {name: 0 for name, _ in steps}
    in_turn = [{"filter": name, "rejected": 0, "also_rejected": 0} for name, _ in steps]
    for c, rej, turn in outcomes:
        for k in counts:
            counts[k] += c[k]
        for k in rejected:
            rejected[k] += rej[k]
        for a, b in zip(in_turn, turn):
            a["rejected"] += b["rejected"]
            a["also_rejected"] += b["also_rejected"]
    return counts, rejected, in_turn


def _merged_view(url: str, res: fmt.Resolved, spec: FilterSpec, pieces: list, *, view_url: str | None) -> dict:
    """The view from its pieces' outcomes (`_piece`), merged in shard order."""
    steps = spec.steps()
    accepted: dict[str, dict] = {}
    counts, rejected, in_turn = summed_counts(steps, [p[:3] for p in pieces])
    stats = Stats()
    for _, _, _, acc, st in pieces:
        accepted.update(acc)
        stats.merge(st)
    for k in map(str, fmt.shard_ids(res.manifest).tolist()):  # shards without an index row: none accepted
        if k not in accepted:
            accepted[k] = {"first": 0, "n": 0, "bits": ""}
    if res.view is not None and counts["input"] != res.view["samples"]:
        raise fmt.FormatError(f"{url}: view accepts {res.view['samples']} rows but only {counts['input']} exist in "
                              "the parent's index")
    return _view(res, spec, accepted, counts=counts, rejected=rejected, in_turn=in_turn, stats=stats.result(),
                 view_url=view_url)


def view_from_parts(url: str, res: fmt.Resolved, spec: FilterSpec, *, view_url: str | None = None) -> dict:
    """`view_from_index` over a compacted index, one part at a time (`scan_index`: parts read and filtered in
    threads, memory holding the parts in flight, not the index): the same view."""
    steps = spec.steps()
    columns = _needed_columns(res, steps, check_steps(res, steps))
    with freed_memory_kept():
        pieces = scan_index(res.root, res.manifest, columns, lambda t: _piece(res, steps, t))
        return _merged_view(url, res, spec, pieces, view_url=view_url)


def filter_range(url: str, *, spec: FilterSpec, dataset_id: str, lo: int, hi: int,
                 allow_remote_shards: bool = False) -> tuple:
    """A cluster task of `filter`: the outcome (`_piece`) of `spec` over the index rows of shards lo..hi-1 of
    dataset/view `url`, opened by the worker itself (its dataset id must still be `dataset_id`)."""
    res = fmt.open_dataset(url, allow_remote_shards=allow_remote_shards)
    if res.manifest["dataset_id"] != dataset_id:
        raise fmt.FactoryError(f"{url} changed during filter (dataset id {res.manifest['dataset_id']}, "
                               f"was {dataset_id}); run filter again")
    steps = spec.steps()
    ids = [k for k in fmt.shard_ids(res.manifest).tolist() if lo <= k < hi]
    table = load_index(res.root, res.manifest, columns=_needed_columns(res, steps), shards=ids)
    return _piece(res, steps, table)


def view_on_cluster(url: str, res: fmt.Resolved, spec: FilterSpec, scheduler: str | None, *,
                    view_url: str | None = None, allow_remote_shards: bool = False, workers: int = 0) -> dict:
    """The view of `spec` computed as shard-range tasks on the dask cluster at `scheduler` (`factory.cluster`;
    one task per part of a compacted index): each worker reads only its shards' index rows."""
    from factory.cluster import run_tasks, shard_ranges

    steps = spec.steps()
    check_steps(res, steps)
    m = res.manifest
    end = int(fmt.shard_ids(m).max()) + 1
    if fmt.has_parts(m):
        starts = sorted(p["first_shard"] for p in m["index"]["parts"])[1:]
        ranges = list(zip([0, *starts], [*starts, end]))
    else:
        ranges = [(lo, hi if hi < len(m["shards"]) else end) for lo, hi in shard_ranges(len(m["shards"]))]
    tasks = [dict(url=url, spec=spec, dataset_id=m["dataset_id"], lo=lo, hi=hi,
                  allow_remote_shards=allow_remote_shards) for lo, hi in ranges]
    pieces = run_tasks(scheduler, filter_range, tasks, name=f"filter-{m['dataset_id'][3:15]}", workers=workers)
    return _merged_view(url, res, spec, pieces, view_url=view_url)


def compute_view(url: str, spec: FilterSpec, allow_remote_shards: bool = False,
                 view_url: str | None = None) -> dict:
    """Evaluate `spec` on the index of dataset/view `url` and return the view dict (not written)."""
    return view_of(url, fmt.open_dataset(url, allow_remote_shards=allow_remote_shards), spec, view_url=view_url)


def view_of(url: str, res: fmt.Resolved, spec: FilterSpec, *, view_url: str | None = None,
            scheduler: str | None = None, allow_remote_shards: bool = False, workers: int = 0) -> dict:
    """The view of `spec` on dataset/view `url` opened as `res`: as shard-range tasks on the dask cluster at
    `scheduler` (`view_on_cluster`), over a compacted index one part at a time (`view_from_parts`), else over
    the index's needed columns (`view_from_index`)."""
    if (scheduler or workers) and res.manifest["shards"]:
        return view_on_cluster(url, res, spec, scheduler, view_url=view_url, allow_remote_shards=allow_remote_shards,
                               workers=workers)
    if fmt.has_parts(res.manifest):
        return view_from_parts(url, res, spec, view_url=view_url)
    return view_from_index(url, res, spec, index_table(res, spec.steps()), view_url=view_url)


def view_bytes(view: dict) -> bytes:
    """Serialized view: sorted keys, one accepted shard per line (diffable, deterministic)."""
    head = {k: v for k, v in view.items() if k != "accepted"}
    text = json.dumps(head, indent=1, sort_keys=True)
    forms = fmt.plain_forms(view["accepted"])  # plain compact forms: their JSON written directly
    if forms is None:
        acc = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}"
                         for k, v in sorted(view["accepted"].items(), key=lambda kv: int(kv[0])))
    else:
        keys, firsts, ns, bits = forms
        lines = list(map('  "{}": {{"first":{},"n":{},"bits":"{}"}}'.format, keys, firsts, ns, bits))
        order = list(map(int, keys))
        if any(map(int.__gt__, order, order[1:])):  # not in shard order: sorted (stably, as above)
            lines = [lines[i] for i in sorted(range(len(order)), key=order.__getitem__)]
        acc = ",\n".join(lines)
    return (text[:-2] + ',\n "accepted": {\n' + acc + "\n }\n}\n").encode()


def write_view(view: dict, out: str, overwrite: bool = False) -> bool:
    """Write a view file; the same content again is a no-op, other content is refused unless overwrite.

    Returns True when the file was (re)written.
    """
    from factory.fsio import atomic_write, exists

    data = view_bytes(view)
    if exists(out):
        try:
            old = fmt.read_bytes(out)
        except OSError:
            old = b""
        if old == data:
            return False
        try:
            old_id = json.loads(old).get("view_id")
        except (ValueError, AttributeError):
            old_id = None
        # the same view id is the same parent, predicate and accepted rows: only the statistics around them
        # (e.g. counts a newer version adds) differ, so the file is brought up to date in place
        if not overwrite and old_id != view["view_id"]:
            raise FactoryError(
                f"{out} already holds {'view ' + old_id if old_id else 'another file'}; views are immutable: "
                "choose another --out or pass --overwrite"
            )
    atomic_write(out, data)
    return True
