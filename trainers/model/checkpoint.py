"""Weights on disk: the run folder's model, any ``--model`` argument, and training checkpoints.

Run folder model (what ``train`` and ``convert`` write and every command reads)::

    RUN/model.safetensors   weights (safetensors, never pickle)
    RUN/model.json          format tag, ModelConfig, sha256 and size of the weights, caller's ``extra``

Both are written atomically (temp file + os.replace), the JSON last, so a folder with a readable
model.json always has matching weights. ``open_model`` takes a run folder or one of the paper
authors' ``.pth`` files (trainers/model/authors.py); ``convert_authors`` turns such a file into a run
folder whose model.json records the source file's name and sha256.

Training checkpoints (``trainers train``)::

    RUN/checkpoint.json                     pointer to the newest complete checkpoint (replaced atomically)
    RUN/checkpoints/step-NNNNNNNN/          model.safetensors, optimizer.safetensors, state.json

A checkpoint folder is written under a temporary name, fsynced and renamed; then checkpoint.json
is replaced; older checkpoint folders are deleted after that. state.json records what the caller
passes (recipe, loader state, data ids, history) plus the step, the optimizer's param groups and
the sha256 of both safetensors files; optimizer.safetensors holds the Adam tensors flattened as
``state.<param index>.<name>`` plus the torch CPU RNG state (``rng.torch_cpu``).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from trainers.errors import TrainersError
from trainers.fileio import atomic_write, json_bytes, sha256_bytes, sha256_file
from trainers.model.authors import (
    AUTHORS_CONFIG,
    SOURCE_FORMAT,
    load_authors_model,
    read_authors_state,
)
from trainers.model.unet import ModelConfig, UNet

WEIGHTS_FILE = "model.safetensors"
INFO_FILE = "model.json"
FORMAT = "trainers-unet"
FORMAT_VERSION = 1

POINTER_FILE = "checkpoint.json"
CKPT_DIR = "checkpoints"
CKPT_FORMAT = "trainers-checkpoint"
CKPT_VERSION = 1


class ModelFileError(TrainersError, ValueError):
    """A run folder that cannot be loaded (missing, tampered, wrong keys, ...)."""


class CheckpointError(TrainersError, ValueError):
    """A training checkpoint that is absent or corrupt."""


# ----------------------------------------------------------------------------- run folder model


def save_model(run_dir: str | os.PathLike, model: UNet, config: ModelConfig | None = None,
               extra: dict | None = None) -> Path:
    """Write model.safetensors then model.json (both atomic) into ``run_dir``; returns the folder.

    ``extra`` is any JSON-serialisable metadata (step, dataset id, source file...).
    """
    from safetensors.torch import save

    config = config if config is not None else model.config
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
    if config != getattr(model, "config", config):
        raise ValueError(f"config {config} does not match the model's {model.config}")
    extra = {} if extra is None else extra
    if not isinstance(extra, dict):
        raise TypeError(f"extra must be a dict, got {type(extra).__name__}")
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    blob = save(state, metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "weights": WEIGHTS_FILE,
        "weights_sha256": sha256_bytes(blob),
        "weights_bytes": len(blob),
        "n_tensors": len(state),
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "extra": extra,
    }
    atomic_write(run / WEIGHTS_FILE, blob)
    atomic_write(run / INFO_FILE, json_bytes(info))
    return run


def read_model_info(run_dir: str | os.PathLike) -> dict:
    """Read and validate model.json; returns the dict with ``config`` as a ModelConfig."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ModelFileError(f"model folder {str(run)!r} does not exist (expected a run folder "
                             f"holding {WEIGHTS_FILE} and {INFO_FILE})")
    path = run / INFO_FILE
    if not path.is_file():
        raise ModelFileError(f"{path} is missing: a run folder holds {WEIGHTS_FILE} and {INFO_FILE} "
                             f"written by trainers.model.checkpoint.save_model")
    try:
        info = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a {FORMAT} model description (format="
                             f"{info.get('format') if isinstance(info, dict) else None!r})")
    if info.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{path} has format_version {info.get('format_version')!r}; "
                             f"this code reads version {FORMAT_VERSION}")
    try:
        info["config"] = ModelConfig.from_dict(info.get("config"))
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"{path}: bad model config: {e}") from None
    if not isinstance(info.get("weights_sha256"), str):
        raise ModelFileError(f"{path} lacks weights_sha256")
    info.setdefault("extra", {})
    return info


def _read_weights(path: Path, info: dict) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    if not path.is_file():
        raise ModelFileError(f"{path} is missing (model.json is present)")
    blob = path.read_bytes()
    digest = sha256_bytes(blob)
    if digest != info["weights_sha256"]:
        raise ModelFileError(f"{path} does not match model.json (sha256 {digest[:12]}... != recorded "
                             f"{info['weights_sha256'][:12]}...): the file is corrupt or was modified")
    try:
        return load(blob)
    except (SafetensorError, ValueError, RuntimeError, OSError) as e:
        raise ModelFileError(f"{path} is not a safetensors file ({e}); pickled checkpoints are "
                             f"refused") from None


def load_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> UNet:
    """Rebuild the U-Net of a run folder on ``device``, in eval mode.

    Weights are read with safetensors only (never pickle), checked against the
    sha256 recorded in model.json, and loaded strictly (every key and shape).
    The returned model carries ``model.config`` and ``model.extra``.
    """
    info = read_model_info(run_dir)
    path = Path(run_dir) / WEIGHTS_FILE
    state = _read_weights(path, info)
    model = UNet(info["config"])
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelFileError(f"{path} does not fit {info['config']}: missing keys {missing[:5]}"
                             f"{'...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
                             f"{'...' if len(unexpected) > 5 else ''}")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape) or state[k].dtype != v.dtype:
            raise ModelFileError(f"{path}: tensor {k!r} is {state[k].dtype} {tuple(state[k].shape)}, "
                                 f"the model expects {v.dtype} {tuple(v.shape)}")
    model.load_state_dict(state, strict=True)
    model.extra = info["extra"]
    return model.to(device).eval()


def open_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> UNet:
    """What ``--model PATH`` means: a run folder, or a file = one of the authors' ``.pth`` checkpoints."""
    p = Path(path)
    if p.is_file() or (not p.exists() and p.suffix in (".pth", ".pt")):
        model = load_authors_model(p)
        model.extra = {"source": {"format": SOURCE_FORMAT, "file": p.name}}
        return model.to(device)
    return load_model(p, device)


def model_label(path: str | os.PathLike) -> str:
    """Default name of a model's row in tables: the run folder's name, or the .pth file's stem."""
    p = Path(path).resolve()
    return p.stem if p.is_file() else p.name


def convert_authors(pth: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Write an authors' ``.pth`` as the run folder ``out`` (safetensors + model.json); returns model.json.

    model.json's ``extra.source`` records the file's name, byte size and sha256. Refuses a folder that
    already holds a model.
    """
    src, run = Path(pth), Path(out)
    if (run / INFO_FILE).exists():
        raise ModelFileError(f"{run} already holds a model ({INFO_FILE}); choose a new --out")
    state = read_authors_state(src)  # checks everything before anything is written
    model = UNet(AUTHORS_CONFIG)
    model.load_state_dict(state, strict=True)
    source = {"format": SOURCE_FORMAT, "file": src.name, "bytes": src.stat().st_size,
              "sha256": sha256_file(src)}
    save_model(run, model, AUTHORS_CONFIG, {"source": source})
    return json.loads((run / INFO_FILE).read_text())


# ----------------------------------------------------------------------------- training checkpoints


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
    """Inverse of ``flatten_optimizer``: an ``Optimizer.load_state_dict`` argument."""
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


def save_checkpoint(run: Path, *, step: int, net: torch.nn.Module, opt: torch.optim.Optimizer,
                    state: dict) -> Path:
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
                    files={"model.safetensors": sha256_bytes(weights), "optimizer.safetensors": sha256_bytes(optim)})
        for name, data in (("model.safetensors", weights), ("optimizer.safetensors", optim),
                           ("state.json", json_bytes(body))):
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
    atomic_write(run / POINTER_FILE, json_bytes({"latest": f"{CKPT_DIR}/{final.name}", "step": step}))
    for old in ckroot.iterdir():
        if old.name != final.name and (old.name.startswith("step-") or old.name.endswith(".tmp")):
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(run: Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(state.json, model tensors, optimizer tensors) of the newest checkpoint; checks both digests."""
    from safetensors.torch import load

    ptr = run / POINTER_FILE
    if not ptr.is_file():
        raise CheckpointError(f"--resume: {ptr} does not exist (no checkpoint was completed in {run}); "
                              f"start without --resume")
    try:
        latest = json.loads(ptr.read_text())["latest"]
        d = run / latest
        state = json.loads((d / "state.json").read_text())
    except (OSError, KeyError, ValueError) as e:
        raise CheckpointError(f"--resume: cannot read the checkpoint named by {ptr}: {e}") from None
    if state.get("format") != CKPT_FORMAT or state.get("format_version") != CKPT_VERSION:
        raise CheckpointError(f"{d}/state.json is not a {CKPT_FORMAT} v{CKPT_VERSION} checkpoint")
    blobs = {}
    for name, digest in state["files"].items():
        blob = (d / name).read_bytes()
        if sha256_bytes(blob) != digest:
            raise CheckpointError(f"{d / name} does not match the sha256 in state.json: the checkpoint is corrupt")
        blobs[name] = load(blob)
    return state, blobs["model.safetensors"], blobs["optimizer.safetensors"]
