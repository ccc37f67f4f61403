"""Dataset card (README.md inside every dataset): provenance, counts, statistics, how to load it."""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from factory import format as fmt
from factory.dataset.reader import index_schema, scan_index
from factory.fsio import atomic_write
from factory.provenance import platforms_line

STATS_COLUMNS = ("row", "fg_ratio", "pass_area", "pass_hist_reference", "pass_hist_paper", "n_components_raw",
                 "n_components")  # what summary_stats reads (and true_iou where the index has it)


def stats_columns(root: str, manifest: dict) -> list[str]:
    names = index_schema(root, manifest).names
    return list(STATS_COLUMNS) + [c for c in ("true_iou",) if c in names]


def index_stats(root: str, manifest: dict, *, check_sha: bool = True) -> dict:
    """summary_stats of a dataset's whole index, reading only the columns they need (a compacted index one
    part at a time: memory holds one part's columns and the fg ratios)."""
    cols = stats_columns(root, manifest)
    acc = SummaryStats()
    for part in scan_index(root, manifest, cols, lambda t: SummaryStats().add(t), check_sha=check_sha):
        acc.merge(part)
    return acc.result()


def summary_stats(table, mask: np.ndarray | None = None) -> dict:
    """Filter statistics of an index table (of its rows where `mask` is True): fg ratio quantiles and
    pass rate of each filter. Columns are selected as arrays, never the whole table filtered."""
    return SummaryStats().add(table, mask).result() if table is not None else {"samples": 0}


def top16(values: np.ndarray) -> np.ndarray:
    """uint16 per float32 value: the top 16 bits of a key whose integer order is the values' order (sign
    flipped for positives, every bit for negatives), from the values' high halves."""
    half = np.ascontiguousarray(values, np.float32).view(np.uint16)[1 if np.little_endian else 0::2]
    return half ^ ((half >> 15) * np.uint16(0x7FFF) + np.uint16(0x8000))


def top16_counts(values: np.ndarray) -> np.ndarray:
    """How many float32 values have each `top16` key (65,536 counts), what `quantiles` bins them by."""
    return np.bincount(top16(values), minlength=1 << 16)


def quantiles(pieces: list[np.ndarray], qs: list[float], counts: np.ndarray | None = None) -> np.ndarray:
    """``np.quantile(np.concatenate(pieces), qs)`` (linear interpolation) of float32 pieces without sorting or
    joining them: the order statistics needed are found by a histogram of the keys' top 16 bits (`counts`:
    the pieces' `top16_counts` summed, when known), then among the few values of their bins (O(n), ~10x less
    CPU than a partition at 100M values)."""
    n = sum(len(p) for p in pieces)
    if n < (1 << 20):
        return np.quantile(np.concatenate(pieces).astype(np.float32), qs)
    if counts is None or int(counts.sum()) != n:
        counts = sum((top16_counts(p) for p in pieces), np.zeros(1 << 16, np.int64))
    cum = np.cumsum(counts)
    virtual = [q * (n - 1) for q in qs]
    ranks = sorted({int(np.floor(v)) for v in virtual} | {min(int(np.floor(v)) + 1, n - 1) for v in virtual})
    bins = {r: int(np.searchsorted(cum, r, side="right")) for r in ranks}
    wanted = np.zeros(1 << 16, bool)
    wanted[sorted(set(bins.values()))] = True
    with ThreadPoolExecutor(max(1, min(len(pieces), os.cpu_count() or 1))) as ex:  # numpy frees the GIL
        found = np.concatenate(list(ex.map(lambda p: p[wanted[top16(p)]], pieces)))
    stat = {}
    for r, b in bins.items():
        inside = np.sort(found[top16(found) == b])
        stat[r] = inside[r - (int(cum[b - 1]) if b else 0)]
    out = []
    for v in virtual:
        lo = int(np.floor(v))
        a, b = np.float32(stat[lo]), np.float32(stat[min(lo + 1, n - 1)])
        out.append(np.float32(a + (b - a) * np.float32(v - lo)) if b != a else a)
    return np.array(out, np.float32)


class SummaryStats:
    """`summary_stats` accumulated over pieces of an index (`add` a table and its mask, `merge` another's):
    counts and sums, and the fg ratios of the rows counted (for the quantiles)."""

    COUNTS = ("area", "hist_reference", "hist_paper", "area_and_hist_reference")

    def __init__(self):
        self.n = 0
        self.fg: list[np.ndarray] = []
        self.counts = dict.fromkeys(self.COUNTS, 0)
        self.comp = {"raw": 0, "clean": 0}
        self.iou: list[float] | None = None  # [sum over all, sum over area & hist_reference]
        self.fg_counts: np.ndarray | None = None  # `top16_counts` of the fg ratios, where an `add` counts them

    def add(self, table, mask: np.ndarray | None = None) -> "SummaryStats":
        import pyarrow as pa
        import pyarrow.compute as pc

        n = table.num_rows if mask is None else int(np.count_nonzero(mask))
        if n == 0:
            return self
        keep = None if mask is None else pa.array(mask)  # Arrow's filter and bit operations: no numpy copies

        def column(name: str):
            col = table.column(name)
            return col if keep is None else pc.filter(col, keep)

        def count(arr) -> int:
            return int(pc.sum(arr).as_py() or 0)

        self.n += n
        self.fg.append(np.asarray(column("fg_ratio").to_numpy(), np.float32))
        area, ref = column("pass_area"), column("pass_hist_reference")
        both = pc.and_(area, ref)
        for k, v in zip(self.COUNTS, (area, ref, column("pass_hist_paper"), both)):
            self.counts[k] += count(pc.cast(v, pa.int64()))
        self.comp["raw"] += count(pc.cast(column("n_components_raw"), pa.int64()))
        self.comp["clean"] += count(pc.cast(column("n_components"), pa.int64()))
        if "true_iou" in table.column_names:
            iou = pc.cast(column("true_iou"), pa.float64())
            self.iou = self.iou or [0.0, 0.0]
            self.iou[0] += float(pc.sum(iou).as_py() or 0.0)
            self.iou[1] += float(pc.sum(pc.filter(iou, both)).as_py() or 0.0)
        return self

    def merge(self, other: "SummaryStats") -> None:
        self.n += other.n
        self.fg += other.fg
        for k in self.COUNTS:
            self.counts[k] += other.counts[k]
        for k in self.comp:
            self.comp[k] += other.comp[k]
        if other.iou is not None:
            self.iou = [a + b for a, b in zip(self.iou or [0.0, 0.0], other.iou)]
        if other.fg_counts is not None:
            self.fg_counts = other.fg_counts if self.fg_counts is None else self.fg_counts + other.fg_counts

    def result(self) -> dict:
        n = self.n
        if n == 0:
            return {"samples": 0}
        qs = ("0.05", "0.25", "0.5", "0.75", "0.95")
        out: dict = {"samples": n}
        out["fg_ratio_quantiles"] = {q: round(float(v), 4) for q, v in zip(qs, quantiles(self.fg, [float(q) for q in qs], self.fg_counts))}
        out["pass_rate"] = {k: round(self.counts[k] / n, 4) for k in self.COUNTS}
        out["components_mean"] = {k: round(v / n, 3) for k, v in self.comp.items()}
        if self.iou is not None:
            both = self.counts["area_and_hist_reference"]
            out["true_iou_mean"] = {"all": round(self.iou[0] / n, 4),
                                    "area_and_hist_reference": round(self.iou[1] / both, 4) if both else None}
        return out


def render(manifest: dict, stats: dict, preview: str | None = None, *, title: str | None = None,
           root: str | None = None) -> str:
    """The card's Markdown: provenance table, filter statistics, preview link, what the shards hold, how to
    load it (`root`: the dataset's location, written into the snippet; None: a named placeholder)."""
    spec = manifest.get("spec", {})
    gen = spec.get("generator", {})
    lines = [
        f"# {title or 'Dataset ' + manifest['dataset_id']}",
        "",
        "Image/mask pairs for unsupervised object segmentation, made by `factory generate` "
        "(Voynov, Morozov & Babenko, ICML 2021: mask = gray(G(z)) < gray(G(z + r·h))).",
        "",
        "| field | value |",
        "|---|---|",
        f"| dataset id | `{manifest['dataset_id']}` |",
        f"| samples | {manifest['samples']:,} |",
        f"| shards | {len(manifest['shards'])} |",
        f"| bytes | {manifest.get('bytes', 0):,} |",
        f"| generator | {gen.get('name')} ({', '.join(f'{k}={v}' for k, v in sorted(gen.items()) if k not in ('name', 'config'))}) |",
        f"| direction | {json.dumps(spec.get('direction'))} |",
        f"| shift r | {spec.get('shift_r')} |",
        f"| mask rule | {spec.get('mask_rule')} (CC cleanup ratio {spec.get('cc_ratio')}) |",
        f"| latents | {json.dumps(spec.get('latents'))} |",
        f"| images | {json.dumps(spec.get('image_codec'))} |",
        f"| recipe | {manifest.get('recipe') or '-'} |",
        f"| format version | {manifest['format_version']} |",
        f"| code version | {manifest.get('code_version')} |",
        f"| platform | {platforms_line(manifest) or '-'} |",
        "",
        "## Filter statistics (one index row per candidate, rejected or not)",
        "",
        "```json",
        json.dumps(stats, indent=1),
        "```",
        "",
    ]
    if preview:
        lines += [f"![preview]({preview})", ""]
    return "\n".join(lines + contents_section(manifest) + load_section(root, manifest))


def contents_section(manifest: dict) -> list[str]:
    """The card's "What the shards hold": every candidate (or a view's), and where the decisions are."""
    spec = manifest.get("spec", {}) or {}
    prov = manifest.get("provenance")
    what = (f"The samples the view `{prov['view_id']}` accepted (predicate above); the flags below still say "
            "which of them pass the paper's filters." if prov else
            "**Every generated candidate, rejected ones included**: no filter has removed anything.")
    return [
        "## What the shards hold",
        "",
        what + " The decisions are in each sample's `KEY.json` (`fg_ratio`, "
        f"`pass_area` = fg_ratio < {spec.get('max_fg', 0.5)}, `pass_hist_reference` = the authors' histogram "
        "filter) and in the index (`index/*.parquet`: the same columns and `pass_hist_paper`, `hist`, "
        "`n_components`...). The paper's default filter is `pass_area and pass_hist_reference`.",
        "",
        "Read only the accepted ones through a view (a predicate over the index; no pixel is read):",
        "",
        "```sh",
        "factory filter . --max-fg 0.5 --histogram reference --out view.json   # then: trainers train --data view.json",
        "factory filter . --max-fg 0.5 --histogram reference --materialize --out ../accepted   # or a compact copy",
        "```",
        "",
        "or with the flags of each sample's JSON, as `select(accepted)` does below.",
        "",
    ]


def shards_url(root: str | None, manifest: dict) -> list[str]:
    """The snippet's lines naming the dataset's folder and its shards (brace-expanded, as webdataset reads)."""
    last = f"{{000000..{len(manifest['shards']) - 1:06d}}}"
    if root is None:
        where, note = "path/to/this/dataset", "this dataset's folder (the one holding this README.md)"
    elif fmt.is_remote_url(root):
        where, note = root, "where this dataset was written"
    else:
        where, note = os.path.abspath(root), "where this dataset was written; change it if you move the folder"
    lines = [f"DATASET = {json.dumps(where)}  # {note}"]
    if where.startswith("s3://"):  # stock webdataset has no s3 scheme: stream through the aws CLI
        return lines + [f'SHARDS = f"pipe:aws s3 cp {{DATASET}}/shards/{last}.tar -"']
    return lines + [f'SHARDS = DATASET + "/shards/{last}.tar"']


def load_section(root: str | None, manifest: dict) -> list[str]:
    """The card's "Load it": a stock-webdataset snippet that keeps the mask single-channel."""
    image = fmt.image_member(manifest)
    return [
        "## Load it",
        "",
        "With plain webdataset (no factory code needed). Stock `.decode(\"pil\")` alone turns the mask into a "
        "3-channel RGB image, and `.decode(\"l\")` keeps it single-channel but makes the image gray too: "
        "the `mask.png` handler below keeps the mask single-channel (mode `L`, 0 or 255) and the image RGB.",
        "",
        "```python",
        "import io",
        "import json",
        "",
        "import webdataset as wds",
        "from PIL import Image",
        "",
        *shards_url(root, manifest),
        "",
        "",
        "def gray(data):  # the mask as a single-channel PIL image",
        "    return Image.open(io.BytesIO(data)).convert(\"L\")",
        "",
        "",
        "def accepted(s):  # the paper's default filter, from the sample's JSON (before any pixel is decoded)",
        "    flags = json.loads(s[\"json\"])",
        "    return flags[\"pass_area\"] and flags[\"pass_hist_reference\"]",
        "",
        "",
        "ds = (wds.WebDataset(SHARDS, shardshuffle=False)",
        "      .select(accepted)  # drop this line to read every candidate, rejected ones included",
        "      .decode(wds.handle_extension(\"mask.png\", gray), \"pil\"))",
        "for s in ds:",
        f"    image, mask, latent = s[\"{image}\"], s[\"mask.png\"], s[\"latent.npy\"]  # RGB, L, float32 [dim_z]",
        "```",
        "",
        f"The rows of a view (a bitmap per shard), with the same stock reader: `rows = {VIEW_ROWS}` "
        "(`import base64, json`), then `.select(lambda s: int(s[\"__key__\"]) in rows)`.",
        "",
        "Filter without touching pixels: `factory filter . --max-fg 0.5 --histogram reference --out view.json`;",
        "check integrity: `factory verify .`; index: `index/*.parquet`; latents: `latents.zarr` [N, dim_z].",
        "",
    ]


PREVIEW = "preview.png"
# A view's accepted rows without factory code (docs/format.md, Views): bit i of shard's "bits" is row first + i.
VIEW_ROWS = ('{v["first"] + i for v in json.load(open("view.json"))["accepted"].values() '
             'for b in [base64.b64decode(v["bits"])] for i in range(v["n"]) if b[i >> 3] >> (i & 7) & 1}')
_STATS_HEADING = "## Filter statistics"


def provenance_section(prov: dict) -> str:
    """The card's "Provenance" section of a materialized view (placed before the filter statistics)."""
    made = ("Relabelled by `factory relabel` (teacher sha256 `" + prov["teacher"]["sha256"] + "`; each sample "
            "gains KEY.teacher.png and the index the agreement columns `teacher_*`)"
            if prov.get("kind") == "relabelled" else "Materialized by `factory filter --materialize`")
    return "\n".join([
        "## Provenance",
        "",
        f"{made} from dataset `{prov['parent']['dataset_id']}` "
        f"(at `{prov['parent']['url']}`), view `{prov['view_id']}`.",
        "",
        f"Predicate: `{prov['predicate']}`",
        "",
        "Lineage: " + " → ".join(f"`{s.get('predicate')}` ({s.get('samples')})" for s in prov.get("lineage", [])),
        "",
        "Keys and rows are renumbered; the index column `parent_row` (and `parent_key` in each KEY.json) "
        "names the sample in the parent.",
        "",
    ])


def _write_preview(root: str, manifest: dict, preview_samples: int) -> str | None:
    """Write the card's small preview.png; its name, or None (with a warning) when it cannot be drawn."""
    import sys

    try:
        from factory.dataset.preview import card_preview

        atomic_write(fmt.join(root, PREVIEW), card_preview(root, manifest, preview_samples))
        return PREVIEW
    except Exception as e:  # noqa: BLE001 - the card must not fail a finished job over a picture
        print(f"warning: no {PREVIEW} for the card of {root}: {type(e).__name__}: {e}", file=sys.stderr)
        return None


def write_card(root: str, manifest: dict, preview: str | None = None, preview_samples: int = 16) -> None:
    """Write README.md (and a small preview.png of the first shard's samples, linked from it)."""
    stats = manifest.get("index_stats") or index_stats(root, manifest, check_sha=False)
    if preview is None and manifest.get("shards") and preview_samples > 0:
        preview = _write_preview(root, manifest, preview_samples)
    prov = manifest.get("provenance")
    title = None
    if prov:
        how = "relabelled" if prov.get("kind") == "relabelled" else "materialized view"
        title = f"Dataset {manifest['dataset_id']} ({how} of {prov['parent']['dataset_id']})"
    text = render(manifest, stats, preview, title=title, root=root)
    if prov:
        text = text.replace(_STATS_HEADING, provenance_section(prov) + "\n" + _STATS_HEADING, 1)
    atomic_write(fmt.join(root, fmt.CARD), text.encode())
