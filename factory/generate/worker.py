"""One shard on a worker: latents -> generator pair -> masks and statistics -> encoded tar records
-> committed shard (tar, index fragment, latent rows, sidecar).

Batches are software-pipelined: batch i+1's forwards are queued on the GPU before the CPU waits
for batch i's results, and encoding runs in a pool while the next batches compute. The commit of
shard k overlaps with the generation of shard k+1. A worker returns a small status row, never pixels.
"""
from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np

from factory import format as fmt
from factory.dataset.shards import commit_shard
from factory.device import pick_device
from factory.format import FactoryError
from factory.generate.compute import (
    Timers,
    cached_generator,
    cc_iterations_for,
    exact_masks_and_stats,
    generate_pair,
    masks_and_stats,
    needs_redo,
    sync_device,
    to_host,
)
from factory.generate.config import encoder_mode
from factory.generate.encode import (
    ENCODE_CHUNK,
    encode_chunk,
    encode_pool,
    encoder_processes,
)
from factory.generate.plan import ShardJob
from factory.provenance import check_same_platform, deterministic_kernels, platform_record


def make_shard(job: ShardJob, shard: int, latents, *, timers: Timers | None = None) -> dict:
    """Generate and commit one shard of `job` from the latent source `latents`. Returns a status row
    (never raises for a data error)."""
    return make_shards(job, [shard], latents, timers=timers)[0]


def make_shards(job: ShardJob, shard_ids: list[int], latents, *, timers: Timers | None = None) -> list[dict]:
    """Generate several shards; shard k's tar/index/latents commit overlaps with shard k+1's generation."""
    committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit")
    pending = []
    out = []
    try:
        for k in shard_ids:
            try:
                commit = generate_shard(job, k, latents, timers=timers)
            except Exception as e:  # noqa: BLE001 - data and storage errors become status rows, bugs propagate
                out.append(failed_row(k, e))
                continue
            pending.append((k, committer.submit(commit)))
        for k, fut in pending:
            try:
                out.append(fut.result())
            except Exception as e:  # noqa: BLE001 - as above
                out.append(failed_row(k, e))
    finally:
        committer.shutdown(wait=True)
    return sorted(out, key=lambda r: r["shard"])


def failed_row(shard: int, e: Exception) -> dict:
    """The status row of a shard that failed with a data or storage error (its traceback in ``detail``;
    ``stop``: the store is unreachable, so the job should not start more shards); re-raises anything else."""
    import traceback

    store = fmt.storage_error(e)
    if store is None and not isinstance(e, (FactoryError, OSError)):
        raise e
    where = fmt.shard_name(shard)
    return {"shard": shard, "ok": False, "error": f"shard {shard} ({where}): {store or e}",
            "stop": store is not None, "detail": "".join(traceback.format_exception(e))}


def shard_encoder_pool(device: str, threads: int | None):
    """Processes when this process drives a GPU (or FACTORY_ENCODER=processes), else threads."""
    import torch

    encoder = encoder_mode()
    if encoder == "processes" or (encoder == "auto" and device.startswith("cuda")):
        if device.startswith("cuda"):
            sys.setswitchinterval(0.0005)  # hand the GIL back to the GPU thread quickly
        return encode_pool(encoder_processes(os.cpu_count() or 4, torch.cuda.device_count()), processes=True)
    return encode_pool(max(2, threads or 1), processes=False)


class BatchPipeline:
    """The device side of one shard's batches: forwards, masks and statistics, host copies, exact redo."""

    def __init__(self, gen, spec: dict, *, direction, device: str, timers: Timers | None):
        import torch

        self.gen, self.device, self.timers = gen, device, timers
        self.h = torch.as_tensor(direction, dtype=torch.float32, device=gen.device)
        self.shift_r = spec["shift_r"]
        self.rule = dict(mask_rule=spec["mask_rule"], max_fg=spec["max_fg"], operators=spec.get("operators"),
                         cc_ratio=spec["cc_ratio"])
        self.keep_raw = spec["keep_raw_mask"]
        self.cuda = gen.device.type == "cuda"
        self.cc_iterations = cc_iterations_for(device)

    def time(self, stage: str, t0: float) -> None:
        if self.timers is not None:
            sync_device(self.device)
            self.timers.add(stage, time.perf_counter() - t0)

    def launch(self, z_np: np.ndarray, labels_np: np.ndarray | None = None):
        """Queue G(z) and G(z + r h) of a batch (with its classes, for a class-conditional generator);
        returns (z, (img, shifted)) on the device."""
        import torch

        z = torch.from_numpy(z_np).to(self.gen.device, non_blocking=True)
        labels = None if labels_np is None else torch.from_numpy(labels_np).to(self.gen.device)
        t0 = time.perf_counter()
        pair = generate_pair(self.gen, z, self.h, self.shift_r, labels=labels)
        self.time("generator", t0)
        return z, pair

    def host_tensors(self, batch: tuple, *, pinned: bool) -> dict:
        """Host copies of masks_and_stats' (img8, clean, raw, stats): img, clean, raw (if kept), s_NAME."""
        img8, clean, raw, stats = batch
        return to_host({"img": img8, "clean": clean, **({"raw": raw} if self.keep_raw else {}),
                        **{f"s_{k}": v for k, v in stats.items()}}, pinned=pinned)

    def queue_masks(self, z, pair):
        """Masks and statistics (sync-free labelling where enabled) and their queued host copies:
        (host tensors, CUDA event marking the copies' end or None)."""
        import torch

        t0 = time.perf_counter()
        batch = masks_and_stats(self.gen, z, *pair, **self.rule, cc_iterations=self.cc_iterations)
        self.time("masks_stats", t0)
        t0 = time.perf_counter()
        host = self.host_tensors(batch, pinned=self.cuda)
        done_evt = None
        if self.cuda:
            done_evt = torch.cuda.Event()
            done_evt.record()
        if self.timers is not None:
            if done_evt is not None:
                done_evt.synchronize()
            self.timers.add("transfer", time.perf_counter() - t0)
        return host, done_evt

    def collect(self, z, pair, host: dict, done_evt) -> dict:
        """Wait for a batch's host copies; redo it exactly if the sync-free labelling did not converge.
        Returns numpy arrays: img, clean, raw (or None) and the statistics under s_NAME."""
        if done_evt is not None:
            done_evt.synchronize()
        if needs_redo(host.pop("s_cc_converged", None)):
            batch = exact_masks_and_stats(self.gen, z, pair, **self.rule, timers=self.timers)
            host = self.host_tensors(batch, pinned=False)
        out = {k: v.numpy() for k, v in host.items()}
        out.setdefault("raw", None)
        return out


def submit_encoding(pool, host: dict, *, shard: int, row0: int, latents: np.ndarray, codec: dict,
                    labels: np.ndarray | None = None) -> list:
    """Tar records of one batch (rows row0...), in chunks of ENCODE_CHUNK samples, as pool futures;
    ``labels``: the samples' classes (class-conditional generators), recorded in their JSON."""
    img, clean, raw = host["img"], host["clean"], host["raw"]
    fg, pa, ph = host["s_fg_ratio"], host["s_pass_area"], host["s_pass_hist_reference"]
    futures = []
    for c0 in range(0, img.shape[0], ENCODE_CHUNK):
        c1 = min(c0 + ENCODE_CHUNK, img.shape[0])
        rws = range(row0 + c0, row0 + c1)
        metas = [{"key": fmt.sample_key(r), "row": r, "shard": shard, "fg_ratio": float(fg[r - row0]),
                  "pass_area": bool(pa[r - row0]), "pass_hist_reference": bool(ph[r - row0])}
                 for r in rws]
        if labels is not None:
            for m in metas:
                m["class"] = int(labels[m["row"] - row0])
        futures.append(pool.submit(encode_chunk, (
            [fmt.sample_key(r) for r in rws], img[c0:c1], clean[c0:c1],
            None if raw is None else raw[c0:c1], latents[c0:c1], metas, codec)))
    return futures


def generate_shard(job: ShardJob, shard: int, latents, *, timers: Timers | None = None):
    """Run the generator and masks for one shard; returns the commit step (encoding runs in a pool meanwhile)."""
    import torch

    t_start = time.perf_counter()
    if job.threads:
        torch.set_num_threads(job.threads)
    device = pick_device(job.device)
    deterministic_kernels(device)
    platform = platform_record(job.spec["generator"], device)
    if job.same_platform:
        check_same_platform([job.same_platform], platform, job.root)
    gen = cached_generator(job.generator, job.worker_options(), device)
    spec, bs = job.spec, job.batch_size
    first = shard * spec["shard_size"]
    n = min(spec["shard_size"], spec["n"] - first)
    z_all = latents.rows(first, first + n)
    labels = gen.labels(spec["labels"]["seed"], first, first + n) if "labels" in spec else None
    pool = shard_encoder_pool(device, job.threads)
    batches = BatchPipeline(gen, spec, direction=job.direction, device=device, timers=timers)
    columns: dict[str, list] = {}
    futures = []
    starts = list(range(0, n, bs))
    def launch(b0: int):
        return batches.launch(z_all[b0 : b0 + bs], None if labels is None else labels[b0 : b0 + bs])

    nxt = launch(starts[0]) if starts else None
    for i, b0 in enumerate(starts):
        z, pair = nxt
        host, done_evt = batches.queue_masks(z, pair)
        nxt = launch(starts[i + 1]) if i + 1 < len(starts) else None
        host = batches.collect(z, pair, host, done_evt)
        for k, v in host.items():
            if k.startswith("s_"):
                columns.setdefault(k[2:], []).append(v)
        futures += submit_encoding(pool, host, shard=shard, row0=first + b0, latents=z_all[b0 : b0 + bs],
                                   codec=spec["image_codec"], labels=None if labels is None else labels[b0 : b0 + bs])
    rows = {k: np.concatenate(v) for k, v in columns.items()}
    rows["key"] = np.array([fmt.sample_key(first + i) for i in range(n)], dtype=object)
    rows["shard"] = np.full(n, shard, np.int32)
    rows["row"] = np.arange(first, first + n, dtype=np.int64)
    if labels is not None:
        rows["class"] = labels.astype(np.int64)
    return partial(commit_encoded, job, shard, futures=futures, rows=rows, latents=z_all, timers=timers,
                   t_start=t_start, platform=platform)


def commit_encoded(job: ShardJob, shard: int, *, futures: list, rows: dict, latents: np.ndarray,
                   timers: Timers | None, t_start: float, platform: dict | None = None) -> dict:
    """Join the shard's encoded records and commit it; the status row of a made shard."""
    t0 = time.perf_counter()
    tar = fmt.tar_join([f.result() for f in futures])
    t1 = time.perf_counter()
    first = shard * job.spec["shard_size"]
    res = commit_shard(job.root, shard, first_row=first, tar=tar, index_rows=rows, latents=latents,
                       spec_hash=job.spec_hash, platform=platform, batch_size=job.batch_size)
    if timers is not None:
        timers.add("encoding_wait", t1 - t0)
        timers.add("write", time.perf_counter() - t1)
    result = dict(res.to_json(), batch_size=job.batch_size, **({"platform": platform} if platform else {}))
    return {"shard": shard, "ok": True, "samples": latents.shape[0], "seconds": time.perf_counter() - t_start,
            "result": result}
