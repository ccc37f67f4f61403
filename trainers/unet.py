"""The standard U-Net (Ronneberger, Fischer & Brox, MICCAI 2015) and its on-disk format.

Architecture
  - encoder: an input block then 4 down steps (2x2 max-pool, double conv);
    widths w, 2w, 4w, 8w, 16w with w = ``ModelConfig.width`` (64 by default);
  - decoder: 4 up steps, each a 2x2 transposed convolution with stride 2 (the
    original paper's "up-convolution", halving the channels), concatenation
    with the skip connection, then a double conv;
  - double conv = (3x3 conv, padding 1, no bias -> BatchNorm -> ReLU) x 2, so a
    block keeps the spatial size (the "same" padding variant used by the
    authors' segmentation code instead of the original valid convolutions);
  - head: 1x1 convolution to ``out_channels`` (1) logit channel; apply a
    sigmoid for the foreground probability.

Input: RGB images normalised to [-1, 1] (``normalize_images`` does it from
[0, 1]). Any size works: inputs whose sides are not multiples of 16 are padded
on the bottom/right by edge replication and the logits are cropped back, so a
128x171 input gives a 128x171 output.

On disk a run folder holds ``model.safetensors`` (weights, never pickle) and
``model.json`` (format tag, ModelConfig, sha256 of the weights, caller's extra
metadata). Both are written atomically (temp file + os.replace), the JSON last,
so a folder with a readable model.json always has matching weights.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainers._io import atomic_write as _atomic_write
from trainers import TrainersError

WEIGHTS_FILE = "model.safetensors"
INFO_FILE = "model.json"
FORMAT = "trainers-unet"
FORMAT_VERSION = 1
DOWN_STEPS = 4
MULTIPLE = 2 ** DOWN_STEPS  # input sides are padded to a multiple of 16


class ModelFileError(TrainersError, ValueError):
    """A run folder that cannot be loaded (missing, tampered, wrong keys, ...)."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network; saved in model.json beside the weights."""

    width: int = 64
    in_channels: int = 3
    out_channels: int = 1
    upsampling: str = "transposed"
    input_range: str = "[-1,1]"

    def __post_init__(self):
        for name in ("width", "in_channels", "out_channels"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {v!r}")
        if self.upsampling != "transposed":
            raise ValueError(f"ModelConfig.upsampling must be 'transposed', got {self.upsampling!r}")
        if self.input_range != "[-1,1]":
            raise ValueError(f"ModelConfig.input_range must be '[-1,1]', got {self.input_range!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> "ModelConfig":
        if not isinstance(d, dict):
            raise ValueError(f"model config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config key(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.MaxPool2d(2), DoubleConv(cin, cout))


class Up(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(cin // 2 + cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """U-Net returning logits [B, out_channels, H, W] for images [B, 3, H, W] in [-1, 1]."""

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config if config is not None else ModelConfig()
        w = self.config.width
        widths = [w * 2 ** i for i in range(DOWN_STEPS + 1)]  # w .. 16w
        self.inc = DoubleConv(self.config.in_channels, widths[0])
        self.downs = nn.ModuleList(Down(widths[i], widths[i + 1]) for i in range(DOWN_STEPS))
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i]) for i in reversed(range(DOWN_STEPS)))
        self.head = nn.Conv2d(widths[0], self.config.out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"UNet expects [B, {self.config.in_channels}, H, W], got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        ph, pw = (-h) % MULTIPLE, (-w) % MULTIPLE
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return self.head(y)[..., :h, :w]


def normalize_images(x: torch.Tensor) -> torch.Tensor:
    """Map images in [0, 1] to the network's input range [-1, 1]."""
    return x * 2.0 - 1.0


# --------------------------------------------------------------------------- files




def save_model(run_dir: str | os.PathLike, model: UNet, config: ModelConfig | None = None,
               extra: dict | None = None) -> Path:
    """Write model.safetensors then model.json (both atomic) into ``run_dir``; returns the folder.

    ``extra`` is any JSON-serialisable metadata (step, dataset id, metrics...).
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
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "weights_bytes": len(blob),
        "n_tensors": len(state),
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "extra": extra,
    }
    info_bytes = (json.dumps(info, indent=2, sort_keys=True) + "\n").encode()
    _atomic_write(run / WEIGHTS_FILE, blob)
    _atomic_write(run / INFO_FILE, info_bytes)
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
                             f"written by trainers.unet.save_model")
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


def load_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> UNet:
    """Rebuild the U-Net of a run folder on ``device``, in eval mode.

    Weights are read with safetensors only (never pickle), checked against the
    sha256 recorded in model.json, and loaded strictly (every key and shape).
    The returned model carries ``model.config`` and ``model.extra``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    info = read_model_info(run_dir)
    path = Path(run_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise ModelFileError(f"{path} is missing (model.json is present)")
    blob = path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != info["weights_sha256"]:
        raise ModelFileError(f"{path} does not match model.json (sha256 {digest[:12]}... != recorded "
                             f"{info['weights_sha256'][:12]}...): the file is corrupt or was modified")
    try:
        state = load(blob)
    except (SafetensorError, ValueError, RuntimeError, OSError) as e:
        raise ModelFileError(f"{path} is not a safetensors file ({e}); pickled checkpoints are "
                             f"refused") from None
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
