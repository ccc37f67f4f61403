"""Scoring candidate directions (paper §3.2): fit and evaluate the operators of every candidate, select
the segmenting one, optionally refine it, orient it, and write the table, operators, direction and figures.
Also the mask IoU of a direction against a generator's ground truth (the shapes world)."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from factory.device import pinned_threads, run_record, torch_device
from factory.directions.common import (
    auto_names,
    load_candidates,
    load_names,
    open_generator,
    seed_of,
)
from factory.directions.figures import figure1, figure2
from factory.directions.operators import evaluate_operators, fit_operators
from factory.directions.refine import RefineConfig, refine_direction, refine_value
from factory.format import FactoryError
from factory.fsio import atomic_json, atomic_save_npy, atomic_write
from factory.masks import luminance_mask, make_masks


def select(loss: np.ndarray, distance: np.ndarray, keep_best: float) -> int:
    """Index of the largest operator distance among the ``ceil(keep_best * K)`` lowest losses (ties: lower index)."""
    pool = _kept(loss, keep_best)
    best = pool[np.argmax(distance[pool])]
    return int(best)


def _kept(loss: np.ndarray, keep_best: float) -> np.ndarray:
    """Indices of the ``ceil(keep_best * K)`` lowest losses, best first (ties: lower index)."""
    n_keep = max(1, int(math.ceil(keep_best * len(loss) - 1e-9)))
    return np.argsort(loss, kind="stable")[:n_keep]


@torch.no_grad()
def _luminance_fg(gen, h: torch.Tensor, *, scale: float, n: int, seed: int) -> float:
    g = torch.Generator().manual_seed(seed_of(seed, 3))
    z = torch.randn(n, h.shape[0], generator=g).to(gen.device)
    x, y = gen(z), gen(z + scale * h[None])
    return float(luminance_mask(x, y).float().mean())


# ----------------------------------------------------------------- score

@dataclass
class ScoreConfig:
    generator: str
    candidates: str
    out: str
    generator_options: dict = field(default_factory=dict)  # load_generator's options (cli: GeneratorFlags.options())
    class_id: int | None = None  # class-conditional generators: the class of every latent
    names: str | None = None
    scale: float = 5.0
    steps: int = 200
    batch: int = 4
    lr: float = 0.005
    keep_best: float = 0.7
    loss: str = "relative"  # which loss ranks candidates for keep_best: relative | absolute
    eval_n: int = 32
    seed: int = 0
    device: str | None = None
    threads: int = 1  # torch CPU threads, pinned: the floats of a CPU run can depend on the count
    progress: bool = True
    figures: bool = True
    refine_top: int = 3  # refine this many kept candidates (largest distance first); keep the best objective
    # refine.steps > 0: refine the selection by maximising the criterion itself (refine_direction)
    refine: RefineConfig = field(default_factory=lambda: RefineConfig(steps=0))

    def validate(self) -> None:
        if not (isinstance(self.refine_top, int) and self.refine_top > 0):
            raise FactoryError(f"--refine-top must be a positive number of candidates, got {self.refine_top!r}")
        self.refine.validate()
        if not (isinstance(self.steps, int) and self.steps > 0):
            raise FactoryError(f"--steps must be a positive number of Adam steps, got {self.steps!r}")
        if not (isinstance(self.batch, int) and self.batch > 0):
            raise FactoryError(f"--batch must be a positive number of latents per step, got {self.batch!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise FactoryError(f"--lr must be a positive learning rate, got {self.lr!r}")
        if not (0 < self.keep_best <= 1):
            raise FactoryError(f"--keep-best must be a fraction in (0, 1], got {self.keep_best!r}")
        if not (math.isfinite(self.scale) and self.scale != 0):
            raise FactoryError(f"--scale must be a finite non-zero shift, got {self.scale!r}")
        if self.loss not in ("relative", "absolute"):
            raise FactoryError(f"--loss must be 'relative' or 'absolute', got {self.loss!r}")
        if not (isinstance(self.eval_n, int) and self.eval_n > 0):
            raise FactoryError(f"--eval-n must be a positive number of held-out latents, got {self.eval_n!r}")


def score(cfg: ScoreConfig, log=None) -> dict:
    """Fit, evaluate and select (paper §3.2); write the table, operators, direction and figures under ``cfg.out``.

    Returns the JSON summary (also written as ``scores.json``).
    """
    cfg.validate()
    with pinned_threads(cfg.threads):
        return _score(cfg)


def _score(cfg: ScoreConfig) -> dict:
    t_start = time.perf_counter()
    device = torch_device(cfg.device)
    gen = open_generator(cfg.generator, device, cfg.generator_options, class_id=cfg.class_id)
    cand = load_candidates(cfg.candidates, gen.dim_z)
    K = cand.shape[0]
    names = load_names(cfg.names, K) or auto_names(gen, cand)
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FactoryError(f"--out {out} is not writable ({e.strerror or e}); choose a folder you can write") from None

    dirs = torch.as_tensor(cand, device=gen.device)
    t0 = time.perf_counter()
    ops = fit_operators(gen, dirs, scale=cfg.scale, steps=cfg.steps, batch=cfg.batch, lr=cfg.lr, seed=cfg.seed,
                        progress=cfg.progress, desc=f"score {K} directions")
    t_fit = time.perf_counter() - t0
    loss_abs, loss_rel, dist = evaluate_operators(gen, dirs, ops, scale=cfg.scale, n=cfg.eval_n, seed=cfg.seed)
    loss = loss_rel if cfg.loss == "relative" else loss_abs
    sel = select(loss, dist, cfg.keep_best)

    h = dirs[sel]
    refined = None
    if cfg.refine.steps > 0:
        h, refined = _refine_selection(gen, dirs, cfg, loss=loss, dist=dist, sel=sel)

    # Orientation: objects are the minority of pixels under the luminance rule.
    fg = _luminance_fg(gen, h, scale=cfg.scale, n=cfg.eval_n, seed=cfg.seed)
    flipped = fg > 0.5
    ops_sel = ops[sel]
    if flipped:
        h = -h
    if flipped or refined is not None:  # operators of a direction that is not a scored candidate
        ops_sel = fit_operators(gen, h[None], scale=cfg.scale, steps=cfg.steps, batch=cfg.batch, lr=cfg.lr,
                                seed=cfg.seed, progress=cfg.progress, desc="refit operators")[0]
        fg = _luminance_fg(gen, h, scale=cfg.scale, n=cfg.eval_n, seed=cfg.seed)
    kept = set(_kept(loss, cfg.keep_best).tolist())
    n_keep = len(kept)
    rows = [
        {"index": i, "name": names[i], "loss": float(loss_abs[i]), "loss_relative": float(loss_rel[i]),
         "distance": float(dist[i]), "kept": i in kept, "selected": i == sel}
        for i in range(K)
    ]
    ops_np = ops.cpu().numpy().astype(np.float32)
    atomic_save_npy(out / "operators.npy", ops_np)
    atomic_save_npy(out / "operators_selected.npy", ops_sel.cpu().numpy().astype(np.float32))
    atomic_save_npy(out / "direction.npy", h.cpu().numpy().astype(np.float32))
    _write_table(out / "scores.parquet", rows)
    if cfg.figures:
        figure1(out / "figure1.png", rows, cfg.keep_best, cfg.loss)
        figure2(out / "figure2.png", gen, h, ops_sel, scale=cfg.scale, seed=cfg.seed)
    summary = {
        "selected": sel,
        "selected_name": names[sel],
        "flipped": bool(flipped),
        "selected_luminance_fg_ratio": fg,
        "refined": refined,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("progress", "figures")},
        "generator": gen.identity(),
        "device": str(gen.device),
        "run": run_record(gen.device),
        "candidates": K,
        "kept": n_keep,
        "seconds_fit": t_fit,
        "seconds_total": time.perf_counter() - t_start,
        "files": ["scores.parquet", "scores.json", "operators.npy", "operators_selected.npy", "direction.npy"]
        + (["figure1.png", "figure2.png"] if cfg.figures else []),
        "rows": rows,
    }
    atomic_json(out / "scores.json", summary)
    return summary


def _refine_selection(gen, dirs: torch.Tensor, cfg: ScoreConfig, *, loss: np.ndarray, dist: np.ndarray, sel: int):
    """Refine the ``refine_top`` kept candidates with the largest distance (the selected one first) by
    ``refine_direction``; return the refined direction with the best held-out objective and a report."""
    pool = _kept(loss, cfg.keep_best)
    others = [int(i) for i in pool[np.argsort(-dist[pool], kind="stable")] if i != sel]
    starts = [sel] + others[: cfg.refine_top - 1]
    t0 = time.perf_counter()
    results = []
    for i in starts:
        h0 = dirs[i]
        h = refine_direction(gen, h0, cfg.refine, scale=cfg.scale, seed=cfg.seed, progress=cfg.progress,
                             desc=f"refine candidate {i}")
        before = refine_value(gen, h0, cfg.refine, scale=cfg.scale, seed=cfg.seed)
        after = refine_value(gen, h, cfg.refine, scale=cfg.scale, seed=cfg.seed)
        results.append({"start": i, "cos_to_start": float(h @ h0), "objective_before": before["objective"],
                        "after": after, "direction": h})
    best = max(range(len(results)), key=lambda j: results[j]["after"]["objective"])
    h = results[best]["direction"]
    report = {
        "chosen_start": results[best]["start"],
        "seconds": time.perf_counter() - t0,
        "runs": [{k: v for k, v in r.items() if k != "direction"} for r in results],
    }
    return h, report


def _write_table(path: Path, rows: list[dict]) -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "index": pa.array([r["index"] for r in rows], pa.int32()),
        "name": pa.array([r["name"] for r in rows], pa.string()),
        "loss": pa.array([r["loss"] for r in rows], pa.float64()),
        "loss_relative": pa.array([r["loss_relative"] for r in rows], pa.float64()),
        "distance": pa.array([r["distance"] for r in rows], pa.float64()),
        "kept": pa.array([r["kept"] for r in rows], pa.bool_()),
        "selected": pa.array([r["selected"] for r in rows], pa.bool_()),
    })
    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write(path, buf.getvalue())


# ----------------------------------------------------------------- mask quality (shapes world)

@torch.no_grad()
def mask_iou(gen, direction, *, scale: float = 5.0, n: int = 256, seed: int = 0, rule: str = "luminance",
             operators=None, batch: int = 64) -> dict:
    """Mean per-image IoU with ``gen.true_mask`` of the raw and CC-cleaned masks of ``rule`` along ``direction``."""
    if not hasattr(gen, "true_mask"):
        raise FactoryError("mask IoU needs a generator with ground truth (true_mask), e.g. shapes")
    h = torch.as_tensor(np.asarray(direction, np.float32), device=gen.device)
    g = torch.Generator().manual_seed(seed_of(seed, 5))
    z_all = torch.randn(n, gen.dim_z, generator=g)
    ops = None if operators is None else torch.as_tensor(np.asarray(operators, np.float32))
    ious = {"raw": [], "clean": []}
    for b0 in range(0, n, batch):
        z = z_all[b0 : b0 + batch].to(gen.device)
        x, y = gen(z), gen(z + scale * h[None])
        raw, clean, _, _ = make_masks(x, y, rule=rule, operators=ops)
        truth = gen.true_mask(z)
        for k, m in (("raw", raw), ("clean", clean)):
            inter = (truth & m).flatten(1).sum(1).float()
            union = (truth | m).flatten(1).sum(1).float()
            ious[k].append(torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)))
    return {k: float(torch.cat(v).mean()) for k, v in ious.items()}
