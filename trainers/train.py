"""Train the U-Net on a factory dataset or view: the paper's recipe, exact resume, DDP.

Recipe (Voynov et al. 2021, defaults of `TrainConfig`): Adam, lr 1e-3, lr x 0.2
at step 8,000, 12,000 steps, batch 95, per-pixel BCE with logits on the
cleaned masks; bf16 autocast on GPU. ``batch_size`` is per rank: with W ranks a
step consumes W x batch_size samples.

Run folder (``--out RUN``)::

    RUN/model.safetensors, RUN/model.json   final weights (trainers.model.checkpoint.save_model format)
    RUN/card.json                           model card: data ids, recipe, code version, hold-out metrics
    RUN/metrics.jsonl                       one line per validation
    RUN/checkpoint.json, RUN/checkpoints/   newest training checkpoint (format: trainers/model/checkpoint.py)

``resume=True`` continues bit-exactly on CPU: the weights after a stop at step k
and a resume equal those of an uninterrupted run. A checkpoint's state.json
holds the recipe, the loader state (seed, epoch, samples consumed), the data
ids and the history of segments; a resume refuses another recipe or other data.

Stages of ``train()``: ``_start`` (config, ranks, device, data, model and
optimizer, restored from the checkpoint on resume) -> ``_run_steps`` (the loop;
``_step`` is one optimizer step) -> ``_finish`` (last validation, checkpoint,
model, card). ``Segment`` carries the state they share.

Distributed: started by torchrun (RANK, WORLD_SIZE, LOCAL_RANK from the
environment), DDP with gloo on CPU and nccl on GPU. Rank 0 writes every file.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from trainers import __version__
from trainers.data.cache import open_cache
from trainers.data.random_access import ACCESS_MODES, open_random_access, require_offsets
from trainers.data.stream import (
    DEFAULT_SHUFFLE_WINDOW,
    LoaderState,
    SampleIndex,
    TrainStream,
    holdout_rule,
    iter_batches,
    open_index,
    other_split,
)
from trainers.device import resolve_device
from trainers.errors import TrainersError
from trainers.eval.metrics import SegmentationMetrics
from trainers.fileio import atomic_write, json_bytes
from trainers.model.checkpoint import (
    POINTER_FILE,
    load_checkpoint,
    save_checkpoint,
    save_model,
    unflatten_optimizer,
)
from trainers.model.unet import ModelConfig, UNet
from trainers.progress import Progress, cpu_advice, default_workers, emit, startup_line

CARD_FILE = "card.json"
METRICS_FILE = "metrics.jsonl"

# Recipe fields that must not change when a run is resumed (steps may grow).
_FIXED_ON_RESUME = ("lr", "lr_step", "lr_gamma", "batch_size", "width", "seed", "holdout_permille", "mask",
                    "mask_source", "flip", "shuffle_window", "betas", "access")
_RECIPE_DEFAULTS = {"mask_source": "mask", "access": "stream"}  # fields older checkpoints lack


class TrainError(TrainersError, ValueError):
    """A training request that cannot run as asked (message says what to change)."""


@dataclass
class TrainConfig:
    """Everything `trainers train` was asked for. Defaults are the paper's recipe."""

    data: str
    out: str
    steps: int = 12_000
    lr: float = 1e-3
    lr_step: int = 8_000
    lr_gamma: float = 0.2
    betas: tuple = (0.9, 0.999)
    batch_size: int = 95
    width: int = 64
    workers: int | None = None  # None: trainers.progress.default_workers (this machine's CPUs per rank)
    seed: int = 0
    holdout_permille: int = 10
    val_max: int = 1000
    checkpoint_every: int = 1000
    val_every: int = 1000
    device: str = "auto"
    mask: str = "clean"
    mask_source: str = "mask"  # mask | teacher | intersection (trainers.data.stream.MASK_SOURCES)
    flip: bool = True
    shuffle_window: int = DEFAULT_SHUFFLE_WINDOW
    access: str = "stream"  # stream (shard by shard) | random (by key, whole-dataset shuffle; trainers.data.random_access)
    deterministic: bool = True
    resume: bool = False
    progress: bool = True
    progress_every: float | None = None  # seconds between progress lines off a terminal (None: 30)
    allow_remote_shards: bool = False
    verify: bool = True  # check each shard's sha256 as it is read (--no-verify turns it off)
    audit: bool = False  # write RUN/audit/rank-R.json: rows of every step + final weights digest
    cache: bool = True  # remote shards through the node's shard cache (trainers.data.cache)
    cache_dir: str | None = None
    cache_limit: str | None = None

    def validate(self) -> None:
        def pos(name, v, zero_ok=False):
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if zero_ok else 1):
                raise TrainError(f"--{name.replace('_', '-')} must be an integer >= {0 if zero_ok else 1}, "
                                 f"got {v!r}")
        pos("steps", self.steps)
        pos("batch_size", self.batch_size)
        pos("width", self.width)
        if self.workers is not None:
            pos("workers", self.workers, zero_ok=True)
        if self.progress_every is not None and not (isinstance(self.progress_every, (int, float))
                                                    and self.progress_every >= 0):
            raise TrainError(f"--progress-every must be a number of seconds >= 0, got {self.progress_every!r}")
        pos("checkpoint_every", self.checkpoint_every, zero_ok=True)
        pos("val_every", self.val_every, zero_ok=True)
        pos("lr_step", self.lr_step, zero_ok=True)
        pos("shuffle_window", self.shuffle_window)
        if self.access not in ACCESS_MODES:
            raise TrainError(f"--access must be one of {', '.join(ACCESS_MODES)}, got {self.access!r}")
        pos("val_max", self.val_max, zero_ok=True)
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise TrainError(f"--lr must be a positive number, got {self.lr!r}")
        if not 0 <= self.holdout_permille < 1000:
            raise TrainError(f"--holdout-permille must be in 0..999, got {self.holdout_permille}")
        if self.mask not in ("clean", "raw"):
            raise TrainError(f"--mask must be 'clean' or 'raw', got {self.mask!r}")

    def recipe(self) -> dict:
        return {
            "optimizer": "adam", "betas": list(self.betas), "lr": self.lr, "lr_step": self.lr_step,
            "lr_gamma": self.lr_gamma, "steps": self.steps, "batch_size": self.batch_size,
            "batch_size_is": "per rank", "width": self.width, "seed": self.seed,
            "holdout_permille": self.holdout_permille, "mask": self.mask, "mask_source": self.mask_source,
            "flip": self.flip,
            "shuffle_window": self.shuffle_window, "access": self.access, "loss": "binary_cross_entropy_with_logits (per pixel, mean)",
            "amp": "bf16 autocast on CUDA, fp32 on CPU", "deterministic": self.deterministic,
        }


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of the update that takes the model from ``step`` to ``step + 1``."""
    return cfg.lr * (cfg.lr_gamma if cfg.lr_step and step >= cfg.lr_step else 1.0)


# ----------------------------------------------------------------------------- environment


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # ranks on this machine (torchrun's LOCAL_WORLD_SIZE)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_from_env() -> Dist:
    try:
        return Dist(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                    int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError as e:
        raise TrainError(f"bad RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE in the environment: {e}") from None


def code_version() -> dict:
    out = {"trainers": __version__, "torch": torch.__version__}
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if head.returncode == 0:
            out["git_commit"] = head.stdout.strip()
            st = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=5)
            out["git_dirty"] = bool(st.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return out


# ----------------------------------------------------------------------------- validation


@torch.no_grad()
def validate(net: torch.nn.Module, index: SampleIndex, *, device: torch.device, batch_size: int,
             limit: int | None) -> dict:
    """Hold-out metrics: per-pixel BCE, IoU / accuracy at p >= 0.5, maxF, MAE (trainers.eval.metrics protocol)."""
    if len(index) == 0:
        return {}
    was = net.training
    net.eval()
    metrics = SegmentationMetrics(pysod=False)
    bce_sum, pixels = 0.0, 0
    try:
        for batch in iter_batches(index, batch_size, limit):
            x = batch["image"].to(device)
            y = batch["mask"].to(device)
            with _autocast(device):
                logits = net(x)
            logits = logits.float()
            bce_sum += float(F.binary_cross_entropy_with_logits(logits, y, reduction="sum"))
            pixels += y.numel()
            prob = torch.sigmoid(logits)[:, 0].cpu().numpy()
            gt = y[:, 0].cpu().numpy() > 0.5
            for p, g in zip(prob, gt):
                metrics.update(p, g)
    finally:
        net.train(was)
    m = metrics.compute()
    return {"bce": bce_sum / max(pixels, 1), "IoU": m["IoU"], "accuracy": m["accuracy"], "maxF": m["maxF"],
            "MAE": m["MAE"], "n_images": m["n_images"]}


def _autocast(device: torch.device):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


# ----------------------------------------------------------------------------- training


def _set_determinism(cfg: TrainConfig, device: torch.device) -> None:
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def _check_resume(cfg: TrainConfig, saved: dict, index: SampleIndex) -> None:
    recipe = saved["recipe"]
    now = cfg.recipe()
    diff = [f"{k}: checkpoint {recipe.get(k, _RECIPE_DEFAULTS.get(k))!r}, now {now[k]!r}" for k in _FIXED_ON_RESUME
            if recipe.get(k, _RECIPE_DEFAULTS.get(k)) != now[k]]
    if diff:
        raise TrainError("--resume with a different recipe: " + "; ".join(diff) +
                         " (only --steps, --workers, --device, --checkpoint-every, --val-every may change)")
    if saved["data"]["dataset_id"] != index.dataset_id or saved["data"]["view_id"] != index.view_id:
        raise TrainError(f"--resume with other data: checkpoint trained on {saved['data']['dataset_id']} / "
                         f"{saved['data']['view_id']}, --data is {index.dataset_id} / {index.view_id}")
    if saved["step"] > cfg.steps:
        raise TrainError(f"checkpoint is at step {saved['step']}, beyond --steps {cfg.steps}; raise --steps")


def _state_digest(net: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class Segment:
    """One training segment (a start or a resume) of a run: what the stages of ``train()`` share."""

    cfg: TrainConfig
    dist: Dist
    device: torch.device
    run: Path
    index: SampleIndex
    val_index: SampleIndex
    net: UNet
    opt: torch.optim.Optimizer
    workers: int = 0  # loader workers of this rank (cfg.workers, or the machine's default)
    step: int = 0
    loader_state: LoaderState = field(default_factory=LoaderState)
    history: list = field(default_factory=list)
    last_val: dict = field(default_factory=dict)
    last_loss: float = float("nan")
    steps_run: int = 0
    wall: float = 0.0
    audit_rows: list = field(default_factory=list)

    @property
    def global_batch(self) -> int:
        return self.dist.world_size * self.cfg.batch_size

    def data_desc(self) -> dict:
        return {"url": self.cfg.data, "dataset_id": self.index.dataset_id, "view_id": self.index.view_id,
                "train_samples": len(self.index), "val_samples": len(self.val_index),
                "resolution": self.index.resolution, "mask_member": self.index.mask_member,
                "mask_source": self.index.mask_source}

    def checkpoint_state(self) -> dict:
        """What state.json records beside the step and the optimizer (trainers.model.checkpoint)."""
        return {"recipe": self.cfg.recipe(), "loader": self.loader_state.to_dict(),
                "world_size": self.dist.world_size, "data": self.data_desc(), "history": self.history,
                "seeds": {"seed": self.cfg.seed}, "code": code_version()}


def train(cfg: TrainConfig, hook: Callable | None = None) -> dict:
    """Train (or resume) a run; returns the model card (rank 0) or a small summary (other ranks).

    ``hook(step, batch, loss)`` is called on every rank after each optimizer step (tests use it).
    """
    seg = _start(cfg)
    if seg.dist.main:
        _announce(seg)
    model = _wrap_ddp(seg)
    _run_steps(seg, model, hook)
    return _finish(seg)


def _start(cfg: TrainConfig) -> Segment:
    """Validate, pick ranks and device, open the data, build (or restore) the model and optimizer."""
    cfg.validate()
    d = dist_from_env()
    device = resolve_device(cfg.device, local_rank=d.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    _set_determinism(cfg, device)
    run = Path(cfg.out)
    index = open_index(cfg.data, split="train", holdout_permille=cfg.holdout_permille, mask=cfg.mask,
                       mask_source=cfg.mask_source, allow_remote_shards=cfg.allow_remote_shards, verify=cfg.verify)
    val_index = other_split(index, "val")  # the same opened manifest and view
    index, val_index = (open_cache(i, cache_dir=cfg.cache_dir, cache_limit=cfg.cache_limit, enabled=cfg.cache,
                                   announce=emit if d.main and i is index else None) for i in (index, val_index))
    if cfg.access == "random":
        require_offsets(cfg.data, allow_remote_shards=cfg.allow_remote_shards, index=index)
    saved = None
    if cfg.resume:
        saved, model_t, optim_t = load_checkpoint(run)
        _check_resume(cfg, saved, index)
    elif (run / POINTER_FILE).exists() or (run / "model.json").exists():
        raise TrainError(f"{run} already holds a run; pass --resume to continue it, or choose a new --out")

    torch.manual_seed(cfg.seed)
    net = UNet(ModelConfig(width=cfg.width))
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
    workers = cfg.workers if cfg.workers is not None else default_workers(d.local_world_size)
    seg = Segment(cfg=cfg, dist=d, device=device, run=run, index=index, val_index=val_index, net=net, opt=opt,
                  workers=workers, loader_state=LoaderState(cfg.seed, 0, 0))
    if saved is not None:
        net.load_state_dict(model_t, strict=True)
        opt.load_state_dict(unflatten_optimizer(optim_t, saved["optimizer"]))
        torch.set_rng_state(optim_t["rng.torch_cpu"])
        seg.step = int(saved["step"])
        seg.loader_state = LoaderState.from_dict(saved["loader"])
        seg.history = list(saved.get("history", []))
    net.to(device)
    for st in opt.state.values():  # Adam state follows the parameters' device
        for k, v in st.items():
            if torch.is_tensor(v) and k != "step":
                st[k] = v.to(device)
    seg.history.append({"start_step": seg.step, "world_size": d.world_size, "batch_size": cfg.batch_size,
                        "device": device.type, "workers": workers})
    return seg


def _device_text(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({torch.get_num_threads()} threads)"


@torch.no_grad()
def time_forward(net: torch.nn.Module, *, device: torch.device, resolution: int, repeats: int = 5) -> float:
    """Seconds of one eval-mode forward pass of one sample: the median of ``repeats`` timed passes of a
    batch of 4, so one pass delayed by a busy machine does not turn minutes into hours (changes no
    weight, statistic or RNG)."""
    was = net.training
    net.eval()
    x = torch.zeros(4, 3, resolution, resolution, device=device)
    try:
        with torch.no_grad():
            net(x)  # warm-up: first-call allocations
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                net(x)
                times.append(time.perf_counter() - t0)
        return statistics.median(times) / x.shape[0]
    finally:
        net.train(was)


def _announce(seg: Segment) -> None:
    """Rank 0, before the first step: the start-up line; on a CPU, a warning if the run takes hours."""
    cfg = seg.cfg
    emit(startup_line(device=_device_text(seg.device), world_size=seg.dist.world_size, batch_size=cfg.batch_size,
                      width=cfg.width, workers=seg.workers, workers_auto=cfg.workers is None, start_step=seg.step,
                      steps=cfg.steps, train_samples=len(seg.index), val_samples=len(seg.val_index)))
    if seg.device.type != "cpu" or seg.step >= cfg.steps:
        return
    # forward + backward ~ 3 forwards; per-sample cost roughly constant in the batch on a CPU
    sec_per_step = 3.0 * cfg.batch_size * time_forward(seg.net, device=seg.device,
                                                       resolution=seg.index.resolution or 128)
    advice = cpu_advice(sec_per_step=sec_per_step, steps_left=cfg.steps - seg.step, batch_size=cfg.batch_size,
                        width=cfg.width)
    if advice:
        emit(advice)


def _wrap_ddp(seg: Segment) -> torch.nn.Module:
    """The module the loop calls: the network itself, or DDP around it under torchrun."""
    if not seg.dist.enabled:
        return seg.net
    import torch.distributed as tdist

    if not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if seg.device.type == "cuda" else "gloo")
    return torch.nn.parallel.DistributedDataParallel(
        seg.net, device_ids=[seg.device.index] if seg.device.type == "cuda" else None)


def _run_steps(seg: Segment, model: torch.nn.Module, hook: Callable | None) -> None:
    """Epoch after epoch from the loader state until ``cfg.steps``; validates and checkpoints on schedule."""
    cfg, d = seg.cfg, seg.dist
    if cfg.access == "random":
        stream = open_random_access(cfg.data, seg.index, allow_remote_shards=cfg.allow_remote_shards,
                                    batch_size=cfg.batch_size, seed=cfg.seed, world_size=d.world_size, rank=d.rank,
                                    flip=cfg.flip, state=seg.loader_state)
        loader = stream.loader(num_workers=seg.workers, pin_memory=seg.device.type == "cuda")
    else:
        stream = TrainStream(seg.index, batch_size=cfg.batch_size, seed=cfg.seed, world_size=d.world_size,
                             rank=d.rank, shuffle_window=cfg.shuffle_window, flip=cfg.flip, state=seg.loader_state)
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=seg.workers,
                                             pin_memory=seg.device.type == "cuda",
                                             prefetch_factor=4 if seg.workers else None)
    bar = None
    if d.main and cfg.progress:
        bar = Progress(total=cfg.steps, initial=seg.step, global_batch=seg.global_batch, every=cfg.progress_every)
    t_start = time.perf_counter()
    model.train()
    try:
        while seg.step < cfg.steps:
            stream.set_state(seg.loader_state)
            if stream.steps() == 0:  # epoch exhausted (remainder dropped): next epoch
                seg.loader_state = LoaderState(cfg.seed, seg.loader_state.epoch + 1, 0)
                continue
            for j, batch in enumerate(loader):
                if batch["step"] != j or batch["epoch"] != seg.loader_state.epoch:
                    raise RuntimeError(f"loader returned step {batch['step']} of epoch {batch['epoch']}, "
                                       f"expected step {j} of epoch {seg.loader_state.epoch}")
                _step(seg, model, batch)
                if hook is not None:
                    hook(seg.step, batch, seg.last_loss)
                if bar is not None:
                    bar.update(seg.last_loss)
                _on_schedule(seg)
                if seg.step >= cfg.steps:
                    break
    finally:
        if bar is not None:
            bar.close()
        seg.wall = time.perf_counter() - t_start


def _step(seg: Segment, model: torch.nn.Module, batch: dict) -> None:
    """One optimizer step on one batch; advances the step and the loader state."""
    for group in seg.opt.param_groups:
        group["lr"] = lr_at(seg.cfg, seg.step)
    x = batch["image"].to(seg.device, non_blocking=True)
    y = batch["mask"].to(seg.device, non_blocking=True)
    with _autocast(seg.device):
        logits = model(x)
    loss = F.binary_cross_entropy_with_logits(logits.float(), y)
    seg.opt.zero_grad(set_to_none=True)
    loss.backward()
    seg.opt.step()
    seg.step += 1
    seg.steps_run += 1
    ls = seg.loader_state
    seg.loader_state = LoaderState(seg.cfg.seed, ls.epoch, ls.consumed + seg.global_batch)
    seg.last_loss = float(loss.detach())
    if seg.cfg.audit:
        seg.audit_rows.append(batch["row"].tolist())


def _on_schedule(seg: Segment) -> None:
    """Validation and checkpoint every N steps (the last step is handled by ``_finish``)."""
    cfg, step = seg.cfg, seg.step
    if cfg.val_every and step % cfg.val_every == 0 and step < cfg.steps:
        seg.last_val = _validate_and_log(seg)
    if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
        _sync_buffers(seg.net, seg.dist)
        if seg.dist.main:
            save_checkpoint(seg.run, step=step, net=seg.net, opt=seg.opt, state=seg.checkpoint_state())


def _finish(seg: Segment) -> dict:
    """Last validation, checkpoint, final model and card (rank 0); audit file (every rank)."""
    d, run = seg.dist, seg.run
    _sync_buffers(seg.net, d)
    seg.history[-1]["end_step"] = seg.step
    if seg.cfg.audit:
        atomic_write(run / "audit" / f"rank-{d.rank}.json",
                     json_bytes({"rank": d.rank, "world_size": d.world_size, "rows": seg.audit_rows,
                                 "state_sha256": _state_digest(seg.net)}))
    card = {}
    if d.main:
        seg.last_val = _validate_and_log(seg) or seg.last_val
        save_checkpoint(run, step=seg.step, net=seg.net, opt=seg.opt, state=seg.checkpoint_state())
        extra = {"step": seg.step, "dataset_id": seg.index.dataset_id, "view_id": seg.index.view_id,
                 "card": CARD_FILE}
        save_model(run, seg.net.to("cpu"), seg.net.config, extra)
        card = _card(seg)
        atomic_write(run / CARD_FILE, json_bytes(card))
    if d.enabled:
        import torch.distributed as tdist

        tdist.barrier()
        tdist.destroy_process_group()
    return card if d.main else {"rank": d.rank, "step": seg.step}


def _sync_buffers(net: torch.nn.Module, d: Dist) -> None:
    """Give every rank rank 0's BatchNorm statistics (DDP broadcasts them before each forward anyway)."""
    if not d.enabled:
        return
    import torch.distributed as tdist

    for b in net.buffers():
        tdist.broadcast(b, 0)


def _validate_and_log(seg: Segment) -> dict:
    """Rank 0: hold-out metrics, appended as one line to RUN/metrics.jsonl."""
    if not seg.dist.main or len(seg.val_index) == 0:
        return {}
    m = validate(seg.net, seg.val_index, device=seg.device, batch_size=min(seg.cfg.batch_size, 64),
                 limit=seg.cfg.val_max or None)
    line = json.dumps({"step": seg.step, "train_loss": seg.last_loss, **{f"val_{k}": v for k, v in m.items()}},
                      sort_keys=True)
    seg.run.mkdir(parents=True, exist_ok=True)
    with open(seg.run / METRICS_FILE, "a") as f:
        f.write(line + "\n")
    return m


def _card(seg: Segment) -> dict:
    cfg, index, val_index, g, wall = seg.cfg, seg.index, seg.val_index, seg.global_batch, seg.wall
    return {
        "format": "trainers-card",
        "format_version": 1,
        "model": {"weights": "model.safetensors", "info": "model.json", "architecture": "unet",
                  "width": cfg.width},
        "data": {
            "url": cfg.data, "dataset_id": index.dataset_id, "view_id": index.view_id,
            "resolution": index.resolution, "mask_member": index.mask_member, "mask_source": index.mask_source,
            "train_samples": len(index), "val_samples": len(val_index),
            "holdout": {"permille": cfg.holdout_permille, "rule": holdout_rule(cfg.holdout_permille),
                        "meaning": "samples whose key satisfies the rule are validation only, never trained on"},
            "epoch_remainder": "dropped: samples after the last full global batch of an epoch are skipped "
                               "in that epoch",
        },
        "recipe": cfg.recipe(),
        "training": {
            "steps": seg.step, "loader_state": seg.loader_state.to_dict(), "history": seg.history,
            "final_train_loss": seg.last_loss, "world_size": seg.dist.world_size, "global_batch": g,
            "device": seg.device.type,
            "this_segment": {"steps": seg.steps_run, "wall_seconds": round(wall, 3),
                             "samples_per_second": round(seg.steps_run * g / wall, 2) if wall > 0 else None},
        },
        "validation": {"split": "hold-out of the synthetic data (see data.holdout)",
                       "limit": cfg.val_max or None, "metrics": seg.last_val,
                       "protocol": "BCE per pixel; IoU/accuracy at p >= 0.5 per image; maxF beta^2=0.3 "
                                   "(trainers.eval.metrics)"},
        "code": code_version(),
    }
