"""Train the U-Net on a factory dataset or view: the paper's recipe, exact resume, DDP.

Recipe (Voynov et al. 2021, defaults of `TrainConfig`): Adam, lr 1e-3, lr x 0.2
at step 8,000, 12,000 steps, batch 95, per-pixel BCE with logits on the
cleaned masks; bf16 autocast on GPU. ``batch_size`` is per rank: with W ranks a
step consumes W x batch_size samples.

Run folder (``--out RUN``)::

    RUN/model.safetensors, RUN/model.json   final weights (trainers.unet.save_model format)
    RUN/card.json                           model card: data ids, recipe, code version, hold-out metrics
    RUN/metrics.jsonl                       one line per validation
    RUN/checkpoint.json                     pointer to the newest complete checkpoint (replaced atomically)
    RUN/checkpoints/step-NNNNNNNN/          model.safetensors, optimizer.safetensors, state.json

A checkpoint folder is written under a temporary name, fsynced and renamed;
then checkpoint.json is replaced atomically (temp + os.replace); older
checkpoint folders are deleted after that. state.json records the step, the
recipe, the loader state (seed, epoch, samples consumed), the sha256 of both
safetensors files and the optimizer's param groups; optimizer.safetensors
holds the Adam tensors flattened as ``state.<param index>.<name>`` plus the
torch CPU RNG state. ``resume=True`` continues bit-exactly on CPU: the weights
after a stop at step k and a resume equal those of an uninterrupted run.

Distributed: started by torchrun (RANK, WORLD_SIZE, LOCAL_RANK from the
environment), DDP with gloo on CPU and nccl on GPU. Rank 0 writes every file.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from trainers._io import atomic_write as _atomic_write
from trainers import TrainersError, __version__
from trainers.data import (DEFAULT_SHUFFLE_WINDOW, DataError, LoaderState, SampleIndex, TrainStream,
                           holdout_rule, iter_batches, open_index)

CARD_FILE = "card.json"
METRICS_FILE = "metrics.jsonl"
POINTER_FILE = "checkpoint.json"
CKPT_DIR = "checkpoints"
CKPT_FORMAT = "trainers-checkpoint"
CKPT_VERSION = 1

# Recipe fields that must not change when a run is resumed (steps may grow).
_FIXED_ON_RESUME = ("lr", "lr_step", "lr_gamma", "batch_size", "width", "seed", "holdout_permille", "mask",
                    "flip", "shuffle_window", "betas")


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
    workers: int = 4
    seed: int = 0
    holdout_permille: int = 10
    val_max: int = 1000
    checkpoint_every: int = 1000
    val_every: int = 1000
    device: str = "auto"
    mask: str = "clean"
    flip: bool = True
    shuffle_window: int = DEFAULT_SHUFFLE_WINDOW
    deterministic: bool = True
    resume: bool = False
    progress: bool = True
    allow_remote_shards: bool = False
    audit: bool = False  # write RUN/audit/rank-R.json: rows of every step + final weights digest

    def validate(self) -> None:
        def pos(name, v, zero_ok=False):
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if zero_ok else 1):
                raise TrainError(f"--{name.replace('_', '-')} must be an integer >= {0 if zero_ok else 1}, "
                                 f"got {v!r}")
        pos("steps", self.steps)
        pos("batch_size", self.batch_size)
        pos("width", self.width)
        pos("workers", self.workers, zero_ok=True)
        pos("checkpoint_every", self.checkpoint_every, zero_ok=True)
        pos("val_every", self.val_every, zero_ok=True)
        pos("lr_step", self.lr_step, zero_ok=True)
        pos("shuffle_window", self.shuffle_window)
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
            "holdout_permille": self.holdout_permille, "mask": self.mask, "flip": self.flip,
            "shuffle_window": self.shuffle_window, "loss": "binary_cross_entropy_with_logits (per pixel, mean)",
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

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_from_env() -> Dist:
    try:
        return Dist(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                    int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError as e:
        raise TrainError(f"bad RANK/WORLD_SIZE/LOCAL_RANK in the environment: {e}") from None


def resolve_device(device: str, d: Dist) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{d.local_rank}"
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise TrainError(f"bad --device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"--device {device} asked for CUDA but none is available; use --device cpu")
    return dev


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


# ----------------------------------------------------------------------------- files




def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state -> (tensors for safetensors, JSON part: param groups and non-tensor state)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{idx}.{name}"] = v.detach().to("cpu").contiguous()
            else:
                scalars[f"{idx}.{name}"] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if not key.startswith("state."):
            continue
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = v
    for key, v in meta.get("scalars", {}).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(run: Path, step: int, net: torch.nn.Module, opt: torch.optim.Optimizer, state: dict) -> Path:
    """Write checkpoints/step-N (temp folder -> rename), then checkpoint.json (atomic), then prune."""
    from safetensors.torch import save

    ckroot = run / CKPT_DIR
    ckroot.mkdir(parents=True, exist_ok=True)
    final = ckroot / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step:08d}.", suffix=".tmp", dir=ckroot))
    try:
        weights = save({k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()})
        otensors, ometa = flatten_optimizer(opt)
        otensors["rng.torch_cpu"] = torch.get_rng_state()
        optim = save(otensors)
        body = dict(state, format=CKPT_FORMAT, format_version=CKPT_VERSION, step=step, optimizer=ometa,
                    files={"model.safetensors": _sha(weights), "optimizer.safetensors": _sha(optim)})
        for name, data in (("model.safetensors", weights), ("optimizer.safetensors", optim),
                           ("state.json", _json_bytes(body))):
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _atomic_write(run / POINTER_FILE, _json_bytes({"latest": f"{CKPT_DIR}/{final.name}", "step": step}))
    for old in ckroot.iterdir():
        if old.name != final.name and (old.name.startswith("step-") or old.name.endswith(".tmp")):
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(run: Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(state.json, model tensors, optimizer tensors) of the newest checkpoint; checks both digests."""
    from safetensors.torch import load

    ptr = run / POINTER_FILE
    if not ptr.is_file():
        raise TrainError(f"--resume: {ptr} does not exist (no checkpoint was completed in {run}); "
                         f"start without --resume")
    try:
        latest = json.loads(ptr.read_text())["latest"]
        d = run / latest
        state = json.loads((d / "state.json").read_text())
    except (OSError, KeyError, ValueError) as e:
        raise TrainError(f"--resume: cannot read the checkpoint named by {ptr}: {e}") from None
    if state.get("format") != CKPT_FORMAT or state.get("format_version") != CKPT_VERSION:
        raise TrainError(f"{d}/state.json is not a {CKPT_FORMAT} v{CKPT_VERSION} checkpoint")
    blobs = {}
    for name, digest in state["files"].items():
        blob = (d / name).read_bytes()
        if _sha(blob) != digest:
            raise TrainError(f"{d / name} does not match the sha256 in state.json: the checkpoint is corrupt")
        blobs[name] = load(blob)
    return state, blobs["model.safetensors"], blobs["optimizer.safetensors"]


# ----------------------------------------------------------------------------- validation


@torch.no_grad()
def validate(net: torch.nn.Module, index: SampleIndex, device: torch.device, batch_size: int,
             limit: int | None) -> dict:
    """Hold-out metrics: per-pixel BCE, IoU / accuracy at 0.5, maxF, MAE (trainers.metrics protocol)."""
    from trainers.metrics import SegmentationMetrics

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
    diff = [f"{k}: checkpoint {recipe.get(k)!r}, now {now[k]!r}" for k in _FIXED_ON_RESUME
            if recipe.get(k) != now[k]]
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


def train(cfg: TrainConfig, hook: Callable | None = None) -> dict:
    """Train (or resume) a run; returns the model card (rank 0) or a small summary (other ranks).

    ``hook(step, batch, loss)`` is called on every rank after each optimizer step (tests use it).
    """
    import torch.distributed as tdist

    from trainers.unet import ModelConfig, UNet, save_model

    cfg.validate()
    d = dist_from_env()
    device = resolve_device(cfg.device, d)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    _set_determinism(cfg, device)
    run = Path(cfg.out)
    try:
        index = open_index(cfg.data, split="train", holdout_permille=cfg.holdout_permille, mask=cfg.mask,
                           allow_remote_shards=cfg.allow_remote_shards)
        val_index = open_index(cfg.data, split="val", holdout_permille=cfg.holdout_permille, mask=cfg.mask,
                               allow_remote_shards=cfg.allow_remote_shards)
    except DataError as e:
        raise TrainError(str(e)) from None

    saved = None
    if cfg.resume:
        saved, model_t, optim_t = load_checkpoint(run)
        _check_resume(cfg, saved, index)
    elif (run / POINTER_FILE).exists() or (run / "model.json").exists():
        raise TrainError(f"{run} already holds a run; pass --resume to continue it, or choose a new --out")

    torch.manual_seed(cfg.seed)
    mcfg = ModelConfig(width=cfg.width)
    net = UNet(mcfg)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
    step = 0
    loader_state = LoaderState(cfg.seed, 0, 0)
    history: list[dict] = []
    if saved is not None:
        net.load_state_dict(model_t, strict=True)
        opt.load_state_dict(unflatten_optimizer(optim_t, saved["optimizer"]))
        torch.set_rng_state(optim_t["rng.torch_cpu"])
        step = int(saved["step"])
        loader_state = LoaderState.from_dict(saved["loader"])
        history = list(saved.get("history", []))
    net.to(device)
    # Adam state follows the parameters' device.
    for st in opt.state.values():
        for k, v in st.items():
            if torch.is_tensor(v) and k != "step":
                st[k] = v.to(device)

    if d.enabled and not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    model = net
    if d.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)

    stream = TrainStream(index, batch_size=cfg.batch_size, seed=cfg.seed, world_size=d.world_size, rank=d.rank,
                         shuffle_window=cfg.shuffle_window, flip=cfg.flip, state=loader_state)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=cfg.workers,
                                         pin_memory=device.type == "cuda",
                                         prefetch_factor=4 if cfg.workers else None)
    g = stream.global_batch
    history.append({"start_step": step, "world_size": d.world_size, "batch_size": cfg.batch_size,
                    "device": device.type, "workers": cfg.workers})
    data_desc = {"url": cfg.data, "dataset_id": index.dataset_id, "view_id": index.view_id,
                 "train_samples": len(index), "val_samples": len(val_index), "resolution": index.resolution,
                 "mask_member": index.mask_member}

    def ck_state() -> dict:
        return {"recipe": cfg.recipe(), "loader": loader_state.to_dict(), "world_size": d.world_size,
                "data": data_desc, "history": history, "seeds": {"seed": cfg.seed}, "code": code_version()}

    audit_rows: list[list[int]] = []
    bar = None
    if d.main and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
    last_val: dict = {}
    last_loss = float("nan")
    t_start = time.perf_counter()
    steps_run = 0
    model.train()
    try:
        while step < cfg.steps:
            stream.set_state(loader_state)
            if stream.steps() == 0:  # epoch exhausted (remainder dropped): next epoch
                loader_state = LoaderState(cfg.seed, loader_state.epoch + 1, 0)
                continue
            for j, batch in enumerate(loader):
                if batch["step"] != j or batch["epoch"] != loader_state.epoch:
                    raise RuntimeError(f"loader returned step {batch['step']} of epoch {batch['epoch']}, "
                                       f"expected step {j} of epoch {loader_state.epoch}")
                for group in opt.param_groups:
                    group["lr"] = lr_at(cfg, step)
                x = batch["image"].to(device, non_blocking=True)
                y = batch["mask"].to(device, non_blocking=True)
                with _autocast(device):
                    logits = model(x)
                loss = F.binary_cross_entropy_with_logits(logits.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                steps_run += 1
                loader_state = LoaderState(cfg.seed, loader_state.epoch, loader_state.consumed + g)
                last_loss = float(loss.detach())
                if cfg.audit:
                    audit_rows.append(batch["row"].tolist())
                if hook is not None:
                    hook(step, batch, last_loss)
                if bar is not None:
                    el = time.perf_counter() - t_start
                    bar.set_postfix(loss=f"{last_loss:.4f}", samples_s=f"{steps_run * g / max(el, 1e-9):.0f}",
                                    refresh=False)
                    bar.update(1)
                if cfg.val_every and step % cfg.val_every == 0 and step < cfg.steps:
                    last_val = _validate_and_log(run, net, val_index, device, cfg, step, last_loss, d)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                    _sync_buffers(net, d)
                    if d.main:
                        save_checkpoint(run, step, net, opt, ck_state())
                if step >= cfg.steps:
                    break
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t_start

    _sync_buffers(net, d)
    history[-1]["end_step"] = step
    if cfg.audit:
        _atomic_write(run / "audit" / f"rank-{d.rank}.json",
                      _json_bytes({"rank": d.rank, "world_size": d.world_size, "rows": audit_rows,
                                   "state_sha256": _state_digest(net)}))
    card = {}
    if d.main:
        last_val = _validate_and_log(run, net, val_index, device, cfg, step, last_loss, d) or last_val
        save_checkpoint(run, step, net, opt, ck_state())
        extra = {"step": step, "dataset_id": index.dataset_id, "view_id": index.view_id, "card": CARD_FILE}
        save_model(run, net.to("cpu"), mcfg, extra)
        card = _card(cfg, index, val_index, step, loader_state, history, last_val, last_loss, wall, steps_run, g,
                     d, device)
        _atomic_write(run / CARD_FILE, _json_bytes(card))
    if d.enabled:
        tdist.barrier()
        tdist.destroy_process_group()
    return card if d.main else {"rank": d.rank, "step": step}


def _sync_buffers(net: torch.nn.Module, d: Dist) -> None:
    """Give every rank rank 0's BatchNorm statistics (DDP broadcasts them before each forward anyway)."""
    if not d.enabled:
        return
    import torch.distributed as tdist

    for b in net.buffers():
        tdist.broadcast(b, 0)


def _validate_and_log(run: Path, net, val_index, device, cfg: TrainConfig, step: int, loss: float, d: Dist) -> dict:
    if not d.main or len(val_index) == 0:
        return {}
    m = validate(net, val_index, device, batch_size=min(cfg.batch_size, 64), limit=cfg.val_max or None)
    line = json.dumps({"step": step, "train_loss": loss, **{f"val_{k}": v for k, v in m.items()}}, sort_keys=True)
    run.mkdir(parents=True, exist_ok=True)
    with open(run / METRICS_FILE, "a") as f:
        f.write(line + "\n")
    return m


def _card(cfg, index, val_index, step, loader_state, history, val, loss, wall, steps_run, g, d, device) -> dict:
    return {
        "format": "trainers-card",
        "format_version": 1,
        "model": {"weights": "model.safetensors", "info": "model.json", "architecture": "unet",
                  "width": cfg.width},
        "data": {
            "url": cfg.data, "dataset_id": index.dataset_id, "view_id": index.view_id,
            "resolution": index.resolution, "mask_member": index.mask_member,
            "train_samples": len(index), "val_samples": len(val_index),
            "holdout": {"permille": cfg.holdout_permille, "rule": holdout_rule(cfg.holdout_permille),
                        "meaning": "samples whose key satisfies the rule are validation only, never trained on"},
            "epoch_remainder": "dropped: samples after the last full global batch of an epoch are skipped "
                               "in that epoch",
        },
        "recipe": cfg.recipe(),
        "training": {
            "steps": step, "loader_state": loader_state.to_dict(), "history": history,
            "final_train_loss": loss, "world_size": d.world_size, "global_batch": g, "device": device.type,
            "this_segment": {"steps": steps_run, "wall_seconds": round(wall, 3),
                             "samples_per_second": round(steps_run * g / wall, 2) if wall > 0 else None},
        },
        "validation": {"split": "hold-out of the synthetic data (see data.holdout)",
                       "limit": cfg.val_max or None, "metrics": val,
                       "protocol": "BCE per pixel; IoU/accuracy at p > 0.5 per image; maxF beta^2=0.3 "
                                   "(trainers.metrics)"},
        "code": code_version(),
    }
