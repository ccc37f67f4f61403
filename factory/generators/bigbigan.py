"""BigBiGAN-128 generator (the paper authors' port into the BigGAN-PyTorch layout).

Our own implementation of the eval-mode forward described in
shared/reference/bigbigan/README.md. Two execution paths share one set of weights:

* the **reference path** (`BigBiGAN.forward`): the module tree has exactly the
  state-dict keys of the published ``BigBiGAN_x1.pth``; it follows the
  reference operation by operation (upsample then 3x3 conv, batch_norm with the
  stored statistics, bmm attention). Spectral norm is folded once at load
  (``sigma`` from the stored ``u0``, one power iteration) — the forward runs no
  power iteration. This is the exact fp32 path.
* the **fused path** (`FusedBigBiGAN`, built from a loaded `BigBiGAN`): same
  function, rearranged for throughput. All folding is done once, in float64:
    - every conditional-BN affine (stored statistics, ``1 + gain(y)``, ``bias(y)``,
      the constant class-embedding part) becomes one GEMM over the z chunks
      giving per-sample scale/shift vectors;
    - the stored statistics of ``bn2`` are folded into ``conv1``; the output BN
      (fixed affine) is folded into the last block's ``conv2`` and ``conv_sc``;
    - nearest-upsample followed by a 3x3 conv is computed as a 2x2 polyphase
      conv at the low resolution (4 output phases: 16 instead of 36 MACs per
      low-res pixel), which removes ~1/3 of the model's FLOPs;
    - the 1x1 shortcut runs before the upsample (nearest upsample commutes with it);
    - the attention's theta/phi/g convs are one conv, the max-pool runs once,
      ``gamma`` is folded into ``o`` and the softmax product uses
      ``scaled_dot_product_attention(scale=1)`` (no [N, N/4] matrix in memory on GPU).
  The fused path is used with any fast option (autocast, channels_last, compile)
  or with ``fused=True``; plain fp32 stays on the reference path.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import pickle
import struct
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from factory.errors import FactoryError
from factory.generators import register

WEIGHTS_HINT = (
    "get the authors' BigBiGAN_x1.pth with `factory weights fetch bigbigan` "
    "(saved under $FACTORY_HOME/weights, default ~/.cache/factory/weights) and pass its path as weights="
)

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
_IGNORED_KEYS = {
    "D_param", "D_ch", "D_wide", "G_init", "skip_init", "no_optim", "G_fp16",
    "G_mixed_precision", "accumulate_stats", "num_standing_accumulations", "G_eval_mode",
    "G_activation",
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
            elif k in _IGNORED_KEYS:
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


# ----------------------------------------------------------------------------------------------
# Fused inference path
# ----------------------------------------------------------------------------------------------

# Nearest x2 upsample followed by a 3x3 conv (taps at offsets -1, 0, +1) equals, for output
# phase a in {0, 1}, a 2-tap conv on the zero-padded low-res input: R[a] maps the 3 taps to 2.
_PHASE = torch.tensor(
    [[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64
)


def polyphase_weight(w: torch.Tensor) -> torch.Tensor:
    """[Co, Ci, 3, 3] -> [4*Co, Ci, 2, 2]; phase group p = 2*a + b (row phase a, column phase b)."""
    w = w.double()
    groups = [torch.einsum("tk,sl,oikl->oits", _PHASE[a], _PHASE[b], w) for a in (0, 1) for b in (0, 1)]
    return torch.cat(groups, 0)


def interleave_phases(p: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """[B, 4C, H+1, W+1] polyphase conv output -> [B, C, 2H, 2W] (out[2i+a, 2j+b] = P_ab[i+a, j+b])."""
    b, c4, hp, wp = p.shape
    c, h, w = c4 // 4, hp - 1, wp - 1
    if channels_last:
        q = p.permute(0, 2, 3, 1)  # [B, H+1, W+1, 4C] (contiguous when p is channels_last)
        rows = [
            torch.stack([q[:, a:a + h, bb:bb + w, (2 * a + bb) * c:(2 * a + bb + 1) * c] for bb in (0, 1)], 3)
            for a in (0, 1)
        ]
        out = torch.stack(rows, 2).reshape(b, 2 * h, 2 * w, c)  # [B, H, 2, W, 2, C] -> NHWC
        return out.permute(0, 3, 1, 2)
    q = p.unflatten(1, (2, 2, c))
    rows = [torch.stack([q[:, a, bb, :, a:a + h, bb:bb + w] for bb in (0, 1)], -1) for a in (0, 1)]
    return torch.stack(rows, -3).reshape(b, c, 2 * h, 2 * w)  # [B, C, H, 2, W, 2]


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


class FusedBigBiGAN(nn.Module):
    """Same function as BigBiGAN.forward, rearranged for throughput (see module docstring)."""

    def __init__(self, ref: BigBiGAN, dtype: torch.dtype = torch.float32, channels_last: bool = False):
        super().__init__()
        if not ref.folded:
            raise RuntimeError("fold spectral norm first")
        cfg = ref.cfg
        self.cfg = cfg
        self.channels_last = channels_last
        d = torch.float64
        e = ref.shared.weight[cfg.class_index].detach().to(d)
        sd, zc = cfg.shared_dim, cfg.z_chunk

        def sn(m):
            return m.weight_sn.detach().to(d)

        def buf(name, t):
            t = t.detach().to(dtype)
            if channels_last and t.dim() == 4:
                t = t.contiguous(memory_format=torch.channels_last)
            self.register_buffer(name, t, persistent=False)

        buf("lin_w", sn(ref.linear))
        buf("lin_b", ref.linear.bias.detach().to(d))

        # conditioning: z chunks 1..n -> per-block [A1 | B1 | A2 | B2] via one block-diagonal GEMM
        cond_w, cond_b, self.cond_splits = [], [], []
        n = cfg.n_blocks
        self.attn_after: list[bool] = []
        last = n - 1
        for i, group in enumerate(ref.blocks):
            blk: GBlock = group[0]
            rs1 = torch.rsqrt(blk.bn1.stored_var.detach().to(d) + blk.bn1.eps)
            m1 = blk.bn1.stored_mean.detach().to(d)
            rs2 = torch.rsqrt(blk.bn2.stored_var.detach().to(d) + blk.bn2.eps)
            m2 = blk.bn2.stored_mean.detach().to(d)
            g1, b1, g2, b2 = (sn(blk.bn1.gain), sn(blk.bn1.bias), sn(blk.bn2.gain), sn(blk.bn2.bias))
            # affine in the z chunk: value = W_z @ z + c ; e-part folded into the constant c
            a1_w, a1_c = rs1[:, None] * g1[:, sd:], rs1 * (1 + g1[:, :sd] @ e)
            b1_w = b1[:, sd:] - (m1 * rs1)[:, None] * g1[:, sd:]
            b1_c = b1[:, :sd] @ e - m1 * rs1 * (1 + g1[:, :sd] @ e)
            a2_w, a2_c = g2[:, sd:], 1 + g2[:, :sd] @ e
            b2_w, b2_c = b2[:, sd:], b2[:, :sd] @ e
            w_blk = torch.cat([a1_w, b1_w, a2_w, b2_w], 0)
            full = torch.zeros(w_blk.shape[0], n * zc, dtype=d)
            full[:, i * zc:(i + 1) * zc] = w_blk
            cond_w.append(full)
            cond_b.append(torch.cat([a1_c, b1_c, a2_c, b2_c]))
            cin, cout = blk.conv1.weight.shape[1], blk.conv1.weight.shape[0]
            self.cond_splits += [cin, cin, cout, cout]
            # conv1 with bn2's stored statistics folded in, as a polyphase 2x2 conv
            w1 = sn(blk.conv1) * rs2[:, None, None, None]
            b1c = (blk.conv1.bias.detach().to(d) - m2) * rs2
            buf(f"c1_w{i}", polyphase_weight(w1))
            buf(f"c1_b{i}", b1c.repeat(4))
            w2, bb2 = sn(blk.conv2), blk.conv2.bias.detach().to(d)
            wsc, bsc = sn(blk.conv_sc), blk.conv_sc.bias.detach().to(d)
            if i == last:  # fold the output BN (fixed affine) into conv2 + shortcut
                obn: BN = ref.output_layer[0]
                a_o = obn.gain.detach().to(d) * torch.rsqrt(obn.stored_var.detach().to(d) + obn.eps)
                c_o = obn.bias.detach().to(d) - obn.stored_mean.detach().to(d) * a_o
                w2, bb2 = w2 * a_o[:, None, None, None], bb2 * a_o
                wsc, bsc = wsc * a_o[:, None, None, None], bsc * a_o + c_o
            buf(f"c2_w{i}", w2)
            buf(f"c2_b{i}", bb2)
            buf(f"sc_w{i}", wsc)
            buf(f"sc_b{i}", bsc)
            has_attn = len(group) > 1
            self.attn_after.append(has_attn)
            if has_attn:
                att: Attention = group[1]
                buf(f"at_qkv{i}", torch.cat([sn(att.theta), sn(att.phi), sn(att.g)], 0))
                buf(f"at_o{i}", sn(att.o) * att.gamma.detach().to(d))
                self.attn_c8 = att.ch // 8
        buf("cond_w", torch.cat(cond_w, 0))
        buf("cond_b", torch.cat(cond_b, 0))
        buf("out_w", sn(ref.output_layer[2]))
        buf("out_b", ref.output_layer[2].bias.detach().to(d))

    def _attention(self, x, i):
        b, c, hh, ww = x.shape
        c8 = self.attn_c8
        qkv = F.conv2d(x, getattr(self, f"at_qkv{i}"))
        pg = F.max_pool2d(qkv[:, c8:], 2)
        q = qkv[:, :c8].flatten(2).transpose(1, 2).unsqueeze(1)  # [B, 1, N, C/8]
        k = pg[:, :c8].flatten(2).transpose(1, 2).unsqueeze(1)  # [B, 1, N/4, C/8]
        v = pg[:, c8:].flatten(2).transpose(1, 2).unsqueeze(1)  # [B, 1, N/4, C/2]
        o = F.scaled_dot_product_attention(q, k, v, scale=1.0).squeeze(1)  # [B, N, C/2]
        o = o.transpose(1, 2).reshape(b, c // 2, hh, ww)
        if self.channels_last:
            o = o.contiguous(memory_format=torch.channels_last)
        return F.conv2d(o, getattr(self, f"at_o{i}")) + x

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        zc, bw = cfg.z_chunk, cfg.bottom_width
        z = z.to(self.lin_w.dtype)
        bsz = z.shape[0]
        h = F.linear(z[:, :zc], self.lin_w, self.lin_b).view(bsz, -1, bw, bw)
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        cond = torch.addmm(self.cond_b, z[:, zc:], self.cond_w.t())
        parts = torch.split(cond, self.cond_splits, dim=1)
        for i in range(cfg.n_blocks):
            a1, b1, a2, b2 = (t[:, :, None, None] for t in parts[4 * i:4 * i + 4])
            x = h
            t = torch.addcmul(b1, x, a1).relu_()
            p = F.conv2d(F.pad(t, (1, 1, 1, 1)), getattr(self, f"c1_w{i}"), getattr(self, f"c1_b{i}"))
            t = interleave_phases(p, self.channels_last)
            t = torch.addcmul(b2, t, a2).relu_()
            if self.channels_last:
                t = t.contiguous(memory_format=torch.channels_last)
            t = F.conv2d(t, getattr(self, f"c2_w{i}"), getattr(self, f"c2_b{i}"), padding=1)
            sc = F.conv2d(x, getattr(self, f"sc_w{i}"), getattr(self, f"sc_b{i}"))
            h = t + _up2(sc)
            if self.attn_after[i]:
                h = self._attention(h, i)
        out = F.conv2d(F.relu(h), self.out_w, self.out_b, padding=1)
        return torch.tanh(out).float()


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sniff_checkpoint(path: Path) -> str:
    """'safetensors' | 'torch-zip' | 'torch-legacy'; FactoryError for anything else."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise FactoryError(f"cannot read weights file {path}: {e.strerror or e}") from None
    if size == 0:
        raise FactoryError(f"{path}: empty file, not a checkpoint (an interrupted download?); {WEIGHTS_HINT}")
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if len(head) >= 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n < size:
            return "safetensors"
    if head[:1] == b"\x80" and len(head) > 1 and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch-legacy"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        what = "an HTML page (a download that returned an error or login page?)"
    elif text.startswith((b"{", b"[")):
        what = "a JSON/text file"
    else:
        what = f"an unknown format (first bytes {head[:8]!r})"
    raise FactoryError(f"{path}: not a checkpoint: it is {what}; {WEIGHTS_HINT}")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a plain state dict from a torch file (weights_only=True) or a .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise FactoryError(f"weights file not found: {path}; {WEIGHTS_HINT}")
    kind = sniff_checkpoint(path)
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise FactoryError(
                f"{path}: corrupt or truncated safetensors file ({_one_line(e)}); download it again"
            ) from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            msg = _one_line(e)
            raise FactoryError(
                f"{path}: refused: the checkpoint's pickle references code or objects other than "
                f"tensors, which weights_only loading does not run ({msg[:200]}); only plain state "
                f"dicts are accepted — do not load this file with weights_only=False unless you trust it"
            ) from None
        except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as e:
            raise FactoryError(
                f"{path}: corrupt or truncated torch checkpoint ({_one_line(e)[:200]}); download it again"
            ) from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise FactoryError(f"{path}: not a plain state dict (got {type(obj).__name__}); {WEIGHTS_HINT}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise FactoryError(f"{path}: not a plain state dict: entries {bad[:3]} are not tensors")
    return obj


def _one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0] if s else ''}".strip()


def check_state_dict(sd: Mapping[str, torch.Tensor], model: nn.Module, cfg: BigBiGANConfig, source: str) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [
        f"{k} (file {list(sd[k].shape)}, model {list(expected[k])})"
        for k in expected if k in sd and tuple(sd[k].shape) != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {', '.join(missing[:4])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {', '.join(unexpected[:4])}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches: {'; '.join(shapes[:3])}")
    if problems:
        raise FactoryError(
            f"{source} does not match BigBiGAN ({cfg.short()}): {' | '.join(problems)}; "
            f"`factory weights inspect {source}` tells which config a file matches"
        )
    for k, v in sd.items():
        if not v.is_floating_point():
            raise FactoryError(f"{source}: {k} has dtype {v.dtype}, expected floating point")
        if not torch.isfinite(v).all():
            raise FactoryError(f"{source}: {k} contains NaN or inf values")


def infer_config(sd: Mapping[str, torch.Tensor]) -> BigBiGANConfig:
    """The BigBiGANConfig whose shapes a state dict has (FactoryError if it is not BigGAN-shaped)."""
    try:
        n_classes, shared_dim = sd["shared.weight"].shape
        g_ch = sd["output_layer.0.gain"].shape[0]
        z_chunk = sd["linear.weight"].shape[1]
        n_blocks = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
        c0 = sd["blocks.0.0.conv1.weight"].shape[1]
        bw = int(round(math.sqrt(sd["linear.weight"].shape[0] / c0)))
        attn = [i for i in range(n_blocks) if f"blocks.{i}.1.gamma" in sd]
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise FactoryError(f"not a BigGAN generator state dict (missing or odd {e})") from None
    resolution = bw * 2 ** n_blocks
    return BigBiGANConfig(
        G_ch=int(g_ch), dim_z=int(z_chunk * (n_blocks + 1)), shared_dim=int(shared_dim),
        resolution=resolution, n_classes=int(n_classes), bottom_width=bw,
        G_attn="_".join(str(bw * 2 ** (i + 1)) for i in attn) or "0",
    )


@torch.no_grad()
def random_state_dict(model: BigBiGAN, seed: int) -> dict[str, torch.Tensor]:
    """Deterministic random weights of the right shapes (u0 unit vectors, positive stored_var)."""
    g = torch.Generator().manual_seed(int(seed))
    out = {}
    for k, v in model.state_dict().items():
        shape = v.shape
        if k.endswith(".u0"):
            t = torch.randn(shape, generator=g)
            t = t / t.norm()
        elif k.endswith(".sv0"):
            t = torch.ones(shape)
        elif k.endswith("stored_var"):
            t = 0.5 + torch.rand(shape, generator=g)
        elif k.endswith("stored_mean"):
            t = 0.1 * torch.randn(shape, generator=g)
        elif k.endswith("gamma"):
            t = torch.full(shape, 0.5)
        elif k == "output_layer.0.gain":
            t = 1 + 0.1 * torch.randn(shape, generator=g)
        elif k.endswith(".bias") and len(shape) == 1:
            t = 0.05 * torch.randn(shape, generator=g)
        else:
            fan_in = max(1, int(np.prod(shape[1:]))) if len(shape) > 1 else 1
            t = torch.randn(shape, generator=g) / math.sqrt(fan_in)
        out[k] = t.float()
    return out


# ----------------------------------------------------------------------------------------------
# The generator object the engine uses
# ----------------------------------------------------------------------------------------------

_AUTOCAST = (None, "bf16", "tf32")
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


@contextlib.contextmanager
def _tf32(enabled: bool | None):
    """Scope CUDA's TF32 switches to one call: True (autocast="tf32"), False (the exact fp32 path:
    cuDNN convolutions default to TF32 otherwise), None (leave them, e.g. under bf16 autocast)."""
    if enabled is None:
        yield
        return
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


class BigBiGANGenerator:
    """Protocol object: `dim_z`, `resolution`, `device`, `__call__(z)`, `identity()`."""

    name = "bigbigan"

    def __init__(self, module: BigBiGAN, *, device: torch.device, dtype: torch.dtype, weights_sha256: str,
                 weights_source: str, autocast: str | None, channels_last: bool, compile: bool | str,
                 fused_module: "FusedBigBiGAN | None"):
        self.module = module
        self.config = module.cfg
        self.dim_z = module.cfg.dim_z
        self.resolution = module.cfg.resolution
        self.device = device
        self.dtype = dtype
        self.weights_sha256 = weights_sha256
        self.weights_source = weights_source
        self.autocast = autocast
        self.channels_last = channels_last
        self.compile = compile
        self.fused = fused_module is not None
        if fused_module is not None:
            self.runner: nn.Module = fused_module.to(device).eval()
        else:
            if channels_last:
                module.to(memory_format=torch.channels_last)
            self.runner = module
        self._fn = self.runner
        if compile:
            mode = compile if isinstance(compile, str) else None
            self._fn = torch.compile(self.runner, mode=mode, dynamic=False)

    # protocol ---------------------------------------------------------------------------------
    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.dim_z:
            shape = list(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise FactoryError(f"bigbigan expects z of shape [B, {self.dim_z}], got {shape}")
        z = z.to(device=self.device, dtype=self.dtype)
        tf32 = {None: False, "tf32": True}.get(self.autocast)
        with torch.no_grad(), _tf32(tf32), self._autocast_ctx():
            out = self._fn(z)
        return out.float().contiguous()

    def _autocast_ctx(self):
        if self.autocast == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def identity(self) -> dict:
        return {
            "name": "bigbigan",
            "config": asdict(self.config),
            "weights_sha256": self.weights_sha256,
            "weights_source": self.weights_source,
            "precision": self.precision(),
        }

    def precision(self) -> dict:
        return {
            "dtype": str(self.dtype).replace("torch.", ""),
            "autocast": self.autocast,
            "fused": self.fused,
            "channels_last": self.channels_last,
            "compile": self.compile,
        }

    def named_directions(self) -> dict[str, np.ndarray]:
        return {}

    # extras -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def intermediates(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Activations of the reference path: linear_out, blocks.I.J_out, image (float32, CPU)."""
        acts: dict[str, torch.Tensor] = {}
        hooks = [self.module.linear.register_forward_hook(lambda m, i, o: acts.__setitem__("linear_out", o))]
        for i, group in enumerate(self.module.blocks):
            for j, blk in enumerate(group):
                hooks.append(blk.register_forward_hook(
                    lambda m, inp, o, key=f"blocks.{i}.{j}_out": acts.__setitem__(key, o)))
        try:
            with torch.no_grad(), _tf32(False):
                acts["image"] = self.module(z.to(device=self.device, dtype=self.dtype))
        finally:
            for h in hooks:
                h.remove()
        return {k: v.detach().float().cpu() for k, v in acts.items()}

    def __repr__(self) -> str:
        return f"BigBiGANGenerator({self.config.short()}, {self.precision()})"


@register("bigbigan")
def load_bigbigan(*, weights: str | Path | None = None, config: Any = None, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, random_weights: bool = False, seed: int = 0,
                  compile: bool | str = False, channels_last: bool = False, autocast: str | None = None,
                  fused: bool | None = None) -> BigBiGANGenerator:
    """Build the BigBiGAN generator.

    weights: BigBiGAN_x1.pth (torch state dict) or a .safetensors file; or random_weights=True (with seed)
    for benchmarks. config: None (the real 128 model), a dict of the authors' fields or a JSON file.
    Fast paths: autocast="bf16"|"tf32", channels_last, compile (True or a torch.compile mode);
    fused (default: on with any fast path) selects the fused inference graph.
    """
    cfg = BigBiGANConfig.from_any(config)
    if autocast not in _AUTOCAST:
        raise FactoryError(f"autocast={autocast!r}; choose one of {_AUTOCAST}")
    if dtype not in _DTYPES:
        raise FactoryError(f"dtype={dtype!r}; choose one of {[str(d) for d in _DTYPES]}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise FactoryError(f"bad device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FactoryError(f"device={device!r} but CUDA is not available here; use device='cpu'")
    model = BigBiGAN(cfg)
    if weights is not None and random_weights:
        raise FactoryError("pass either weights=PATH or random_weights=True, not both")
    if weights is not None:
        path = Path(weights).expanduser()
        sd = read_state_dict(path)
        check_state_dict(sd, model, cfg, str(path))
        sha = _sha256_file(path)
        source = str(path)
    elif random_weights:
        sd = random_state_dict(model, seed)
        h = hashlib.sha256()
        for k, v in sd.items():
            h.update(k.encode())
            h.update(v.numpy().tobytes())
        sha = h.hexdigest()
        source = f"random(seed={int(seed)})"
    else:
        raise FactoryError(
            "bigbigan needs its weights: the file is the authors' BigBiGAN_x1.pth (282 MB); "
            "download it with `factory weights fetch bigbigan` and pass weights=PATH "
            "(or random_weights=True for benchmarks)"
        )
    model.load_state_dict(sd, strict=True)
    model.eval()
    model.fold_spectral_norm()
    if fused is None:
        fused = autocast is not None or channels_last or bool(compile)
    # the fused graph is folded in float64 from the fp32 weights, then cast to dtype
    fused_module = FusedBigBiGAN(model, dtype=dtype, channels_last=channels_last) if fused else None
    model.to(device=dev, dtype=dtype)
    return BigBiGANGenerator(model, device=dev, dtype=dtype, weights_sha256=sha, weights_source=source,
                             autocast=autocast, channels_last=channels_last, compile=compile,
                             fused_module=fused_module)
