"""Generator throughput of BigBiGAN-128 per precision / fast path.

Builds the full config with deterministic random weights (or the golden-size config with
--small), then for each variant: warm-up, timed iterations (CUDA events, median), max-abs
difference to the fp32 reference path on the same z, peak GPU memory. The fastest variant is
re-measured at --big-batch.

    python benchmarks/gpu_generator.py                       # H100: full model, batch 256
    python benchmarks/gpu_generator.py --json bench.json
    python benchmarks/gpu_generator.py --device cpu --batch 2 --iters 2 --small   # smoke test
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from factory.generators import load_generator  # noqa: E402
from factory.generators.bigbigan.checkpoint import random_state_dict
from factory.generators.bigbigan.model import BigBiGAN, BigBiGANConfig

SMALL = {"G_ch": 8, "dim_z": 24, "shared_dim": 16}

# name -> load_generator options
VARIANTS: dict[str, dict] = {
    "fp32": {},
    "fp32-fused": {"fused": True},
    "tf32": {"autocast": "tf32"},
    "bf16": {"autocast": "bf16", "fused": False},
    "bf16-fused": {"autocast": "bf16"},
    "bf16-fused+cl": {"autocast": "bf16", "channels_last": True},
    "bf16+cl+compile (unfused)": {"autocast": "bf16", "channels_last": True, "compile": True, "fused": False},
    "bf16-fused+cl+compile": {"autocast": "bf16", "channels_last": True, "compile": True},
    # torch.compile modes beyond the default: autotuned kernels (minutes to compile), CUDA graphs
    "bf16-fused+cl+compile max-autotune": {"autocast": "bf16", "channels_last": True,
                                           "compile": "max-autotune-no-cudagraphs"},
    "bf16-fused+cl+compile reduce-overhead": {"autocast": "bf16", "channels_last": True, "compile": "reduce-overhead"},
}


def sync_device(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_variant(g, z, iters: int, warmup: int) -> tuple[float, list[float]]:
    dev = z.device
    for _ in range(warmup):
        g(z)
    sync_device(dev)
    times = []
    for _ in range(iters):
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            g(z)
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t = time.perf_counter()
            g(z)
            times.append(time.perf_counter() - t)
    return statistics.median(times), times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--big-batch", type=int, default=None,
                    help="batch for re-measuring the fastest [default: 512 on CUDA, skipped on CPU; 0: skip]")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--small", action="store_true", help="golden-size config (G_ch 8, dim_z 24) for smoke tests")
    ap.add_argument("--variants", default="", help="comma list of variants (default: all; compile ones only on CUDA)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="include torch.compile variants [default: on CUDA only]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", dest="json_out", help="write the numbers here")
    args = ap.parse_args(argv)

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("CUDA not available; use --device cpu", file=sys.stderr)
        return 2
    use_compile = args.compile if args.compile is not None else dev.type == "cuda"
    if args.big_batch is None:
        args.big_batch = 512 if dev.type == "cuda" else 0
    names = [v for v in args.variants.split(",") if v] or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        print(f"unknown variants {unknown}; known: {list(VARIANTS)}", file=sys.stderr)
        return 2
    if not use_compile:
        names = [n for n in names if not VARIANTS[n].get("compile")]

    cfg = BigBiGANConfig.from_any(SMALL if args.small else None)
    with torch.device("meta"):
        shapes_model = BigBiGAN(cfg)
    t0 = time.perf_counter()
    sd = random_state_dict(shapes_model, args.seed)
    tmp = tempfile.TemporaryDirectory()
    wpath = Path(tmp.name) / "random.safetensors"
    from safetensors.torch import save_file

    save_file(sd, str(wpath))
    del sd
    print(f"random weights ({cfg.short()}) in {time.perf_counter() - t0:.1f}s", flush=True)

    gen = torch.Generator(device="cpu").manual_seed(args.seed + 1)
    z = torch.randn(args.batch, cfg.dim_z, generator=gen).to(dev)
    hw = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "python": platform.python_version(),
        "cuda": torch.version.cuda, "config": cfg.short(),
    }
    report = {"hardware": hw, "batch": args.batch, "iters": args.iters, "warmup": args.warmup, "results": []}

    def write():
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(report, indent=2))

    ref = None
    best = None  # (img/s, name, generator)
    for name in names:
        opts = dict(VARIANTS[name])
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        t = time.perf_counter()
        try:
            g = load_generator("bigbigan", weights=wpath, config=cfg, device=dev, **opts)
            first = time.perf_counter()
            out = g(z)
            sync_device(dev)
        except Exception as e:  # keep measuring the other variants
            msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
            report["results"].append({"variant": name, "options": opts, "error": msg})
            write()
            print(f"{name:28s} FAILED {msg}", flush=True)
            g = out = None
            gc.collect()
            continue
        first_s = time.perf_counter() - first
        if ref is None:
            ref = out.float()
        diff = (out.float() - ref).abs().max().item()
        med, times = time_variant(g, z, args.iters, args.warmup)
        peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
        row = {"variant": name, "options": {k: v for k, v in opts.items()}, "batch": args.batch,
               "img_per_s": args.batch / med, "median_s": med, "max_abs_diff_vs_fp32": diff,
               "peak_mem_gib": peak, "first_call_s": first_s, "load_s": first - t}
        report["results"].append(row)
        write()
        print(f"{name:28s} {row['img_per_s']:10.1f} img/s  max|d|={diff:.2e}  "
              f"peak={peak if peak is None else round(peak, 2)} GiB  first call {first_s:.1f}s", flush=True)
        if best is None or row["img_per_s"] > best[0]:
            best = (row["img_per_s"], name, g)
        del g, out
        gc.collect()

    if best is not None and args.big_batch and args.big_batch != args.batch:
        _, name, g = best
        zb = torch.randn(args.big_batch, cfg.dim_z, generator=gen).to(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        g(zb)
        med, _ = time_variant(g, zb, args.iters, args.warmup)
        peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
        row = {"variant": name, "batch": args.big_batch, "img_per_s": args.big_batch / med, "median_s": med,
               "peak_mem_gib": peak}
        report["big_batch"] = row
        write()
        print(f"{name} @ batch {args.big_batch}: {row['img_per_s']:.1f} img/s "
              f"({row['img_per_s'] / 2:.1f} candidates/s)", flush=True)

    print()
    print(f"| variant | batch | img/s | max abs diff vs fp32 | peak GiB |   ({hw['device']}, torch {hw['torch']})")
    print("|---|---|---|---|---|")
    for r in report["results"] + ([report["big_batch"]] if "big_batch" in report else []):
        if "error" in r:
            print(f"| {r['variant']} | {args.batch} | failed: {r['error'][:80]} | - | - |")
            continue
        pk = "-" if r.get("peak_mem_gib") is None else f"{r['peak_mem_gib']:.2f}"
        d = r.get("max_abs_diff_vs_fp32")
        print(f"| {r['variant']} | {r['batch']} | {r['img_per_s']:.1f} | {'-' if d is None else f'{d:.2e}'} | {pk} |")
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
