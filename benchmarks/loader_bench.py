"""Loader throughput: samples/s per DataLoader worker on 128 px shards, and whether 8 workers feed a GPU.

    python benchmarks/loader_bench.py                      # generates a 2,000-sample 128 px shapes dataset first
    python benchmarks/loader_bench.py --data /data/ds --workers 1,2,4 --steps-per-s 8 --json out.json

For each worker count K it times full epochs-slices of `TrainStream` through a
torch DataLoader (batch_size=None, the trainer's setup): the first batch is a
warm-up (worker start, first shard open) and is not counted; the rest are
timed, repeated, and the median reported. It also splits one worker's cost into
tar reading (headers + kept members) and PNG decoding + batching, in-process.

A GPU step at batch B and S steps/s needs B*S samples/s; the verdict assumes
workers scale linearly (one core each), which holds while cores are free.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402

from factory.generate.bench import cpu_name
from trainers.data import stream as td  # noqa: E402


def ensure_dataset(path: Path, n: int, resolution: int) -> Path:
    if (path / "manifest.json").exists():
        return path
    from factory.generate.config import GenerateConfig
    from factory.generate.engine import generate

    print(f"generating {n} shapes samples at {resolution} px into {path} ...", flush=True)
    generate(GenerateConfig(n=n, out=str(path), generator="shapes", generator_options={"resolution": resolution},
                            shard_size=250, workers=0, progress=True))
    return path


def time_loader(index, batch_size: int, workers: int, batches: int, seed: int) -> float | None:
    """Steady-state samples/s: skip the batches the workers prefetch while starting, time the next ones."""
    prefetch = 2
    warm = max(1, prefetch * workers)  # the queue filled during start-up would be counted as free batches
    stream = td.TrainStream(index, batch_size=batch_size, seed=seed, shuffle_window=len(index))
    batches = min(batches, stream.steps() - warm)
    if batches < 3:
        return None
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers,
                                         prefetch_factor=prefetch if workers else None)
    it = iter(loader)
    for _ in range(warm):
        next(it)
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += next(it)["image"].shape[0]
    dt = time.perf_counter() - t0
    del it
    return n / dt


def stage_split(index, batch_size: int) -> dict:
    """One worker's time per sample: reading the tar vs decoding + batching (in-process, one shard)."""
    shard = int(index.shards[0])
    rows = index.rows[index.shards == shard]
    info = index.shard_info[shard]
    t0 = time.perf_counter()
    members = td.read_shard(info, set(rows.tolist()), (td.fmt.EXT_IMAGE, index.mask_member))
    t1 = time.perf_counter()
    for r in rows.tolist():
        td.decode_sample(members[r], index.mask_member, "bench", image_member=index.image_member)
    t2 = time.perf_counter()
    return {"shard_samples": int(rows.size), "read_us_per_sample": 1e6 * (t1 - t0) / rows.size,
            "decode_us_per_sample": 1e6 * (t2 - t1) / rows.size}


def time_train_steps(device: str, batch_size: int, resolution: int, width: int, steps: int = 20,
                     deterministic: bool = True) -> dict:
    """U-Net training steps/s on synthetic tensors (the trainer's step: bf16 autocast on CUDA, BCE, Adam)."""
    import torch.nn.functional as F

    from trainers.model.unet import ModelConfig, UNet

    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic
    dev = torch.device(device)
    net = UNet(ModelConfig(width=width)).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(batch_size, 3, resolution, resolution, device=dev) * 2 - 1
    y = (torch.rand(batch_size, 1, resolution, resolution, device=dev) > 0.5).float()

    def step():
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            logits = net(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name()
    return {"device": name, "deterministic": deterministic, "batch_size": batch_size, "resolution": resolution,
            "width": width, "median_step_s": med, "steps_per_s": 1 / med, "samples_per_s": batch_size / med}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="dataset or view (default: generate --n samples at --resolution)")
    p.add_argument("--cache", default="/tmp/loader-bench-ds128", help="where to generate the dataset")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=95)
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    p.add_argument("--batches", type=int, default=8, help="timed batches per measurement")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps-per-s", type=float, default=8.0,
                   help="GPU training speed to feed (steps/s at --batch-size)")
    p.add_argument("--target-workers", type=int, default=8)
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--measure-steps", metavar="DEVICE",
                   help="also time U-Net training steps on DEVICE (e.g. cuda) and use that speed as --steps-per-s")
    p.add_argument("--width", type=int, default=64, help="U-Net width for --measure-steps")
    a = p.parse_args(argv)

    url = a.data or str(ensure_dataset(Path(a.cache), a.n, a.resolution))
    index = td.open_index(url, split="all")
    res = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "load_avg_1m": os.getloadavg()[0]},
        "data": {"url": url, "samples": len(index), "resolution": index.resolution},
        "batch_size": a.batch_size, "stages": stage_split(index, a.batch_size), "workers": {},
    }
    for k in [int(x) for x in a.workers.split(",")]:
        runs = [time_loader(index, a.batch_size, k, a.batches, seed) for seed in range(a.repeats)]
        if None in runs:
            print(f"K={k}: skipped, the dataset has too few batches to time {k} workers past their prefetch")
            continue
        med = statistics.median(runs)
        res["workers"][k] = {"samples_per_s": med, "per_worker": med / max(k, 1), "runs": runs}
        print(f"K={k}: {med:8.1f} samples/s total, {med / max(k, 1):8.1f} per worker "
              f"(runs {', '.join(f'{r:.0f}' for r in runs)})", flush=True)
    if a.measure_steps:
        for det in (True, False):
            m = time_train_steps(a.measure_steps, a.batch_size, index.resolution or a.resolution, a.width,
                                 deterministic=det)
            res.setdefault("train_steps", []).append(m)
            print(f"train step on {m['device']} (deterministic={det}): {m['steps_per_s']:.2f} steps/s = "
                  f"{m['samples_per_s']:.0f} samples/s at batch {a.batch_size}, {m['resolution']} px, "
                  f"width {a.width}", flush=True)
        a.steps_per_s = max(m["steps_per_s"] for m in res["train_steps"])
    real = {k: v for k, v in res["workers"].items() if k >= 1} or res["workers"]  # K=0 is in-process
    per_worker = max(v["per_worker"] for v in real.values())
    need = a.batch_size * a.steps_per_s
    supply = per_worker * a.target_workers
    res["verdict"] = {"need_samples_per_s": need, "steps_per_s": a.steps_per_s,
                      "target_workers": a.target_workers, "per_worker_samples_per_s": per_worker,
                      "supply_samples_per_s": supply, "keeps_gpu_fed": bool(supply >= need),
                      "workers_needed": int(np.ceil(need / per_worker))}
    st = res["stages"]
    print(f"one worker: read {st['read_us_per_sample']:.0f} us/sample, decode+normalise "
          f"{st['decode_us_per_sample']:.0f} us/sample ({st['shard_samples']} samples of one shard)")
    print(f"machine: {res['machine']['cpu']}, {res['machine']['cores']} cores, load {res['machine']['load_avg_1m']:.1f}")
    print(f"GPU at {a.steps_per_s} steps/s x batch {a.batch_size} needs {need:.0f} samples/s; "
          f"{a.target_workers} workers x {per_worker:.0f} = {supply:.0f} samples/s -> "
          f"{'fed' if supply >= need else 'STARVED'} (needs {res['verdict']['workers_needed']} workers)")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
