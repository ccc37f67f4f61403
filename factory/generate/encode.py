"""Encoding of samples into tar records: deterministic image (PNG / lossless WebP / JPEG), mask PNG,
latent .npy and meta JSON members, and the per-process encoder pools (threads or processes)."""
from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from factory import format as fmt
from factory.settings import settings

_POOL: dict = {}  # encoder pools by (workers, processes), one per process

def encode_chunk(args) -> bytes:
    """Tar records of a chunk of samples: image (the spec's codec), meta JSON, latent .npy, PNG mask(s), sorted per sample."""
    keys, imgs, masks, raws, latents, metas, codec = args
    ext = fmt.IMAGE_CODECS[codec["image"]]
    members = []
    for j, key in enumerate(keys):
        sample = [
            (f"{key}.{ext}", encode_image(imgs[j], codec)),
            (f"{key}.{fmt.EXT_META}", fmt.canonical_json(metas[j])),
            (f"{key}.{fmt.EXT_LATENT}", encode_npy(latents[j])),
            (f"{key}.{fmt.EXT_MASK}", encode_mask_png(masks[j])),
        ]
        if raws is not None:
            sample.append((f"{key}.{fmt.EXT_RAW_MASK}", encode_mask_png(raws[j])))
        members += sorted(sample)
    return fmt.tar_records(members)


def encoder_processes(cpus: int, gpus: int) -> int:
    """Encoder processes of one GPU worker (``FACTORY_ENCODER_PROCESSES`` overrides).

    The host's cores are shared by its GPU workers: each keeps one core for the thread
    that drives its GPU and one for dask and the shard commits, and gets an equal
    share of the rest (16 cores, 1 GPU: 14; 96 cores, 8 GPUs: 10).
    """
    v = settings().encoder_processes
    if v:
        return v
    gpus = max(1, gpus)
    return max(2, (cpus - 2 * gpus) // gpus)


ENCODE_CHUNK = 32


def encode_pool(workers: int, processes: bool):
    """Encoder pool, kept for the life of the process.

    Threads on CPU workers (PIL's zlib releases the GIL). Processes when a GPU is
    driven from this process: the GPU thread must get the GIL back at once after each
    synchronisation, which encoder threads doing Python work would delay.
    """
    key = (workers, processes)
    if key not in _POOL:
        if processes:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            _POOL[key] = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("forkserver"),
                                             initializer=exit_with_owner, initargs=(os.getpid(),))
        else:
            _POOL[key] = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="encode")
        import atexit

        atexit.register(_POOL[key].shutdown, wait=True)  # before interpreter teardown
    return _POOL[key]


def exit_with_owner(owner_pid: int) -> None:
    """Pool-process initializer: exit when the process that made the pool is gone. A SIGKILLed
    dask worker runs no shutdown, and its pool processes (children of the forkserver, not of the
    worker) would otherwise live on, and keep the forkserver and resource tracker alive."""
    import threading
    import time

    def watch():
        while fmt.pid_alive(owner_pid):
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="encoder-owner-watch").start()


def shutdown_encoder_pools() -> None:
    """Shut down this process's encoder pools (and their processes) now, as interpreter exit would."""
    while _POOL:
        _, pool = _POOL.popitem()
        pool.shutdown(wait=True)


# ---------------------------------------------------------------- encoding

def encode_png(arr: np.ndarray, level: int = 1) -> bytes:
    """Deterministic PNG (no timestamps) of uint8 HxW or HxWx3, or of a bool mask (0/255 gray)."""
    from PIL import Image

    if arr.dtype == bool:
        img = Image.fromarray(arr.astype(np.uint8) * 255, mode="L")
    else:
        img = Image.fromarray(arr)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def encode_image(arr: np.ndarray, codec: dict) -> bytes:
    """Deterministic encoding of a uint8 HxWx3 image with the spec's ``image_codec``.

    png: Pillow PNG at ``png_level``; webp: lossless WebP (``method``, ``quality`` = effort);
    jpeg: baseline JPEG at ``quality`` with ``subsampling`` 4:4:4 (lossy). No metadata.
    """
    from PIL import Image

    kind = codec["image"]
    if kind == "png":
        return encode_png(arr, codec["png_level"])
    buf = io.BytesIO()
    if kind == "webp":
        Image.fromarray(arr).save(buf, format="WEBP", lossless=True, method=codec["method"], quality=codec["effort"])
    elif kind == "jpeg":
        Image.fromarray(arr).save(buf, format="JPEG", quality=codec["quality"], subsampling=0)
    else:
        raise ValueError(f"unknown image codec {kind!r}")
    return buf.getvalue()


Z_RLE = 3  # zlib strategy: run-length matches only


def encode_mask_png(mask: np.ndarray) -> bytes:
    """8-bit gray PNG (0/255) of a bool mask: zlib level 9 with the run-length strategy.

    Plain level 9 spends ~8 ms on a 128x128 mask with ragged edges (the lazy match
    search degenerates on long runs of equal bytes); Z_RLE takes ~0.5 ms for files
    of about the same size (benchmarks/encode_bench.py).
    """
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buf, format="PNG", compress_level=9,
                                                                 compress_type=Z_RLE)
    return buf.getvalue()


def encode_npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()
