"""Benchmarks of `factory directions` on the shapes world.

Two parts, both printing one JSON object (hardware included):

``time``  -- scoring time of K candidates with the paper's settings (steps 200, batch 4).
             Warm-up steps are not timed; ``--measure-steps N`` (< steps) times N steps and
             extrapolates the fit linearly to ``--steps`` (said so in the output: "extrapolated").
             The held-out evaluation (loss + distance) is always run in full.

``quality`` -- mean per-image IoU with the world's ground truth (``true_mask``) of the masks of
             several directions and rules: the true ``background`` direction (luminance rule),
             and each ``--scored DIR`` of `factory directions score` (its direction.npy with the
             luminance rule, and its operators_selected.npy with the operators rule).

Examples:
  python benchmarks/directions_bench.py time --k 120 --resolution 128 --measure-steps 10
  python benchmarks/directions_bench.py quality --resolution 64 --n 512 --scored runs/random --scored runs/discovered
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from factory.directions.common import random_directions
from factory.directions.operators import (
    evaluate_operators,
    fit_operators,
    init_operators,
)
from factory.directions.score import mask_iou
from factory.generators import load_generator  # noqa: E402


def hardware() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def sync_device(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def bench_time(args) -> dict:
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    G = load_generator("shapes", resolution=args.resolution, device=str(dev))
    dirs = torch.as_tensor(random_directions(args.k, G.dim_z, seed=0), device=dev)
    measured = args.measure_steps or args.steps
    # Warm-up (allocator, first-call overheads), then per-step timings of the same loop fit_operators runs.
    fit_operators(G, dirs, scale=5.0, steps=args.warmup, batch=args.batch, lr=0.005, seed=99, warm_start=False)
    per_step = []
    for i in range(measured):
        sync_device(dev)
        t0 = time.perf_counter()
        fit_operators(G, dirs, scale=5.0, steps=1, batch=args.batch, lr=0.005, seed=i, warm_start=False)
        sync_device(dev)
        per_step.append(time.perf_counter() - t0)
    sync_device(dev)
    t0 = time.perf_counter()
    ops = init_operators(args.k, dev)
    evaluate_operators(G, dirs, ops, scale=5.0, n=args.eval_n, seed=0)
    sync_device(dev)
    t_eval = time.perf_counter() - t0
    med = statistics.median(per_step)
    fit = med * (args.steps + 1)  # + the closed-form warm start, which costs about one step
    return {
        "bench": "directions score fit + evaluation",
        "generator": f"shapes {args.resolution}px",
        "device": str(dev),
        "candidates": args.k,
        "steps": args.steps,
        "batch": args.batch,
        "eval_n": args.eval_n,
        "measured_steps": measured,
        "extrapolated": measured < args.steps,
        "median_step_s": med,
        "min_step_s": min(per_step),
        "fit_s": fit,
        "eval_s": t_eval,
        "total_s": fit + t_eval,
        "images_rendered_per_step": args.k * args.batch + args.batch,
        "hardware": hardware(),
    }


def bench_quality(args) -> dict:
    G = load_generator("shapes", resolution=args.resolution)
    rows = []
    bg = G.named_directions()["background"]
    for rule in ("luminance",):
        rows.append({"direction": "true background", "rule": rule,
                     **mask_iou(G, bg, n=args.n, seed=args.seed, rule=rule)})
    for sdir in args.scored:
        sdir = Path(sdir)
        h = np.load(sdir / "direction.npy")
        ops = np.load(sdir / "operators_selected.npy")
        summary = json.loads((sdir / "scores.json").read_text())
        label = f"{sdir.name} (selected {summary['selected']}, {summary['selected_name'] or 'unnamed'})"
        cos = float(h @ bg)
        rows.append({"direction": label, "rule": "luminance", "cos_to_background": cos,
                     **mask_iou(G, h, n=args.n, seed=args.seed, rule="luminance")})
        rows.append({"direction": label, "rule": "operators", "cos_to_background": cos,
                     **mask_iou(G, h, n=args.n, seed=args.seed, rule="operators", operators=ops)})
    ref = rows[0]["clean"]
    for r in rows:
        r["clean_vs_true_background"] = r["clean"] / ref
    return {"bench": "mask IoU vs ground truth", "generator": f"shapes {args.resolution}px", "n": args.n,
            "rows": rows, "hardware": hardware()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("time")
    t.add_argument("--k", type=int, default=120)
    t.add_argument("--resolution", type=int, default=128)
    t.add_argument("--steps", type=int, default=200)
    t.add_argument("--batch", type=int, default=4)
    t.add_argument("--eval-n", type=int, default=32)
    t.add_argument("--warmup", type=int, default=2)
    t.add_argument("--measure-steps", type=int, default=None, help="time this many steps and extrapolate")
    t.add_argument("--device")
    q = sub.add_parser("quality")
    q.add_argument("--resolution", type=int, default=64)
    q.add_argument("--n", type=int, default=512)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--scored", action="append", default=[], help="output folder of `factory directions score`")
    args = p.parse_args(argv)
    out = bench_time(args) if args.cmd == "time" else bench_quality(args)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
