"""End-to-end throughput benchmark: generator -> masks + stats -> encoding -> committed shards.

Runs the same code as `factory generate` (the DatasetWriter, make_shards, compute_batch) in this
process, with per-stage timers, on a throw-away dataset; plus a generator-only measurement.
"""
from __future__ import annotations

import os
import platform
import resource
import tempfile
import time

import numpy as np

from factory.device import pick_device
from factory.format import FactoryError
from factory.generate.compute import (
    Timers,
    cached_generator,
    cc_iterations_for,
    compute_batch,
    counters,
    sync_device,
)
from factory.generate.config import GenerateConfig
from factory.generate.engine import output_writer
from factory.generate.plan import Plan, ShardJob, make_plan
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


def bench_config(*, generator: str, n: int, batch_size: int, shard_size: int | None, device: str,
                 options: dict, out: str, image_codec: str) -> GenerateConfig:
    """The job a benchmark runs; generators other than shapes get a random unit direction
    (speed does not depend on the direction), saved beside `out`."""
    direction = None
    if generator != "shapes":
        from factory.generators import load_generator

        dim_z = load_generator(generator, device="cpu", **options).dim_z
        v = np.random.default_rng(0).standard_normal(dim_z).astype(np.float32)
        direction = os.path.join(os.path.dirname(out), "random_direction.npy")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        np.save(direction, v / np.linalg.norm(v))
    return GenerateConfig(n=n, out=out, generator=generator, generator_options=options, direction=direction,
                          shard_size=shard_size or n, batch_size=batch_size, device=device, workers=0,
                          progress=False, overwrite=True, image_codec=image_codec)


def warm_up(gen, plan: Plan, batch_size: int) -> None:
    """One batch through the production compute path (compilation, allocator, thread pool), untimed."""
    import torch

    spec = plan.spec
    compute_batch(gen, torch.from_numpy(plan.latent_source.rows(0, batch_size)).to(gen.device),
                  torch.as_tensor(plan.direction, device=gen.device), shift_r=spec["shift_r"],
                  mask_rule=spec["mask_rule"], max_fg=spec["max_fg"], operators=spec.get("operators"),
                  cc_ratio=spec["cc_ratio"])


def timed_passes(plan: Plan, job: ShardJob, *, trace_dir: str | None) -> dict:
    """1) the end-to-end rate over all shards, uninstrumented so the GPU/CPU overlap is what production
    gets; 2) per-stage times over (up to 4) shards with a sync after each stage; 3) optionally a trace."""
    device = job.device
    shard_ids = list(range(plan.n_shards))
    sync_device(device)
    redo0 = counters.get("cc_redo_batches", 0)
    t0 = time.perf_counter()
    statuses = make_shards(job, shard_ids, plan.latent_source)
    sync_device(device)
    wall = time.perf_counter() - t0
    redone = int(counters.get("cc_redo_batches", 0) - redo0)
    bad = [s for s in statuses if not s.get("ok")]
    if bad:
        raise FactoryError(f"bench: {bad[0]['error']}")
    timers = Timers()
    staged = shard_ids[: max(1, min(4, len(shard_ids)))]
    t0 = time.perf_counter()
    make_shards(job, staged, plan.latent_source, timers=timers)
    staged_wall = time.perf_counter() - t0
    S, n = plan.spec["shard_size"], plan.spec["n"]
    staged_n = sum(min(S, n - k * S) for k in staged)
    trace = None
    if trace_dir:
        trace = _trace_pass(trace_dir, shard_ids, lambda ids: make_shards(job, ids, plan.latent_source), device)
    return {"wall": wall, "redone": redone, "staged_wall": staged_wall, "staged_n": staged_n, "timers": timers,
            "trace": trace}


def run(*, generator: str = "shapes", n: int = 512, batch_size: int = 64, shard_size: int | None = None,
        device: str | None = None, generator_options: dict | None = None, out: str | None = None,
        generator_iters: int = 3, threads: int | None = None, trace_dir: str | None = None,
        image_codec: str = "png") -> dict:
    """Benchmark `factory generate`'s path on a throw-away dataset (or at `out`); returns the result row."""
    device = pick_device(device)
    tmp = None
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="factory-bench-")
        out = os.path.join(tmp.name, "ds")
    options = dict(generator_options or {})
    cfg = bench_config(generator=generator, n=n, batch_size=batch_size, shard_size=shard_size, device=device,
                       options=options, out=out, image_codec=image_codec)
    plan = make_plan(cfg)
    with output_writer(cfg, plan):
        gen = cached_generator(generator, options, device)
        warm_up(gen, plan, batch_size)
        reset_peak_memory(device)
        passes = timed_passes(plan, plan.job(out, batch_size=batch_size, device=device, threads=threads),
                              trace_dir=trace_dir)
        gen_rate = generator_rate(gen, 2 * batch_size, generator_iters, device)
    result = result_row(plan, passes, generator=generator, options=options, device=device,
                        batch_size=batch_size, gen_rate=gen_rate)
    if tmp is not None:
        tmp.cleanup()
    return result


def reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(torch.device(device))


def result_row(plan: Plan, passes: dict, *, generator: str, options: dict, device: str, batch_size: int,
               gen_rate: float) -> dict:
    """The benchmark's result (what `factory bench --json` prints)."""
    import torch

    n, wall, staged_wall, staged_n = plan.spec["n"], passes["wall"], passes["staged_wall"], passes["staged_n"]
    # generator/masks_stats/transfer run in the main thread; encoding and write overlap with them
    # in background threads, so shares of the staged wall time can add up to more than 1.
    stages = {k: round(v, 4) for k, v in passes["timers"].items()}
    peak = (torch.cuda.max_memory_allocated(device) if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {
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
        "image_codec": plan.spec["image_codec"]["image"],
        "wall_s": round(wall, 3),
        "candidates_per_s": round(n / wall, 2),
        "generator_images_per_s": round(gen_rate, 2),
        "cc_iterations": cc_iterations_for(device) or "host-checked",
        "cc_redo_batches": passes["redone"],
        "staged_run": {"samples": staged_n, "wall_s": round(staged_wall, 3),
                       "candidates_per_s": round(staged_n / staged_wall, 2)},
        "stage_seconds": stages,
        "stage_share": {k: round(v / staged_wall, 3) for k, v in stages.items()},
        "peak_memory_bytes": int(peak),
        "peak_memory_kind": "cuda_max_allocated" if device.startswith("cuda") else "process_max_rss",
        "trace": passes["trace"],
    }
