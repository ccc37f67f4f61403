"""BigBiGAN's generator as the authors' BigGAN-PyTorch layers, with exactly the state-dict keys of their
``BigBiGAN_x1.pth``: the config (``BigBiGANConfig``), spectral-norm layers folded once at load, conditional
batch norm, residual blocks, attention, and the exact fp32 reference forward (``BigBiGAN``)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from factory.format import FactoryError

# BigGAN-PyTorch G_arch channel multipliers per resolution (in -> out of each block).
_ARCH_MULT: dict[int, list[int]] = {
    32: [4, 4, 4, 4],
    64: [16, 16, 8, 4, 2],
    128: [16, 16, 8, 4, 2, 1],
    256: [16, 16, 8, 8, 4, 2, 1],
    512: [16, 16, 8, 8, 4, 2, 1, 1],
}

# Keys of the authors' BigGAN config that do not change the eval forward: accepted and ignored,
# or accepted only with the value the architecture implements.
_REQUIRED_VALUES: dict[str, tuple] = {
    "G_param": ("SN",),
    "G_shared": (True,),
    "hier": (True,),
    "norm_style": ("bn",),
    "cross_replica": (False,),
    "mybn": (False,),
    "num_G_SVs": (1,),
    "num_G_SV_itrs": (1,),
}


@dataclass(frozen=True)
class BigBiGANConfig:
    """What determines the architecture; defaults are the real BigBiGAN-128."""

    G_ch: int = 96
    dim_z: int = 120
    shared_dim: int = 128
    resolution: int = 128
    G_attn: str = "64"
    n_classes: int = 1000
    BN_eps: float = 1e-4
    SN_eps: float = 1e-4
    bottom_width: int = 4
    output_bn_eps: float = 1e-5
    class_index: int = 0
    hier: bool = field(default=True)

    def __post_init__(self):
        def bad(msg):
            raise FactoryError(f"invalid BigBiGAN config: {msg}")

        if self.resolution not in _ARCH_MULT:
            bad(f"resolution={self.resolution}; supported: {sorted(_ARCH_MULT)}")
        for name in ("G_ch", "dim_z", "shared_dim", "n_classes", "bottom_width"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                bad(f"{name}={v!r} must be a positive integer")
        if not self.hier:
            bad("hier=False is not supported (BigBiGAN uses the hierarchical latent)")
        if self.dim_z % self.num_slots:
            bad(f"dim_z={self.dim_z} is not divisible by the {self.num_slots} latent chunks")
        if not 0 <= self.class_index < self.n_classes:
            bad(f"class_index={self.class_index} outside [0, {self.n_classes})")
        for r in self.attn_resolutions:
            if r not in self.block_resolutions:
                bad(f"G_attn={self.G_attn!r}: {r} is not a block resolution {self.block_resolutions}")
        if self.G_ch * 2 % 8 and self.attn_resolutions:
            bad(f"G_ch={self.G_ch}: attention needs channels divisible by 8")
        if self.bottom_width * 2 ** self.n_blocks != self.resolution:
            bad(f"bottom_width={self.bottom_width} does not reach resolution {self.resolution}")

    # derived architecture -------------------------------------------------
    @property
    def n_blocks(self) -> int:
        return len(_ARCH_MULT[self.resolution]) - 1

    @property
    def in_channels(self) -> list[int]:
        return [m * self.G_ch for m in _ARCH_MULT[self.resolution][:-1]]

    @property
    def out_channels(self) -> list[int]:
        return [m * self.G_ch for m in _ARCH_MULT[self.resolution][1:]]

    @property
    def block_resolutions(self) -> list[int]:
        return [self.bottom_width * 2 ** (i + 1) for i in range(self.n_blocks)]

    @property
    def attn_resolutions(self) -> list[int]:
        return sorted({int(s) for s in str(self.G_attn).split("_") if s.strip() and int(s) > 0})

    @property
    def num_slots(self) -> int:
        return self.n_blocks + 1

    @property
    def z_chunk(self) -> int:
        return self.dim_z // self.num_slots

    @property
    def cond_dim(self) -> int:
        return self.shared_dim + self.z_chunk

    def short(self) -> str:
        return f"G_ch={self.G_ch}, dim_z={self.dim_z}, shared_dim={self.shared_dim}, resolution={self.resolution}"

    @classmethod
    def from_any(cls, config: Any) -> "BigBiGANConfig":
        """None (the real model), a BigBiGANConfig, a dict of the authors' fields, or a JSON file
        (golden_small/config.json: its "config" object is used)."""
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        source = "config"
        if isinstance(config, (str, Path)):
            p = Path(config)
            source = str(p)
            try:
                data = json.loads(p.read_text())
            except (OSError, ValueError) as e:
                raise FactoryError(f"cannot read BigBiGAN config {p}: {e}") from None
            if isinstance(data, dict) and isinstance(data.get("config"), dict):
                data = data["config"]
            config = data
        if not isinstance(config, Mapping):
            raise FactoryError(f"BigBiGAN config must be a dict or a JSON file, got {type(config).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        kwargs: dict[str, Any] = {}
        unknown = []
        for k, v in config.items():
            if k in known:
                kwargs[k] = v
            elif k in _REQUIRED_VALUES:
                if v not in _REQUIRED_VALUES[k]:
                    raise FactoryError(
                        f"{source}: {k}={v!r} is not supported (BigBiGAN needs {_REQUIRED_VALUES[k][0]!r})"
                    )
            elif k in IGNORED_KEYS:
                if k == "G_activation" and "relu" not in str(v).lower():
                    raise FactoryError(f"{source}: G_activation={v!r} is not supported (ReLU only)")
            else:
                unknown.append(k)
        if unknown:
            raise FactoryError(f"{source}: unknown BigBiGAN config keys {sorted(unknown)}; known: {sorted(known)}")
        if "G_attn" in kwargs:
            kwargs["G_attn"] = str(kwargs["G_attn"])
        for k in ("BN_eps", "SN_eps", "output_bn_eps"):
            if k in kwargs:
                kwargs[k] = float(kwargs[k])
        return cls(**kwargs)


# ----------------------------------------------------------------------------------------------
# Reference layout (module names == state-dict keys of BigBiGAN_x1.pth)
# ----------------------------------------------------------------------------------------------


def _normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.clamp(x.norm(dim=-1, keepdim=True), min=eps)


class _SN(nn.Module):
    """Holds weight (+bias), u0, sv0; `weight_sn` (not saved) is W / sigma after `fold_sn`."""

    def _init_sn(self, out_features: int, weight_shape: tuple, bias: bool):
        self.weight = nn.Parameter(torch.empty(weight_shape))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features))
        else:
            self.register_parameter("bias", None)
        self.register_buffer("u0", torch.empty(1, out_features))
        self.register_buffer("sv0", torch.empty(1))
        self.register_buffer("weight_sn", torch.empty(0), persistent=False)

    @torch.no_grad()
    def sigma(self, eps: float) -> torch.Tensor:
        """One power iteration from the stored u0 (never updated), as BigGAN-PyTorch in eval mode."""
        w = self.weight.detach().float().reshape(self.weight.shape[0], -1)
        u0 = self.u0.detach().float()
        v = _normalize(u0 @ w, eps)
        wv = v @ w.t()
        u = _normalize(wv, eps)
        return (wv @ u.t()).squeeze()

    @torch.no_grad()
    def fold_sn(self, eps: float) -> None:
        s = self.sigma(eps)
        self.weight_sn = (self.weight.detach().float() / s).to(self.weight.dtype)


class SNLinear(_SN):
    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self._init_sn(out_features, (out_features, in_features), bias)

    def forward(self, x):
        return F.linear(x, self.weight_sn, self.bias)


class SNConv2d(_SN):
    def __init__(self, cin: int, cout: int, k: int, bias: bool = True):
        super().__init__()
        self.padding = k // 2
        self._init_sn(cout, (cout, cin, k, k), bias)

    def forward(self, x):
        return F.conv2d(x, self.weight_sn, self.bias, padding=self.padding)


class CCBN(nn.Module):
    """Class-conditional BN (eval): (x - stored_mean)/sqrt(stored_var + eps) * (1 + gain(y)) + bias(y)."""

    def __init__(self, channels: int, cond_dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.register_buffer("stored_mean", torch.zeros(channels))
        self.register_buffer("stored_var", torch.ones(channels))
        self.gain = SNLinear(cond_dim, channels, bias=False)
        self.bias = SNLinear(cond_dim, channels, bias=False)

    def forward(self, x, y):
        out = F.batch_norm(x, self.stored_mean, self.stored_var, None, None, False, 0.0, self.eps)
        g = (1 + self.gain(y))[:, :, None, None]
        b = self.bias(y)[:, :, None, None]
        return out * g + b


class BN(nn.Module):
    """Plain BN with learned gain/bias and stored statistics (output layer)."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.eps = eps
        self.gain = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("stored_mean", torch.zeros(channels))
        self.register_buffer("stored_var", torch.ones(channels))

    def forward(self, x):
        return F.batch_norm(x, self.stored_mean, self.stored_var, self.gain, self.bias, False, 0.0, self.eps)


class GBlock(nn.Module):
    def __init__(self, cin: int, cout: int, cond_dim: int, bn_eps: float):
        super().__init__()
        self.conv1 = SNConv2d(cin, cout, 3)
        self.conv2 = SNConv2d(cout, cout, 3)
        self.conv_sc = SNConv2d(cin, cout, 1)
        self.bn1 = CCBN(cin, cond_dim, bn_eps)
        self.bn2 = CCBN(cout, cond_dim, bn_eps)

    def forward(self, x, y):
        h = F.relu(self.bn1(x, y))
        h = F.interpolate(h, scale_factor=2, mode="nearest")
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        h = self.conv1(h)
        h = F.relu(self.bn2(h, y))
        h = self.conv2(h)
        return h + self.conv_sc(x)


class Attention(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.ch = ch
        self.gamma = nn.Parameter(torch.tensor(0.0))
        self.theta = SNConv2d(ch, ch // 8, 1, bias=False)
        self.phi = SNConv2d(ch, ch // 8, 1, bias=False)
        self.g = SNConv2d(ch, ch // 2, 1, bias=False)
        self.o = SNConv2d(ch // 2, ch, 1, bias=False)

    def forward(self, x, y=None):
        b, c, hh, ww = x.shape
        n = hh * ww
        theta = self.theta(x).reshape(b, c // 8, n)
        phi = F.max_pool2d(self.phi(x), 2).reshape(b, c // 8, n // 4)
        g = F.max_pool2d(self.g(x), 2).reshape(b, c // 2, n // 4)
        beta = F.softmax(torch.bmm(theta.transpose(1, 2), phi), -1)
        o = self.o(torch.bmm(g, beta.transpose(1, 2)).reshape(b, c // 2, hh, ww))
        return self.gamma * o + x


class BigBiGAN(nn.Module):
    """Generator with the exact key layout of BigBiGAN_x1.pth; `forward` is the reference path."""

    def __init__(self, cfg: BigBiGANConfig):
        super().__init__()
        self.cfg = cfg
        self.shared = nn.Embedding(cfg.n_classes, cfg.shared_dim)
        c0 = cfg.in_channels[0]
        self.linear = SNLinear(cfg.z_chunk, c0 * cfg.bottom_width ** 2)
        blocks = []
        for i, (cin, cout) in enumerate(zip(cfg.in_channels, cfg.out_channels)):
            group = [GBlock(cin, cout, cfg.cond_dim, cfg.BN_eps)]
            if cfg.block_resolutions[i] in cfg.attn_resolutions:
                group.append(Attention(cout))
            blocks.append(nn.ModuleList(group))
        self.blocks = nn.ModuleList(blocks)
        cl = cfg.out_channels[-1]
        self.output_layer = nn.Sequential(BN(cl, cfg.output_bn_eps), nn.ReLU(), SNConv2d(cl, 3, 3))
        self.folded = False

    def sn_modules(self):
        return [m for m in self.modules() if isinstance(m, _SN)]

    @torch.no_grad()
    def fold_spectral_norm(self) -> None:
        for m in self.sn_modules():
            m.fold_sn(self.cfg.SN_eps)
        self.folded = True

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not self.folded:
            raise RuntimeError("call fold_spectral_norm() after loading weights")
        cfg = self.cfg
        zs = torch.split(z, cfg.z_chunk, dim=1)
        e = self.shared.weight[cfg.class_index].unsqueeze(0).expand(z.shape[0], -1)
        h = self.linear(zs[0]).view(z.shape[0], -1, cfg.bottom_width, cfg.bottom_width)
        for i, group in enumerate(self.blocks):
            y = torch.cat([e, zs[i + 1]], dim=1)
            for blk in group:
                h = blk(h, y)
        return torch.tanh(self.output_layer(h))


IGNORED_KEYS = {
    "D_param", "D_ch", "D_wide", "G_init", "skip_init", "no_optim", "G_fp16",
    "G_mixed_precision", "accumulate_stats", "num_standing_accumulations", "G_eval_mode",
    "G_activation",
}

