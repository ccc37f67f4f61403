"""TODO docstring."""
from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from factory import format as fmt
from factory.dataset.shards import commit_shard, tar_join
from factory.device import pick_device
from factory.errors import FactoryError
from factory.generate.compute import (
    Timers,
    cached_generator,
    cc_iterations_for,
    counters,
    generate_pair,
    masks_and_stats,
    sync_device,
    to_host,
)
from factory.generate.config import DEFAULT_BATCH, encoder_mode
from factory.generate.encode import (
    ENCODE_CHUNK,
    encode_chunk,
    encode_pool,
    encoder_processes,
)


def make_shard(plan_spec: dict, spec_hash: str, shard: int, root: str, gen_name: str, gen_options: dict,
               direction: np.ndarray, latent_source, batch_size: int = DEFAULT_BATCH, device: str | None = None,
               threads: int | None = None, timers: Timers | None = None) -> dict:
    """Generate and commit one shard. Returns a status row (never raises for a data error)."""
    return make_shards(plan_spec, spec_hash, [shard], root, gen_name, gen_options, direction, latent_source,
                       batch_size, device, threads, timers)[0]


def make_shards(plan_spec: dict, spec_hash: str, shard_ids: list[int], root: str, gen_name: str,
                gen_options: dict, direction: np.ndarray, latent_source, batch_size: int = DEFAULT_BATCH,
                device: str | None = None, threads: int | None = None, timers: Timers | None = None) -> list[dict]:
    """Generate several shards; shard k's tar/index/latents commit overlaps with shard k+1's generation."""
    committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit")
    pending = []
    out = []
    try:
        for k in shard_ids:
            try:
                commit = generate_shard(plan_spec, spec_hash, k, root, gen_name, gen_options, direction,
                                         latent_source, batch_size, device, threads, timers)
            except (FactoryError, OSError) as e:
                out.append(failed_row(k, e))
                continue
            pending.append((k, committer.submit(commit)))
        for k, fut in pending:
            try:
                out.append(fut.result())
            except (FactoryError, OSError) as e:
                out.append(failed_row(k, e))
    finally:
        committer.shutdown(wait=True)
    return sorted(out, key=lambda r: r["shard"])


def failed_row(shard: int, e: Exception) -> dict:
    where = fmt.shard_name(shard)
    return {"shard": shard, "ok": False, "error": f"shard {shard} ({where}): {e}"}


def generate_shard(spec, spec_hash, shard, root, gen_name, gen_options, direction, latent_source,
                    batch_size, device, threads, timers):
    """Run the generator and masks for one shard; returns the commit step (encoding runs in a pool meanwhile)."""
    import torch

    t_start = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    device = pick_device(device)
    gen = cached_generator(gen_name, gen_options, device)
    S, N = spec["shard_size"], spec["n"]
    first = shard * S
    n = min(S, N - first)
    z_all = latent_source.rows(first, first + n)
    h = torch.as_tensor(direction, dtype=torch.float32, device=gen.device)
    keep_raw = spec["keep_raw_mask"]
    codec = spec["image_codec"]
    encoder = encoder_mode()
    if encoder == "processes" or (encoder == "auto" and device.startswith("cuda")):
        if device.startswith("cuda"):
            sys.setswitchinterval(0.0005)  # hand the GIL back to the GPU thread quickly
        pool = encode_pool(encoder_processes(os.cpu_count() or 4, torch.cuda.device_count()), processes=True)
    else:
        pool = encode_pool(max(2, threads or 1), processes=False)
    columns: dict[str, list] = {}
    futures = []
    cuda = gen.device.type == "cuda"
    cc_it = cc_iterations_for(device)
    starts = list(range(0, n, batch_size))

    def batch_to_host(img8, clean, raw, stats, pinned):
        return to_host({"img": img8, "clean": clean, **({"raw": raw} if keep_raw else {}),
                         **{f"s_{k}": v for k, v in stats.items()}}, pinned=pinned)

    def launch(b0):
        z = torch.from_numpy(z_all[b0 : b0 + batch_size]).to(gen.device, non_blocking=True)
        t0 = time.perf_counter()
        pair = generate_pair(gen, z, h, spec["shift_r"])
        if timers is not None:
            sync_device(device)
            timers.add("generator", time.perf_counter() - t0)
        return z, pair

    # Software pipeline: batch i+1's forwards are queued on the GPU before the CPU
    # waits for batch i's results and hands them to the encoder pool.
    nxt = launch(starts[0]) if starts else None
    for i, b0 in enumerate(starts):
        z, (img, shifted) = nxt
        t0 = time.perf_counter()
        img8, clean, raw, stats = masks_and_stats(gen, z, img, shifted, spec["mask_rule"], spec["max_fg"],
                                                  spec.get("operators"), cc_it)
        if timers is not None:
            sync_device(device)
            timers.add("masks_stats", time.perf_counter() - t0)
        t0 = time.perf_counter()
        host = batch_to_host(img8, clean, raw, stats, pinned=cuda)
        done_evt = None
        if cuda:
            done_evt = torch.cuda.Event()
            done_evt.record()
        if timers is not None:
            if done_evt is not None:
                done_evt.synchronize()
            timers.add("transfer", time.perf_counter() - t0)
        nxt = launch(starts[i + 1]) if i + 1 < len(starts) else None
        if done_evt is not None:
            done_evt.synchronize()
        converged = host.pop("s_cc_converged", None)
        if converged is not None and not bool(converged.all()):
            # Rare: an image needs more labelling updates than the sync-free pass ran. Redo the batch exactly.
            t0 = time.perf_counter()
            img8, clean, raw, stats = masks_and_stats(gen, z, img, shifted, spec["mask_rule"], spec["max_fg"],
                                                      spec.get("operators"), None)
            host = batch_to_host(img8, clean, raw, stats, pinned=False)
            counters.add("cc_redo_batches", 1)
            if timers is not None:
                timers.add("cc_redo", time.perf_counter() - t0)
        img_np = host["img"].numpy()
        clean_np = host["clean"].numpy()
        raw_np = host["raw"].numpy() if keep_raw else None
        stats_np = {k[2:]: v.numpy() for k, v in host.items() if k.startswith("s_")}
        for k, v in stats_np.items():
            columns.setdefault(k, []).append(v)
        fg, pa, ph = stats_np["fg_ratio"], stats_np["pass_area"], stats_np["pass_hist_reference"]
        for c0 in range(0, img_np.shape[0], ENCODE_CHUNK):
            c1 = min(c0 + ENCODE_CHUNK, img_np.shape[0])
            rws = range(first + b0 + c0, first + b0 + c1)
            metas = [{"key": fmt.sample_key(r), "row": r, "shard": shard, "fg_ratio": float(fg[r - first - b0]),
                      "pass_area": bool(pa[r - first - b0]), "pass_hist_reference": bool(ph[r - first - b0])}
                     for r in rws]
            futures.append(pool.submit(encode_chunk, (
                [fmt.sample_key(r) for r in rws], img_np[c0:c1], clean_np[c0:c1],
                None if raw_np is None else raw_np[c0:c1], z_all[b0 + c0 : b0 + c1], metas, codec)))
    rows = {k: np.concatenate(v) for k, v in columns.items()}
    rows["key"] = np.array([fmt.sample_key(first + i) for i in range(n)], dtype=object)
    rows["shard"] = np.full(n, shard, np.int32)
    rows["row"] = np.arange(first, first + n, dtype=np.int64)

    def commit() -> dict:
        t0 = time.perf_counter()
        tar = tar_join([f.result() for f in futures])
        t1 = time.perf_counter()
        res = commit_shard(root, shard, first, tar, rows, z_all, spec_hash)
        if timers is not None:
            timers.add("encoding_wait", t1 - t0)
            timers.add("write", time.perf_counter() - t1)
        return {"shard": shard, "ok": True, "samples": n, "seconds": time.perf_counter() - t_start,
                "result": res.to_json()}

    return commit
