"""`trainers benchmark`: every benchmark found under a folder, ours beside the paper's published rows.

The published numbers (acc / IoU / maxFβ) are those of shared/reference/benchmarks.md: the paper's
Tables 1 and 2 (BigBiGAN and E-BigBiGAN), its Table 4 ablation on ECSSD, and later work. Our row is
measured with trainers.eval.evaluate's protocol (the authors'); a benchmark not found is "not run".
"""
from __future__ import annotations

import os

import torch

from trainers.eval.evaluate import PROTOCOL, evaluate_model, model_on
from trainers.eval.layouts import DISPLAY, BenchmarkError, discover, open_benchmark
from trainers.eval.metrics import PAPER_LEGEND, PYSOD_LEGEND

# Published acc / IoU / maxFβ (shared/reference/benchmarks.md, Tables 1, 2 and 4 of the paper and
# later work); None = not reported.
PAPER_DATASETS = ("ECSSD", "DUTS-TE", "DUT-OMRON", "CUB", "Flowers")
PUBLISHED: list[dict] = [
    {"method": "BigBiGAN, z ~ N(0,I) (paper)",
     "scores": {"ECSSD": (.899, .672, .782), "DUTS-TE": (.878, .498, .608), "DUT-OMRON": (.856, .453, .549),
                "CUB": (.930, .683, .794), "Flowers": (.765, .540, .760)}},
    {"method": "E-BigBiGAN (paper)",
     "scores": {"ECSSD": (.906, .684, .797), "DUTS-TE": (.882, .511, .624), "DUT-OMRON": (.860, .464, .563),
                "CUB": (.940, .710, .834), "Flowers": (.904, .804, .878)}},
    {"method": "Paper Table 4: Base", "scores": {"ECSSD": (.859, .626, .737)}},
    {"method": "Paper Table 4: +ImageNet embeddings", "scores": {"ECSSD": (.874, .657, .773)}},
    {"method": "Paper Table 4: +size filter", "scores": {"ECSSD": (.900, .670, .781)}},
    {"method": "Paper Table 4: +histogram filter", "scores": {"ECSSD": (.900, .670, .779)}},
    {"method": "Paper Table 4: +CC filter", "scores": {"ECSSD": (.906, .684, .797)}},
    {"method": "Melas-Kyriazi et al. ICLR'22 (BigBiGAN, optimised direction)",
     "scores": {"ECSSD": (.915, .713, None), "DUTS-TE": (.893, .528, None), "DUT-OMRON": (.883, .509, None),
                "CUB": (.921, .664, .783), "Flowers": (.796, .541, .723)}},
    {"method": "TokenCut (DINO ViT-S/16)",
     "scores": {"ECSSD": (.918, .712, .803), "DUTS-TE": (.903, .576, .672), "DUT-OMRON": (.880, .533, .600)}},
    {"method": "FOUND (DINO ViT-S/8)",
     "scores": {"ECSSD": (.949, .807, None), "DUTS-TE": (.938, .645, None), "DUT-OMRON": (.912, .578, None)}},
]



def _fmt(v) -> str:
    return "—" if v is None else f"{v:.3f}".lstrip("0") if v < 1 else f"{v:.3f}"


def _cell(scores) -> str:
    if scores is None:
        return ""
    return " / ".join(_fmt(v) for v in scores)


def benchmark_markdown(results: list[dict], label: str = "Ours") -> str:
    """Markdown: paper rows and ours (acc / IoU / maxFβ), then our full metrics per dataset."""
    names = list(PAPER_DATASETS) + [r["name"] for r in results if r["name"] not in PAPER_DATASETS]
    ours = {r["name"]: (r["accuracy"], r["IoU"], r["maxF"]) for r in results}
    lines = ["acc / IoU / maxFβ (β² = 0.3), paper protocol; published rows from shared/reference/benchmarks.md",
             f"ours measured with {PROTOCOL}",
             "", "| Method | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for row in PUBLISHED:
        lines.append(f"| {row['method']} | " + " | ".join(_cell(row["scores"].get(n)) for n in names) + " |")
    lines.append(f"| **{label}** | " + " | ".join(_cell(ours.get(n)) if n in ours else "not run"
                                                   for n in names) + " |")
    lines += ["", "| Dataset | images | acc | IoU | maxFβ | MAE | pysod_maxF | pysod_Smeasure | pysod_maxE "
              "| pysod_MAE |", "|---" * 10 + "|"]
    for r in results:
        vals = [r.get(k) for k in ("accuracy", "IoU", "maxF", "MAE", "pysod_maxF", "pysod_Smeasure",
                                   "pysod_maxE", "pysod_MAE")]
        lines.append(f"| {r['name']} | {r['n_images']} | " + " | ".join(_fmt(v) for v in vals) + " |")
    lines += ["", f"acc, IoU, maxFβ, MAE: {PAPER_LEGEND}.", f"pysod_*: {PYSOD_LEGEND} (— when not computed)."]
    present = [n for n in PAPER_DATASETS if n in ours]
    if present:
        paper = PUBLISHED[:2]  # the paper's Table 1 / Table 2 rows
        lines += ["", "Ours beside the paper's Tables 1 and 2 (benchmarks present under the root):", "",
                  f"| Dataset | {label} | " + " | ".join(r["method"] for r in paper) + " |", "|---" * 4 + "|"]
        for n in present:
            lines.append(f"| {n} | {_cell(ours[n])} | " + " | ".join(_cell(r["scores"].get(n)) for r in paper) + " |")
    return "\n".join(lines) + "\n"


def benchmark(model: torch.nn.Module | str | os.PathLike, root: str | os.PathLike, *, device="auto",
              batch_size: int = 16, pysod: bool | None = None, label: str | None = None, progress: bool = False,
              limit: int | None = None) -> dict:
    """Evaluate on every benchmark discovered under ``root``; returns {datasets, published, markdown}.

    ``model``: a loaded module or a ``--model`` path (run folder or authors' .pth), loaded first. ``label``: the
    row's name (default: the run folder's name or the .pth's stem, ``Ours`` for a loaded module).
    """
    if label is None:
        from trainers.model.checkpoint import model_label

        label = model_label(model) if isinstance(model, (str, os.PathLike)) else "Ours"
    model, device = model_on(model, device)
    found = discover(root)
    if not found:
        raise BenchmarkError(f"no benchmark found under {str(root)!r}; expected the layouts of "
                             f"{', '.join(DISPLAY)} (see shared/reference/benchmarks.md)")
    results, used = [], set()
    for kind, path in found:
        ds = open_benchmark(kind, path)
        name = ds.name
        if name in used:
            name = f"{name} ({path})"
        used.add(name)
        m = evaluate_model(model, ds, device=device, batch_size=batch_size, pysod=pysod, progress=progress,
                           limit=limit)
        results.append({"name": name, "kind": kind, "path": str(path), **m})
    return {"root": str(root), "label": label, "datasets": results,
            "published": [{"method": r["method"], "scores": {k: dict(zip(("accuracy", "IoU", "maxF"), v))
                                                             for k, v in r["scores"].items()}}
                          for r in PUBLISHED],
            "markdown": benchmark_markdown(results, label)}
