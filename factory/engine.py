"""Shard planning, execution on a dask cluster (or in-process), resume, progress, manifest.

The shard is the unit of work: shard k holds samples [k*S, min((k+1)*S, N)) and
is a pure function of (spec, k). Workers keep their generator between shards
and return a small status row; the client never receives pixels.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from factory import __version__
from factory import format as fmt
from factory import shards as sh
from factory.errors import FactoryError

DEFAULT_SHARD_SIZE = 1000
DEFAULT_BATCH = 64
CC_RATIO = 0.2


# ---------------------------------------------------------------- spec

@dataclass
class GenerateConfig:
    """Everything `factory generate` was asked for; `spec()` is the part that determines the bytes."""

    n: int
    out: str
    generator: str = "shapes"
    generator_options: dict = field(default_factory=dict)
    seed: int = 0
    shard_size: int = DEFAULT_SHARD_SIZE
    latents: str = "gaussian"  # gaussian | path to .npy
    embeddings: str | None = None
    z_noise: float = 0.0
    direction: str | None = None  # name known to the generator, or a file
    shift_r: float = 5.0
    mask_rule: str = "luminance"
    max_fg: float = 0.5
    png_level: int = 1
    image_codec: str = "png"  # png | webp (lossless) | jpeg (lossy)
    jpeg_quality: int = 95
    keep_raw_mask: bool = False
    batch_size: int = DEFAULT_BATCH
    device: str | None = None
    workers: int | None = None
    scheduler: str | None = None
    overwrite: bool = False
    recipe: str | None = None
    progress: bool = True
    operators: str | None = None  # .npy [2,3,4] for mask_rule="operators" (factory directions score)

    def validate(self) -> None:
        if self.n is None or self.n <= 0:
            raise FactoryError(f"--n must be a positive number of candidates, got {self.n}")
        if self.shard_size <= 0:
            raise FactoryError(f"--shard-size must be positive, got {self.shard_size}")
        if self.batch_size <= 0:
            raise FactoryError(f"--batch-size must be positive, got {self.batch_size}")
        if self.mask_rule not in ("luminance", "mean-threshold", "operators"):
            raise FactoryError(
                f"--mask-rule must be 'luminance', 'mean-threshold' or 'operators', got {self.mask_rule!r}"
            )
        if self.mask_rule == "operators" and not self.operators:
            raise FactoryError(
                "--mask-rule operators needs --operators FILE (operators_selected.npy of `factory directions score`)"
            )
        if self.operators and self.mask_rule != "operators":
            raise FactoryError(f"--operators is only used with --mask-rule operators (got --mask-rule {self.mask_rule})")
        if not np.isfinite(self.shift_r):
            raise FactoryError(f"--shift-r must be finite, got {self.shift_r}")
        if not 0 <= self.png_level <= 9:
            raise FactoryError(f"--png-level must be 0..9, got {self.png_level}")
        if self.image_codec not in fmt.IMAGE_CODECS:
            raise FactoryError(f"--image-codec must be one of {', '.join(fmt.IMAGE_CODECS)}, got {self.image_codec!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise FactoryError(f"--jpeg-quality must be 1..100, got {self.jpeg_quality}")
        if self.png_level != 1 and self.image_codec != "png":
            raise FactoryError(f"--png-level only applies to --image-codec png (got --image-codec {self.image_codec})")
        if self.jpeg_quality != 95 and self.image_codec != "jpeg":
            raise FactoryError(f"--jpeg-quality only applies to --image-codec jpeg (got --image-codec {self.image_codec})")
        if self.workers is not None and self.workers < 0:
            raise FactoryError(f"--workers must be >= 0, got {self.workers}")
        if self.generator_options.get("compile") and self.shard_size % self.batch_size:
            import warnings

            warnings.warn(
                f"--shard-size {self.shard_size} is not a multiple of --batch-size {self.batch_size}: the compiled "
                "generator recompiles for each shard's tail batch; use e.g. --shard-size "
                f"{max(1, self.shard_size // self.batch_size) * self.batch_size}", stacklevel=2)
        if self.embeddings and self.latents != "gaussian":
            raise FactoryError("--embeddings and --latents FILE are exclusive; pass one of them")


def image_codec_spec(cfg: GenerateConfig) -> dict:
    """The spec's ``image_codec``: everything that determines the image bytes (masks: PNG, Z_RLE, level 9)."""
    if cfg.image_codec == "png":  # unchanged since format 1, so existing specs keep their hash
        return {"image": "png", "mask": "png", "png_level": cfg.png_level}
    if cfg.image_codec == "webp":
        return {"image": "webp", "mask": "png", "lossless": True, "method": 0, "effort": 0}
    return {"image": "jpeg", "mask": "png", "quality": cfg.jpeg_quality, "subsampling": "4:4:4"}


@dataclass
class Plan:
    """A resolved, validated job: spec (hashable content) plus what workers need to run it."""

    spec: dict
    spec_hash: str
    n_shards: int
    dim_z: int
    resolution: int
    direction: np.ndarray
    latent_source: object
    generator_name: str
    generator_options: dict


def resolve_direction(gen, direction: str | None, generator_name: str) -> tuple[np.ndarray, dict]:
    named = gen.named_directions() if hasattr(gen, "named_directions") else {}
    if direction is None:
        if "background" in named:
            direction = "background"
        else:
            raise FactoryError(
                f"generator {generator_name!r} has no built-in segmenting direction; pass --direction FILE "
                "(.npy or the authors' bg_direction.pth)"
            )
    if direction in named:
        vec = np.asarray(named[direction], np.float32)
        return vec, {"name": direction, "sha256": fmt.sha256_bytes(vec.tobytes())}
    looks_like_file = os.sep in direction or direction.endswith((".npy", ".pth", ".pt"))
    if not looks_like_file and not os.path.exists(direction):
        known = ", ".join(sorted(named)) or "none"
        raise FactoryError(
            f"unknown direction {direction!r} for generator {generator_name!r} (known: {known}); "
            "or pass a direction file (.npy / .pth)"
        )
    from factory.directions_io import load_direction_file

    vec = np.asarray(load_direction_file(direction, gen.dim_z), np.float32)
    return vec, {"file": os.path.basename(direction), "sha256": fmt.sha256_bytes(vec.tobytes())}


def resolve_latents(cfg: GenerateConfig, dim_z: int):
    from factory import latents

    if cfg.embeddings:
        return latents.from_embeddings(cfg.embeddings, dim_z, cfg.seed, cfg.z_noise)
    if cfg.latents == "gaussian":
        return latents.gaussian(dim_z, cfg.seed)
    src = latents.from_file(cfg.latents, dim_z)
    if cfg.n > src.rows_available:
        raise FactoryError(
            f"--n {cfg.n} exceeds the {src.rows_available} rows of latents file {cfg.latents}; lower --n"
        )
    return src


def make_plan(cfg: GenerateConfig) -> Plan:
    from factory.generators import load_generator

    cfg.validate()
    gen = load_generator(cfg.generator, device="cpu", **cfg.generator_options)
    direction, dir_desc = resolve_direction(gen, cfg.direction, cfg.generator)
    src = resolve_latents(cfg, gen.dim_z)
    spec = {
        "format_version": fmt.FORMAT_VERSION,
        "generator": gen.identity(),
        "n": cfg.n,
        "shard_size": cfg.shard_size,
        "latents": src.describe(),
        "direction": dir_desc,
        "shift_r": float(cfg.shift_r),
        "mask_rule": cfg.mask_rule,
        "cc_ratio": CC_RATIO,
        "max_fg": float(cfg.max_fg),
        "image_codec": image_codec_spec(cfg),
        "keep_raw_mask": bool(cfg.keep_raw_mask),
    }
    if cfg.mask_rule == "operators":  # only then, so that other specs (and their hashes) are unchanged
        from factory.directions import load_operators

        ops = load_operators(cfg.operators)
        spec["operators"] = {"file": os.path.basename(cfg.operators), "sha256": fmt.sha256_bytes(ops.tobytes()),
                             "values": ops.tolist()}
    spec_hash = fmt.sha256_bytes(fmt.canonical_json(spec))
    n_shards = (cfg.n + cfg.shard_size - 1) // cfg.shard_size
    return Plan(spec, spec_hash, n_shards, gen.dim_z, gen.resolution, direction, src, cfg.generator,
                dict(cfg.generator_options))


# ---------------------------------------------------------------- worker side

_WORKER_CACHE: dict = {}


def _cached_generator(name: str, options: dict, device: str):
    key = (name, json.dumps(options, sort_keys=True, default=str), device)
    if key not in _WORKER_CACHE:
        from factory.generators import load_generator

        _WORKER_CACHE.clear()  # one generator per worker process
        _WORKER_CACHE[key] = load_generator(name, device=device, **options)
    return _WORKER_CACHE[key]


def pick_device(device: str | None) -> str:
    import torch

    if device:
        return device
    if torch.cuda.is_available():
        try:
            from distributed import get_worker

            idx = int(str(get_worker().name).rsplit("-", 1)[-1]) % torch.cuda.device_count()
        except (ImportError, ValueError):
            idx = 0
        return f"cuda:{idx}"
    return "cpu"


class Timers(dict):
    def add(self, name: str, seconds: float) -> None:
        self[name] = self.get(name, 0.0) + seconds


# Process-wide event counts (read by `factory bench`): "cc_redo_batches".
counters = Timers()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def to_uint8(img):
    """[-1, 1] float [B,3,H,W] -> uint8 [B,H,W,3] (round half to even, clamped)."""
    import torch

    return ((img.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def generate_pair(gen, z, direction, shift_r: float):
    """G(z) and G(z + r h) in one forward of 2B (asynchronous on CUDA)."""
    import torch

    with torch.no_grad():
        both = gen(torch.cat([z, z + shift_r * direction[None, :]], 0))
    return both[: z.shape[0]], both[z.shape[0]:]


def _encoder_mode() -> str:
    """``FACTORY_ENCODER``: auto | processes | threads (see docs/performance.md)."""
    encoder = os.environ.get("FACTORY_ENCODER", "auto")
    if encoder not in ("auto", "processes", "threads"):
        raise FactoryError(f"FACTORY_ENCODER={encoder!r}; use auto, processes or threads")
    return encoder


CC_SYNC_FREE_ITERATIONS = 8


def cc_iterations_for(device: str) -> int | None:
    """Labelling updates per batch without a host check (``FACTORY_CC_ITERATIONS``), or None.

    ``auto`` (default): 8 on CUDA, where each convergence check would stall the GPU
    queue while the CPU waits (natural masks converge in 3-6 updates; batches with an
    unconverged image are redone exactly), and host checks on the CPU, where there
    is no queue to stall and extra updates would cost time. ``0``: always check.
    """
    v = os.environ.get("FACTORY_CC_ITERATIONS", "auto").strip()
    if v == "auto":
        return CC_SYNC_FREE_ITERATIONS if str(device).startswith("cuda") else None
    return _env_count("FACTORY_CC_ITERATIONS", v, 0, "use auto, 0 (host checks) or a positive count") or None


def _env_count(name: str, value: str, minimum: int, hint: str) -> int:
    """An integer environment knob >= minimum, or a FactoryError naming it."""
    try:
        k = int(value)
    except ValueError:
        k = minimum - 1
    if k < minimum:
        raise FactoryError(f"{name}={value!r}; {hint}")
    return k


def masks_and_stats(gen, z, img, shifted, mask_rule: str, max_fg: float, operators=None,
                    cc_iterations: int | None = None):
    """Masks, CC cleanup and statistics on the generator's device; image quantised to uint8 HWC.

    ``operators``: the spec's ``operators`` entry (or a [2,3,4] array) for ``mask_rule="operators"``.
    ``cc_iterations``: see ``cc_iterations_for``; then ``stats["cc_converged"]`` says which rows are exact.
    """
    import torch

    from factory.stats import process_batch

    ops = None
    if mask_rule == "operators":
        if isinstance(operators, dict):
            operators = operators["values"]
        ops = torch.as_tensor(operators, dtype=torch.float32, device=img.device)
    raw, clean, stats = process_batch(img, shifted, rule=mask_rule, max_fg=max_fg, ratio=CC_RATIO,
                                      cc_iterations=cc_iterations, operators=ops)
    if hasattr(gen, "true_mask"):
        truth = gen.true_mask(z).to(clean.device)
        for name, m in (("true_iou", clean), ("true_iou_raw", raw)):
            inter = (truth & m).flatten(1).sum(1).float()
            union = (truth | m).flatten(1).sum(1).float()
            stats[name] = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return to_uint8(img), clean, raw, stats


def compute_batch(gen, z, direction, shift_r: float, mask_rule: str, max_fg: float, timers: Timers | None = None,
                  operators=None):
    """Both forwards, masks and statistics for one batch, all on the generator's device.

    Returns (image uint8 [B,H,W,3], clean mask bool, raw mask bool, stats dict of tensors).
    """
    dev = str(z.device)
    t0 = time.perf_counter()
    img, shifted = generate_pair(gen, z, direction, shift_r)
    if timers is not None:
        _sync(dev)
        t1 = time.perf_counter()
        timers.add("generator", t1 - t0)
    out = masks_and_stats(gen, z, img, shifted, mask_rule, max_fg, operators)
    if timers is not None:
        _sync(dev)
        timers.add("masks_stats", time.perf_counter() - t1)
    return out


def _to_host(tensors: dict, pinned: bool) -> dict:
    """Queue device->host copies (into pinned memory on CUDA) and return the host tensors."""
    import torch

    out = {}
    for k, t in tensors.items():
        if pinned:
            h = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            h.copy_(t, non_blocking=True)
            out[k] = h
        else:
            out[k] = t.cpu()
    return out


def _encode_chunk(args) -> bytes:
    """Tar records of a chunk of samples: image (the spec's codec), meta JSON, latent .npy, PNG mask(s), sorted per sample."""
    keys, imgs, masks, raws, latents, metas, codec = args
    ext = fmt.IMAGE_CODECS[codec["image"]]
    members = []
    for j, key in enumerate(keys):
        sample = [
            (f"{key}.{ext}", sh.encode_image(imgs[j], codec)),
            (f"{key}.{fmt.EXT_META}", fmt.canonical_json(metas[j])),
            (f"{key}.{fmt.EXT_LATENT}", sh.encode_npy(latents[j])),
            (f"{key}.{fmt.EXT_MASK}", sh.encode_mask_png(masks[j])),
        ]
        if raws is not None:
            sample.append((f"{key}.{fmt.EXT_RAW_MASK}", sh.encode_mask_png(raws[j])))
        members += sorted(sample)
    return sh.tar_records(members)


def encoder_processes(cpus: int, gpus: int) -> int:
    """Encoder processes of one GPU worker (``FACTORY_ENCODER_PROCESSES`` overrides).

    The host's cores are shared by its GPU workers: each keeps one core for the thread
    that drives its GPU and one for dask and the shard commits, and gets an equal
    share of the rest (16 cores, 1 GPU: 14; 96 cores, 8 GPUs: 10).
    """
    v = os.environ.get("FACTORY_ENCODER_PROCESSES")
    if v:
        return _env_count("FACTORY_ENCODER_PROCESSES", v, 1, "use a positive count")
    gpus = max(1, gpus)
    return max(2, (cpus - 2 * gpus) // gpus)


ENCODE_CHUNK = 32
_POOL: dict = {}


def _encode_pool(workers: int, processes: bool):
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

            _POOL[key] = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("forkserver"))
        else:
            _POOL[key] = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="encode")
        import atexit

        atexit.register(_POOL[key].shutdown, wait=True)  # before interpreter teardown
    return _POOL[key]


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
                commit = _generate_shard(plan_spec, spec_hash, k, root, gen_name, gen_options, direction,
                                         latent_source, batch_size, device, threads, timers)
            except (FactoryError, OSError) as e:
                out.append(_failed(k, e))
                continue
            pending.append((k, committer.submit(commit)))
        for k, fut in pending:
            try:
                out.append(fut.result())
            except (FactoryError, OSError) as e:
                out.append(_failed(k, e))
    finally:
        committer.shutdown(wait=True)
    return sorted(out, key=lambda r: r["shard"])


def _failed(shard: int, e: Exception) -> dict:
    where = fmt.shard_name(shard)
    return {"shard": shard, "ok": False, "error": f"shard {shard} ({where}): {e}"}


def _generate_shard(spec, spec_hash, shard, root, gen_name, gen_options, direction, latent_source,
                    batch_size, device, threads, timers):
    """Run the generator and masks for one shard; returns the commit step (encoding runs in a pool meanwhile)."""
    import torch

    t_start = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    device = pick_device(device)
    gen = _cached_generator(gen_name, gen_options, device)
    S, N = spec["shard_size"], spec["n"]
    first = shard * S
    n = min(S, N - first)
    z_all = latent_source.rows(first, first + n)
    h = torch.as_tensor(direction, dtype=torch.float32, device=gen.device)
    keep_raw = spec["keep_raw_mask"]
    codec = spec["image_codec"]
    encoder = _encoder_mode()
    if encoder == "processes" or (encoder == "auto" and device.startswith("cuda")):
        if device.startswith("cuda"):
            sys.setswitchinterval(0.0005)  # hand the GIL back to the GPU thread quickly
        pool = _encode_pool(encoder_processes(os.cpu_count() or 4, torch.cuda.device_count()), processes=True)
    else:
        pool = _encode_pool(max(2, threads or 1), processes=False)
    columns: dict[str, list] = {}
    futures = []
    cuda = gen.device.type == "cuda"
    cc_it = cc_iterations_for(device)
    starts = list(range(0, n, batch_size))

    def batch_to_host(img8, clean, raw, stats, pinned):
        return _to_host({"img": img8, "clean": clean, **({"raw": raw} if keep_raw else {}),
                         **{f"s_{k}": v for k, v in stats.items()}}, pinned=pinned)

    def launch(b0):
        z = torch.from_numpy(z_all[b0 : b0 + batch_size]).to(gen.device, non_blocking=True)
        t0 = time.perf_counter()
        pair = generate_pair(gen, z, h, spec["shift_r"])
        if timers is not None:
            _sync(device)
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
            _sync(device)
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
            futures.append(pool.submit(_encode_chunk, (
                [fmt.sample_key(r) for r in rws], img_np[c0:c1], clean_np[c0:c1],
                None if raw_np is None else raw_np[c0:c1], z_all[b0 + c0 : b0 + c1], metas, codec)))
    rows = {k: np.concatenate(v) for k, v in columns.items()}
    rows["key"] = np.array([fmt.sample_key(first + i) for i in range(n)], dtype=object)
    rows["shard"] = np.full(n, shard, np.int32)
    rows["row"] = np.arange(first, first + n, dtype=np.int64)

    def commit() -> dict:
        t0 = time.perf_counter()
        tar = sh.tar_join([f.result() for f in futures])
        t1 = time.perf_counter()
        res = sh.commit_shard(root, shard, first, tar, rows, z_all, spec_hash)
        if timers is not None:
            timers.add("encoding_wait", t1 - t0)
            timers.add("write", time.perf_counter() - t1)
        return {"shard": shard, "ok": True, "samples": n, "seconds": time.perf_counter() - t_start,
                "result": res.to_json()}

    return commit


# ---------------------------------------------------------------- client side

class DatasetLock:
    """An exclusive lock on a local output folder (O_EXCL file; stale locks of dead processes are taken over)."""

    def __init__(self, root: str):
        self.root = root
        fs, path = fmt.get_fs(root)
        self.path = os.path.join(path, fmt.LOCK) if sh.is_local(fs) else None
        self.held = False

    def __enter__(self):
        if self.path is None:
            return self
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    host, pid = open(self.path).read().split()
                except (OSError, ValueError):
                    host, pid = "", "0"
                if host == socket.gethostname() and not _alive(int(pid)):
                    os.unlink(self.path)  # stale: its writer died
                    continue
                raise FactoryError(
                    f"{self.root} is being written by another factory process ({host} pid {pid}); "
                    f"wait for it to finish, or delete {self.path} if that process is gone"
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            return self
        raise FactoryError(f"cannot take the lock {self.path}")

    def __exit__(self, *exc):
        if self.held and self.path:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_writable(root: str) -> None:
    fs, path = fmt.get_fs(root)
    try:
        fs.makedirs(path, exist_ok=True)
        if sh.is_local(fs):
            probe = os.path.join(path, f".write-probe-{os.getpid()}")
            with open(probe, "wb") as f:
                f.write(b"ok")
            os.unlink(probe)
    except OSError as e:
        raise FactoryError(f"--out {root} is not writable ({e.strerror or e}); choose a folder you can write") from None


def spec_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += spec_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def _wipe(root: str) -> None:
    fs, path = fmt.get_fs(root)
    for name in (fmt.MANIFEST, fmt.SPEC, fmt.CARD, fmt.SHARD_DIR, fmt.INDEX_DIR, fmt.DONE_DIR, fmt.LATENTS, "preview.png"):
        p = path.rstrip("/") + "/" + name
        if fs.exists(p):
            fs.rm(p, recursive=True)


def prepare_output(cfg: GenerateConfig, plan: Plan) -> None:
    """Write spec.json and latents.zarr, or check that an existing dataset has the same spec."""
    root = cfg.out
    spec_url = fmt.join(root, fmt.SPEC)
    if sh.exists(spec_url):
        old = json.loads(fmt.read_bytes(spec_url))
        if old.get("spec_hash") != plan.spec_hash:
            if not cfg.overwrite:
                diff = spec_diff(old.get("spec", {}), plan.spec)
                raise FactoryError(
                    f"{root} holds a dataset with another spec ({'; '.join(diff[:6]) or 'spec hash differs'}); "
                    "use another --out, rerun the original command to resume, or pass --overwrite"
                )
            _wipe(root)
    spec_doc = {"spec_hash": plan.spec_hash, "spec": plan.spec}
    if not sh.exists(spec_url):
        sh.atomic_write(spec_url, json.dumps(spec_doc, indent=1, sort_keys=True).encode())
    if not sh.exists(fmt.join(root, fmt.LATENTS)):
        sh.create_latents(root, cfg.n, plan.dim_z, cfg.shard_size)


def _default_workers() -> int:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count()
    return max(1, min(4, os.cpu_count() or 1))


class _ParentWatch:
    """Worker plugin for clusters we start: a worker exits when the client process dies,
    so a killed `factory generate` leaves no orphan writers behind."""

    name = "factory-parent-watch"

    def __init__(self, pid: int):
        self.pid = pid

    def setup(self, worker=None):
        import threading

        def watch():
            # The nannies live in the client process, so nothing restarts us once it is gone.
            while _alive(self.pid):
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, daemon=True, name="factory-parent-watch").start()

    def teardown(self, worker=None):
        pass


def _start_client(cfg: GenerateConfig, workers: int):
    import dask
    from distributed import Client, LocalCluster

    if cfg.scheduler:
        return Client(cfg.scheduler), None
    import torch

    gpus = torch.cuda.device_count() if (cfg.device is None or str(cfg.device).startswith("cuda")) else 0
    dask.config.set({"distributed.worker.daemon": False, "distributed.logging.distributed": "error"})
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
        resources={"GPU": 1} if gpus else None, silence_logs=40,
    )
    client = Client(cluster)
    from distributed import WorkerPlugin

    plugin = type("ParentWatch", (_ParentWatch, WorkerPlugin), {})(os.getpid())
    client.register_plugin(plugin)
    return client, cluster


def generate(cfg: GenerateConfig, log=None) -> dict:
    """Run (or resume) a generation job; returns the manifest."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    _encoder_mode()
    encoder_processes(4, 1)
    cc_iterations_for("cuda")  # the knobs fail here, before any work, rather than in every shard
    plan = make_plan(cfg)
    root = cfg.out.rstrip("/")
    cfg.out = root
    _check_writable(root)
    with DatasetLock(root):
        sh.remove_temp_files(root)
        manifest_url = fmt.join(root, fmt.MANIFEST)
        prepare_output(cfg, plan)
        done = {k: v for k, v in sh.read_sidecars(root).items() if v.get("spec_hash") == plan.spec_hash}
        todo = [k for k in range(plan.n_shards) if k not in done]
        if not todo and sh.exists(manifest_url):
            log(f"{root}: complete ({cfg.n} samples in {plan.n_shards} shards); nothing to do")
            return json.loads(fmt.read_bytes(manifest_url))
        if done:
            log(f"{root}: resuming, {len(done)} of {plan.n_shards} shards already committed")
        failures = _run_shards(cfg, plan, todo, done)
        if failures:
            raise FactoryError(
                f"{len(failures)} shard(s) failed: " + "; ".join(f["error"] for f in failures[:5])
                + " — rerun the same command to retry them"
            )
        manifest = build_manifest(cfg, plan, done)
        from factory import card

        card.write_card(root, manifest)
        sh.atomic_write(manifest_url, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return manifest


def _run_shards(cfg: GenerateConfig, plan: Plan, todo: list[int], done: dict) -> list[dict]:
    from tqdm import tqdm

    S = cfg.shard_size
    total = sum(min(S, cfg.n - k * S) for k in todo)
    workers = cfg.workers if cfg.workers is not None else _default_workers()
    bar = tqdm(total=total, unit="cand", desc="generate", disable=not cfg.progress, dynamic_ncols=True,
               smoothing=0.1)
    failures = []

    def record(status):
        if status.get("ok"):
            done[status["shard"]] = status["result"]
            bar.update(status["samples"])
        else:
            failures.append(status)
        failed = {f["shard"] for f in failures}
        waiting = [k for k in todo if k not in done and k not in failed]
        bar.set_postfix_str(
            f"shards {len(done)}/{plan.n_shards}"
            + (f", failed {len(failures)}" if failures else "")
            # at the tail of a job, say what it is still waiting for (no silent hang)
            + (f", waiting on {', '.join(map(str, waiting))}" if 0 < len(waiting) <= 4 else "")
        )

    args = (plan.spec, plan.spec_hash)
    common = dict(gen_name=plan.generator_name, gen_options=plan.generator_options, direction=plan.direction,
                  latent_source=plan.latent_source, batch_size=cfg.batch_size, device=cfg.device)
    try:
        if workers == 0 and not cfg.scheduler:
            for k in todo:
                record(make_shard(*args, k, cfg.out, **common))
            return failures
        client, cluster = _start_client(cfg, workers)
        try:
            from distributed import as_completed

            ncpu = os.cpu_count() or 1
            threads = None if cfg.scheduler else max(1, ncpu // max(1, workers))
            resources = None
            if not cfg.scheduler and cluster is not None and any(
                w.get("resources", {}).get("GPU") for w in client.scheduler_info()["workers"].values()
            ):
                resources = {"GPU": 1}
            sc = client.scatter(plan.latent_source, broadcast=True)
            futures = [
                client.submit(make_shard, *args, k, cfg.out, **dict(common, latent_source=sc), threads=threads,
                              key=f"shard-{plan.spec_hash[:12]}-{k:06d}", resources=resources, pure=False)
                for k in todo
            ]
            for fut in as_completed(futures):
                try:
                    record(fut.result())
                except Exception as e:  # a worker died too often (KilledWorker) or similar
                    failures.append({"shard": -1, "ok": False, "error": f"{type(e).__name__}: {e}"})
            retried = _lost_attempts(client, [f.key for f in futures])
            if retried:
                tqdm.write(f"{retried} shard attempt(s) were lost with a worker and retried", file=sys.stderr)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    finally:
        bar.close()
    return failures


def _lost_attempts(client, keys) -> int:
    """How many task attempts died with their worker (the scheduler's `suspicious` counts)."""

    def count(dask_scheduler, keys=tuple(keys)):
        return sum(dask_scheduler.tasks[k].suspicious for k in keys if k in dask_scheduler.tasks)

    try:
        return int(client.run_on_scheduler(count))
    except Exception:  # an external scheduler may refuse run_on_scheduler
        return 0


def build_manifest(cfg: GenerateConfig, plan: Plan, done: dict) -> dict:
    shards = [done[k] for k in range(plan.n_shards)]
    for s in shards:
        s.pop("spec_hash", None)
    latents_sha = fmt.sha256_bytes("".join(s["latents_sha256"] for s in shards).encode())
    ds_id = fmt.dataset_id(shards, latents_sha)
    return {
        "kind": fmt.DATASET_KIND,
        "format_version": fmt.FORMAT_VERSION,
        "dataset_id": ds_id,
        "samples": sum(s["samples"] for s in shards),
        "bytes": sum(s["bytes"] for s in shards),
        "dim_z": plan.dim_z,
        "resolution": plan.resolution,
        "spec_hash": plan.spec_hash,
        "spec": plan.spec,
        "recipe": cfg.recipe,
        "code_version": __version__,
        "latents": {"path": fmt.LATENTS, "sha256_of_shard_hashes": latents_sha},
        "members": {
            "image": fmt.IMAGE_CODECS[plan.spec["image_codec"]["image"]], "mask": fmt.EXT_MASK, "latent": fmt.EXT_LATENT, "meta": fmt.EXT_META,
            **({"raw_mask": fmt.EXT_RAW_MASK} if plan.spec["keep_raw_mask"] else {}),
        },
        "shards": shards,
    }
