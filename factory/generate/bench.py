"""End-to-end throughput benchmark: generator -> masks + stats -> encoding -> committed shards.

Runs the same code as `factory generate` (make_shard) in this process, with
per-stage timers, on a throw-away dataset; plus a generator-only measurement.
"""
from __future__ import annotations

import os
import platform
import resource
import tempfile
import time

import numpy as np

from factory.dataset.writer import prepare_output
from factory.device import pick_device
from factory.generate.compute import (
    Timers,
    cached_generator,
    cc_iterations_for,
    compute_batch,
    sync_device,
)
from factory.generate.config import GenerateConfig
from factory.generate.compute import counters
from factory.generate.plan import make_plan
from factory.generate.worker import make_shards


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo where present)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs)"


def generator_rate(gen, batch: int, iters: int, device: str) -> float:
    """Median images/s of the generator alone at `batch` (after one warm-up)."""
    import torch

    z = torch.randn(batch, gen.dim_z, generator=torch.Generator().manual_seed(0)).to(gen.device)
    times = []
    with torch.no_grad():
        for i in range(iters + 1):
            sync_device(device)
            t0 = time.perf_counter()
            gen(z)
            sync_device(device)
            if i:
                times.append(time.perf_counter() - t0)
    return batch / float(np.median(times))


def busy_share(trace: dict) -> dict:
    """GPU kernel occupancy of a chrome trace (torch.profiler export): the union of kernel intervals
    over the span from the first to the last event. Low occupancy in the pipeline = the GPU waits
    for the CPU (launches, synchronisations); high = the kernels themselves are the limit."""
    events = trace.get("traceEvents", []) if isinstance(trace, dict) else trace
    spans = [(float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))) for e in events
             if e.get("ph") == "X" and "ts" in e]
    kernels = sorted((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))) for e in events
                     if e.get("ph") == "X" and e.get("cat") == "kernel")
    if not spans:
        return {"span_s": 0.0, "kernel_busy_s": 0.0, "gpu_busy_share": None, "kernels": 0}
    span = max(b for _, b in spans) - min(a for a, _ in spans)
    busy, cur = 0.0, None
    for a, b in kernels:
        if cur is None or a > cur[1]:
            if cur is not None:
                busy += cur[1] - cur[0]
            cur = [a, b]
        else:
            cur[1] = max(cur[1], b)
    if cur is not None:
        busy += cur[1] - cur[0]
    return {"span_s": round(span / 1e6, 6), "kernel_busy_s": round(busy / 1e6, 6),
            "gpu_busy_share": round(busy / span, 4) if kernels and span > 0 else None, "kernels": len(kernels)}


def _trace_pass(trace_dir: str, shard_ids, run_shards, device: str) -> dict:
    """One more pass over the first shard under torch.profiler: DIR/trace.json.gz (Perfetto,
    chrome://tracing), DIR/ops.txt (top operators), and the GPU occupancy of the pass."""
    import gzip
    import json
    import shutil

    import torch

    os.makedirs(trace_dir, exist_ok=True)
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.startswith("cuda"):
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        run_shards(shard_ids[:1])
        sync_device(device)
    path = os.path.join(trace_dir, "trace.json")
    prof.export_chrome_trace(path)
    key = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    with open(os.path.join(trace_dir, "ops.txt"), "w") as f:
        f.write(prof.key_averages().table(sort_by=key, row_limit=40))
    with open(path) as f:
        occ = busy_share(json.load(f))
    with open(path, "rb") as src, gzip.open(path + ".gz", "wb", compresslevel=6) as dst:
        shutil.copyfileobj(src, dst)
    os.remove(path)
    return {"dir": trace_dir, **occ}


def run(generator: str = "shapes", n: int = 512, batch_size: int = 64, shard_size: int | None = None,
        device: str | None = None, generator_options: dict | None = None, out: str | None = None,
        generator_iters: int = 3, threads: int | None = None, trace_dir: str | None = None,
        image_codec: str = "png") -> dict:
    import torch

    device = pick_device(device)
    tmp = None
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="factory-bench-")
        out = os.path.join(tmp.name, "ds")
    options = dict(generator_options or {})
    direction = None
    if generator != "shapes":  # speed does not depend on the direction: a random unit vector
        from factory.generators import load_generator

        dim_z = load_generator(generator, device="cpu", **options).dim_z
        v = np.random.default_rng(0).standard_normal(dim_z).astype(np.float32)
        direction = os.path.join(os.path.dirname(out), "random_direction.npy")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        np.save(direction, v / np.linalg.norm(v))
    cfg = GenerateConfig(n=n, out=out, generator=generator, generator_options=options, direction=direction,
                                shard_size=shard_size or n, batch_size=batch_size, device=device, workers=0,
                                progress=False, overwrite=True, image_codec=image_codec)
    plan = make_plan(cfg)
    prepare_output(cfg, plan)
    gen = cached_generator(generator, options, device)
    # Warm-up shard-sized pass (compilation, allocator, thread pool) outside the timed region.
    warm = compute_batch(gen, torch.from_numpy(plan.latent_source.rows(0, batch_size)).to(gen.device),
                                torch.as_tensor(plan.direction, device=gen.device), plan.spec["shift_r"],
                                plan.spec["mask_rule"], plan.spec["max_fg"])
    del warm
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(torch.device(device))
    shard_ids = list(range(plan.n_shards))
    common = dict(batch_size=batch_size, device=device, threads=threads)
    # 1) end-to-end rate, uninstrumented so the GPU/CPU overlap is what production gets
    sync_device(device)
    redo0 = counters.get("cc_redo_batches", 0)
    t0 = time.perf_counter()
    statuses = make_shards(plan.spec, plan.spec_hash, shard_ids, out, generator, options,
                                  plan.direction, plan.latent_source, **common)
    sync_device(device)
    wall = time.perf_counter() - t0
    redone = int(counters.get("cc_redo_batches", 0) - redo0)
    bad = [s for s in statuses if not s.get("ok")]
    if bad:
        raise RuntimeError(bad[0]["error"])
    # 2) per-stage times: a second pass over (up to 4) shards with a sync after each stage
    timers = Timers()
    staged = shard_ids[: max(1, min(4, len(shard_ids)))]
    t0 = time.perf_counter()
    make_shards(plan.spec, plan.spec_hash, staged, out, generator, options, plan.direction,
                       plan.latent_source, timers=timers, **common)
    staged_wall = time.perf_counter() - t0
    staged_n = sum(min(plan.spec["shard_size"], n - k * plan.spec["shard_size"]) for k in staged)
    trace = None
    if trace_dir:
        trace = _trace_pass(trace_dir, shard_ids, lambda ids: make_shards(
            plan.spec, plan.spec_hash, ids, out, generator, options, plan.direction, plan.latent_source,
            **common), device)
    gen_rate = generator_rate(gen, 2 * batch_size, generator_iters, device)
    # generator/masks_stats/transfer run in the main thread; encoding and write overlap with them
    # in background threads, so shares of the staged wall time can add up to more than 1.
    stages = {k: round(v, 4) for k, v in timers.items()}
    peak = (torch.cuda.max_memory_allocated(device) if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    result = {
        "generator": generator,
        "generator_options": {k: v for k, v in options.items() if k != "weights"},
        "resolution": plan.resolution,
        "n": n,
        "batch_size": batch_size,
        "forward_batch": 2 * batch_size,
        "shards": plan.n_shards,
        "device": device,
        "device_name": _device_name(device),
        "torch_threads": torch.get_num_threads(),
        "dtype": options.get("autocast") or "fp32",
        "image_codec": image_codec,
        "wall_s": round(wall, 3),
        "candidates_per_s": round(n / wall, 2),
        "generator_images_per_s": round(gen_rate, 2),
        "cc_iterations": cc_iterations_for(device) or "host-checked",
        "cc_redo_batches": redone,
        "staged_run": {"samples": staged_n, "wall_s": round(staged_wall, 3),
                       "candidates_per_s": round(staged_n / staged_wall, 2)},
        "stage_seconds": stages,
        "stage_share": {k: round(v / staged_wall, 3) for k, v in stages.items()},
        "peak_memory_bytes": int(peak),
        "peak_memory_kind": "cuda_max_allocated" if device.startswith("cuda") else "process_max_rss",
        "trace": trace,
    }
    if tmp is not None:
        tmp.cleanup()
    return result
