"""The U-Net (Ronneberger, Fischer & Brox, MICCAI 2015) and its ModelConfig; no file I/O here.

Two variants, chosen by ``ModelConfig`` (one network code, not two copies):

``upsampling="transposed"`` (ours, what ``trainers train`` builds)
  - encoder: an input block then 4 down steps (2x2 max-pool, double conv);
    widths w, 2w, 4w, 8w, 16w with w = ``ModelConfig.width`` (64 by default);
  - decoder: 4 up steps, each a 2x2 transposed convolution with stride 2
    (halving the channels), concatenation [skip, up], then a double conv;
  - inputs whose sides are not multiples of 16 are padded on the bottom/right by
    edge replication and the logits are cropped back (128x171 in, 128x171 out).

``upsampling="bilinear"`` (the paper authors' released U-Nets, milesial layout)
  - the bottom block has 8w channels instead of 16w; each up step is a
    parameter-free bilinear x2 upsample (align_corners=True), then the upsampled
    map is zero-padded to the skip's size (``F.pad`` with the odd pixel on the
    right/bottom), concatenated [skip, up] and fed to a double conv whose output
    is half the skip's width (the last one keeps w);
  - no input padding: odd sizes are absorbed at every up step.

Common parts: double conv = (3x3 conv, padding 1 -> BatchNorm -> ReLU) x 2, with
conv biases when ``conv_bias`` (the authors') and without (ours); the head is a
1x1 conv to ``out_channels`` logits. ``head="sigmoid"``: 1 logit, foreground =
sigmoid; ``head="softmax"``: 2 logits, foreground = softmax(logits)[:, 1]
(``foreground_probability``). Input: RGB in [-1, 1].

Module names: ``inc``, ``downs.K`` (MaxPool, DoubleConv), ``ups.K`` (``up``, ``conv``), ``head``;
trainers/model/authors.py maps them to the authors' state-dict names. Weights on disk: trainers/model/checkpoint.py.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DOWN_STEPS = 4
MULTIPLE = 2 ** DOWN_STEPS  # "transposed" inputs are padded to a multiple of 16
UPSAMPLING = ("transposed", "bilinear")
HEADS = {"sigmoid": 1, "softmax": 2}  # head -> number of logit channels


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network; saved in model.json beside the weights.

    model.json files written before ``conv_bias`` and ``head`` existed load with their defaults.
    """

    width: int = 64
    in_channels: int = 3
    out_channels: int = 1
    upsampling: str = "transposed"
    input_range: str = "[-1,1]"
    conv_bias: bool = False
    head: str = "sigmoid"

    def __post_init__(self):
        for name in ("width", "in_channels", "out_channels"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {v!r}")
        if self.upsampling not in UPSAMPLING:
            raise ValueError(f"ModelConfig.upsampling must be one of {list(UPSAMPLING)}, got {self.upsampling!r}")
        if self.input_range != "[-1,1]":
            raise ValueError(f"ModelConfig.input_range must be '[-1,1]', got {self.input_range!r}")
        if not isinstance(self.conv_bias, bool):
            raise ValueError(f"ModelConfig.conv_bias must be true or false, got {self.conv_bias!r}")
        if self.head not in HEADS:
            raise ValueError(f"ModelConfig.head must be one of {list(HEADS)}, got {self.head!r}")
        if self.out_channels != HEADS[self.head]:
            raise ValueError(f"ModelConfig.head {self.head!r} needs out_channels={HEADS[self.head]}, "
                             f"got {self.out_channels}")

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
    def __init__(self, cin: int, cout: int, bias: bool = False):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=bias),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=bias),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    def __init__(self, cin: int, cout: int, bias: bool = False):
        super().__init__(nn.MaxPool2d(2), DoubleConv(cin, cout, bias))


class Up(nn.Module):
    """Upsample ``x`` (transposed conv or bilinear), fit it to the skip, concatenate [skip, x], double conv."""

    def __init__(self, cin: int, cskip: int, cout: int, *, bilinear: bool, bias: bool):
        super().__init__()
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(cin + cskip, cout, bias)
        else:
            self.up = nn.ConvTranspose2d(cin, cin // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(cin // 2 + cskip, cout, bias)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        if dy or dx:  # only on the bilinear path: odd sizes (the transposed path pads its input)
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """U-Net returning logits [B, out_channels, H, W] for images [B, 3, H, W] in [-1, 1]."""

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = c = config if config is not None else ModelConfig()
        bilinear = c.upsampling == "bilinear"
        widths = [c.width * 2 ** i for i in range(DOWN_STEPS + 1)]  # w .. 16w
        if bilinear:
            widths[-1] //= 2  # the authors' bottom block: 8w
        self.inc = DoubleConv(c.in_channels, widths[0], c.conv_bias)
        self.downs = nn.ModuleList(Down(widths[i], widths[i + 1], c.conv_bias) for i in range(DOWN_STEPS))
        ups, below = [], widths[-1]
        for i in reversed(range(DOWN_STEPS)):
            out = widths[i] // 2 if bilinear and i > 0 else widths[i]
            ups.append(Up(below, widths[i], out, bilinear=bilinear, bias=c.conv_bias))
            below = out
        self.ups = nn.ModuleList(ups)
        self.head = nn.Conv2d(widths[0], c.out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"UNet expects [B, {self.config.in_channels}, H, W], got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        ph, pw = ((-h) % MULTIPLE, (-w) % MULTIPLE) if self.config.upsampling == "transposed" else (0, 0)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return self.head(y)[..., :h, :w]


def foreground_probability(logits: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Logits [B, C, H, W] -> foreground probability [B, 1, H, W] (float32) by the config's head."""
    logits = logits.float()
    if logits.ndim != 4 or logits.shape[1] != config.out_channels:
        raise ValueError(f"expected logits [B, {config.out_channels}, H, W] for head {config.head!r}, "
                         f"got {tuple(logits.shape)}")
    if config.head == "softmax":
        return torch.softmax(logits, dim=1)[:, 1:2]
    return torch.sigmoid(logits)


def pixels_to_input(pixels) -> np.ndarray:
    """8-bit pixel values (uint8 or float, any layout) -> the network's float32 input in [-1, 1]:
    v / 127.5 - 1, in float32 (what train, eval and relabel all feed the U-Net)."""
    return np.asarray(pixels).astype(np.float32) / np.float32(127.5) - np.float32(1.0)
