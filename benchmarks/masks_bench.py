"""Benchmark: masks + CC cleanup + statistics for one batch of candidates.

Times ``make_masks`` + ``candidate_stats`` (the per-batch work the engine adds
after the two generator forwards) on realistic inputs: image pairs whose gray
difference is a smooth random field plus a little pixel noise, so the masks
have a few large blobs and some speckle, like BigBiGAN masks. Warms up,
synchronises, reports medians and the hardware.

    python benchmarks/masks_bench.py                     # cpu, batch 256, 128x128
    python benchmarks/masks_bench.py --device cuda --json
    python benchmarks/masks_bench.py --device cuda --cc-iterations 8   # the GPU pipeline's sync-free labelling
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from factory.masks import MASK_RULES, cc_cleanup, make_masks  # noqa: E402
from factory.stats import candidate_stats  # noqa: E402


def realistic_pair(batch: int, size: int, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [-1, 1] and shifted images whose gray difference is a smooth field with speckle."""
    gen = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.randn(batch, 3, 8, 8, generator=gen), size=(size, size), mode="bicubic", align_corners=False)
    img = torch.tanh(base + 0.1 * torch.randn(batch, 3, size, size, generator=gen))
    field = F.interpolate(torch.randn(batch, 1, 6, 6, generator=gen), size=(size, size), mode="bicubic", align_corners=False)
    offset = torch.rand(batch, 1, 1, 1, generator=gen) - 0.7  # foreground fractions from ~5% to ~90%
    delta = 0.3 * (field + offset) + 0.05 * torch.randn(batch, 1, size, size, generator=gen)
    shifted = torch.clamp(img + delta, -1, 1)
    return img.to(device), shifted.to(device)


def sync_device(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn, device: str, reps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    sync_device(device)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync_device(device)
        out.append(time.perf_counter() - t0)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default 5 on cpu, 50 on cuda)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--rule", default="luminance", choices=[r for r in MASK_RULES if r != "operators"])
    ap.add_argument("--cc-iterations", type=int, default=None,
                    help="fixed labelling updates without host checks (the GPU pipeline uses 8); default: host-checked")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    ap.add_argument("--profile", action="store_true", help="also print the torch.profiler table of one call")
    args = ap.parse_args(argv)
    dev = args.device
    cuda = dev.startswith("cuda")
    reps = args.reps or (50 if cuda else 5)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)

    img, sh = realistic_pair(args.batch, args.size, dev)

    K = args.cc_iterations

    def full():
        raw, clean, n_raw, n_clean = make_masks(img, sh, rule=args.rule, cc_iterations=K)[:4]
        return candidate_stats(img, sh, raw=raw, clean=clean, n_raw=n_raw, n_clean=n_clean)

    raw, clean, n_raw, n_clean = make_masks(img, sh, rule=args.rule)
    _, _, _, iterations = cc_cleanup(raw, return_iterations=True)
    st = candidate_stats(img, sh, raw=raw, clean=clean, n_raw=n_raw, n_clean=n_clean)

    t_full = _time(full, dev, reps, warmup)
    t_cc = _time(lambda: cc_cleanup(raw, iterations=K), dev, reps, warmup)
    t_stats = _time(lambda: candidate_stats(img, sh, raw=raw, clean=clean, n_raw=n_raw, n_clean=n_clean), dev, reps, warmup)
    med = statistics.median(t_full)
    result = {
        "device": dev,
        "device_name": torch.cuda.get_device_name(torch.device(dev)) if cuda else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "size": args.size,
        "rule": args.rule,
        "reps": reps,
        "median_batch_s": med,
        "median_image_us": med / args.batch * 1e6,
        "images_per_s": args.batch / med,
        "cost_of_12000_img_s": 12000 / args.batch * med,  # seconds of device time per second at 12k img/s
        "median_cc_cleanup_s": statistics.median(t_cc),
        "median_stats_s": statistics.median(t_stats),
        "cc_iterations": iterations,
        "cc_fixed_iterations": K,
        "cc_converged_fixed": None if K is None else float(cc_cleanup(raw, iterations=K)[3].float().mean()),
        "mean_fg_ratio_raw": float(st["fg_ratio_raw"].mean()),
        "mean_n_components_raw": float(st["n_components_raw"].float().mean()),
        "mean_n_components": float(st["n_components"].float().mean()),
        "pass_area": float(st["pass_area"].float().mean()),
        "pass_hist_reference": float(st["pass_hist_reference"].float().mean()),
    }
    if args.profile:
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        with torch.profiler.profile(activities=acts) as prof:
            full()
            sync_device(dev)
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=20), file=sys.stderr)
    if args.json:
        print(json.dumps(result))
        return result
    fixed = "" if K is None else f", fixed {K} (share converged {result['cc_converged_fixed']:.3f})"
    print(
        f"{dev} ({result['device_name']}, torch {result['torch']}, {result['threads']} threads) "
        f"batch {args.batch} x {args.size}x{args.size}, rule {args.rule}\n"
        f"  make_masks + candidate_stats: {med * 1e3:.2f} ms/batch, {result['median_image_us']:.1f} us/image, "
        f"{result['images_per_s']:.0f} img/s\n"
        f"  of which cc_cleanup {result['median_cc_cleanup_s'] * 1e3:.2f} ms, stats {result['median_stats_s'] * 1e3:.2f} ms\n"
        f"  CC iterations: {iterations} host-checked{fixed}; 12,000 img/s would cost {result['cost_of_12000_img_s']:.3f} s per second\n"
        f"  masks: mean fg {result['mean_fg_ratio_raw']:.3f}, components raw {result['mean_n_components_raw']:.1f} "
        f"-> kept {result['mean_n_components']:.1f}"
    )
    return result


if __name__ == "__main__":
    main()
