"""Dataset card (README.md inside every dataset): provenance, counts, statistics, how to load it."""
from __future__ import annotations

import json

import numpy as np

from factory import format as fmt
from factory.dataset.reader import load_index
from factory.fsio import atomic_write


def summary_stats(table) -> dict:
    """Filter statistics of an index table: fg ratio quantiles and pass rate of each filter."""
    if table is None or table.num_rows == 0:
        return {"samples": 0}
    out: dict = {"samples": table.num_rows}
    fg = table.column("fg_ratio").to_numpy()
    out["fg_ratio_quantiles"] = {q: round(float(np.quantile(fg, float(q))), 4) for q in ("0.05", "0.25", "0.5", "0.75", "0.95")}
    area = table.column("pass_area").to_numpy()
    hist_ref = table.column("pass_hist_reference").to_numpy()
    out["pass_rate"] = {
        "area": round(float(area.mean()), 4),
        "hist_reference": round(float(hist_ref.mean()), 4),
        "hist_paper": round(float(table.column("pass_hist_paper").to_numpy().mean()), 4),
        "area_and_hist_reference": round(float((area & hist_ref).mean()), 4),
    }
    out["components_mean"] = {
        "raw": round(float(table.column("n_components_raw").to_numpy().mean()), 3),
        "clean": round(float(table.column("n_components").to_numpy().mean()), 3),
    }
    if "true_iou" in table.column_names:
        iou = table.column("true_iou").to_numpy()
        out["true_iou_mean"] = {
            "all": round(float(iou.mean()), 4),
            "area_and_hist_reference": round(float(iou[area & hist_ref].mean()), 4) if (area & hist_ref).any() else None,
        }
    return out


def render(manifest: dict, stats: dict, preview: str | None = None, title: str | None = None) -> str:
    """The card's Markdown: provenance table, filter statistics, preview link, how to load it."""
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
    lines += [
        "## Load it",
        "",
        "With plain webdataset (no factory code needed):",
        "",
        "```python",
        "import webdataset as wds",
        f"ds = wds.WebDataset(\"{{root}}/shards/{{000000..{len(manifest['shards']) - 1:06d}}}.tar\").decode(\"pil\")",
        "for s in ds:",
        f"    image, mask, latent = s[\"{fmt.image_member(manifest)}\"], s[\"mask.png\"], s[\"latent.npy\"]",
        "```",
        "",
        "Filter without touching pixels: `factory filter . --max-fg 0.5 --histogram reference --out view.json`;",
        "check integrity: `factory verify .`; index: `index/*.parquet`; latents: `latents.zarr` [N, dim_z].",
        "",
    ]
    return "\n".join(lines)


PREVIEW = "preview.png"
_STATS_HEADING = "## Filter statistics"


def provenance_section(prov: dict) -> str:
    """The card's "Provenance" section of a materialized view (placed before the filter statistics)."""
    return "\n".join([
        "## Provenance",
        "",
        f"Materialized by `factory filter --materialize` from dataset `{prov['parent']['dataset_id']}` "
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
    stats = summary_stats(load_index(root, manifest, check_sha=False))
    if preview is None and manifest.get("shards") and preview_samples > 0:
        preview = _write_preview(root, manifest, preview_samples)
    prov = manifest.get("provenance")
    title = None
    if prov:
        title = f"Dataset {manifest['dataset_id']} (materialized view of {prov['parent']['dataset_id']})"
    text = render(manifest, stats, preview, title)
    if prov:
        text = text.replace(_STATS_HEADING, provenance_section(prov) + "\n" + _STATS_HEADING, 1)
    atomic_write(fmt.join(root, fmt.CARD), text.encode())
