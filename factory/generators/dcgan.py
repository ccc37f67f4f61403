"""`dcgan`: adapter for the standard DCGAN generator of the PyTorch examples (Radford et al. 2016).

The network is one ``nn.Sequential`` called ``main``; for ``L`` transposed convolutions
(kernel 4, no bias) its children are::

    main.0   ConvTranspose2d(nz, ngf*2^(L-2), 4, stride 1, pad 0)   1x1 -> 4x4
    main.1   BatchNorm2d, main.2 ReLU
    main.3   ConvTranspose2d(ngf*2^(L-2), ngf*2^(L-3), 4, 2, 1)      doubles the side
    ...      (conv, BatchNorm2d, ReLU) repeated
    main.3(L-1)    ConvTranspose2d(ngf, nc, 4, 2, 1)
    main.3(L-1)+1  Tanh

so the image side is ``4 * 2^(L-1)`` (L = 5: 64 px, the examples' default). Everything is read
off the state dict: ``nz`` from ``main.0.weight``, ``ngf`` and ``nc`` from the last convolution,
the resolution from the number of convolutions; then every key and shape is checked against the
network those numbers describe, so a file that is not this architecture fails with one line
naming the first keys that differ.

Weights: a plain state dict, or a training checkpoint dict holding one under ``netG_state_dict``
(what the examples' and most DCGAN training scripts save; other entries, e.g. the discriminator
and optimizers, are ignored). Always read with ``torch.load(weights_only=True)``. Accepted
leniencies, both harmless: a uniform ``module.`` prefix (``nn.DataParallel``) is stripped, and
BatchNorm's ``num_batches_tracked`` counters may be absent (they play no part in eval mode).

Inference uses BatchNorm's running statistics (eval mode), so a sample is a pure function of
its latent; on CUDA, cuDNN is pinned to deterministic algorithms during the call. ``nc = 1``
generators (e.g. MNIST) are accepted: their channel is repeated to RGB, as the protocol wants
[B, 3, H, W].
"""
from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from factory.format import FactoryError
from factory.generators import register
from factory.generators.torchcore import (
    check_options,
    check_z,
    compiled,
    identity_options,
    load_strict,
    precision_scope,
    random_source,
    read_torch_weights,
    state_dict_digest,
    weights_digest,
    weights_identity,
)

CHECKPOINT_KEY = "netG_state_dict"
_OPTIONS = ("weights", "config", "random_weights", "seed", "device", "dtype", "resolution", "autocast",
            "channels_last", "compile")


def packaged_face_weights() -> Path | None:
    """weights.tar of the PyPI package ``gan-face-generate`` (a 64 px, nz=100 DCGAN trained on
    DigiFace-1M, MIT), or None when it is not installed. Found without importing its code."""
    spec = importlib.util.find_spec("gan_face_generate")
    if spec is None or not spec.origin:
        return None
    p = Path(spec.origin).parent / "weights.tar"
    return p if p.is_file() else None


# ---------------------------------------------------------------------------------- config / model


@dataclass(frozen=True)
class DCGANConfig:
    """Shape of a DCGAN generator: latent width, base feature maps, image channels, image side."""

    nz: int = 100
    ngf: int = 64
    nc: int = 3
    resolution: int = 64

    def __post_init__(self):
        for k in ("nz", "ngf", "nc", "resolution"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise FactoryError(f"dcgan: {k} must be a positive integer, got {v!r}")
        r = self.resolution
        if r < 8 or r & (r - 1):
            raise FactoryError(f"dcgan: resolution must be a power of two >= 8 (e.g. 64), got {r}")
        if self.nc not in (1, 3):
            raise FactoryError(f"dcgan: nc={self.nc} image channels; only RGB (3) or grayscale (1) can be used")

    def short(self) -> str:
        return f"nz={self.nz} ngf={self.ngf} nc={self.nc} {self.resolution}px"

    @property
    def n_layers(self) -> int:
        """Number of transposed convolutions: 4x4 after the first, each later one doubles the side."""
        return int(math.log2(self.resolution // 4)) + 1

    def channels(self) -> list[int]:
        """[nz, ngf*2^(L-2), ..., 2*ngf, ngf, nc]: input and output channels of every convolution."""
        L = self.n_layers
        return [self.nz] + [self.ngf * 2 ** (L - 2 - i) for i in range(L - 1)] + [self.nc]

    @classmethod
    def from_any(cls, config: Any) -> DCGANConfig:
        """None (the 64 px default), a DCGANConfig, a dict of its fields, or a JSON file holding one."""
        if config is None or isinstance(config, cls):
            return config or cls()
        if isinstance(config, (str, Path)):
            try:
                config = json.loads(Path(config).read_text())
            except (OSError, ValueError) as e:
                raise FactoryError(f"dcgan: cannot read config {config}: {e}") from None
        if not isinstance(config, Mapping):
            raise FactoryError(f"dcgan: config must be a dict or a JSON file, got {type(config).__name__}")
        unknown = sorted(set(config) - set(cls.__dataclass_fields__))
        if unknown:
            raise FactoryError(f"dcgan: unknown config keys {unknown}; known: nz, ngf, nc, resolution")
        return cls(**config)


class DCGAN(nn.Module):
    """The examples' generator, module for module (so its state-dict keys are ``main.N.*``)."""

    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels()
        layers: list[nn.Module] = []
        for i in range(cfg.n_layers):
            stride, pad = (1, 0) if i == 0 else (2, 1)
            layers.append(nn.ConvTranspose2d(ch[i], ch[i + 1], 4, stride, pad, bias=False))
            if i < cfg.n_layers - 1:
                layers += [nn.BatchNorm2d(ch[i + 1]), nn.ReLU(True)]
        layers.append(nn.Tanh())
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z.reshape(z.shape[0], -1, 1, 1))


# ---------------------------------------------------------------------------------- loading


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """(state dict, the checkpoint key it came from or None) from a torch file, weights_only=True."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FactoryError(f"dcgan: weights file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(2)
    if not head.startswith((b"PK", b"\x80")):  # a torch zip file, or a legacy pickle
        if not head:
            raise FactoryError(f"{path}: empty file, not a checkpoint (an interrupted download?)")
        raise FactoryError(f"{path}: not a torch checkpoint (first bytes {head!r}; an HTML page or text file?)")
    obj = read_torch_weights(path, hint="download or save it again")
    key = None
    if isinstance(obj, dict) and CHECKPOINT_KEY in obj:
        key, obj = CHECKPOINT_KEY, obj[CHECKPOINT_KEY]
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) for k in obj):
        raise FactoryError(f"{path}: neither a generator state dict nor a checkpoint dict with {CHECKPOINT_KEY!r}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        top = f"; its top-level keys: {sorted(obj)[:6]}" if key is None else ""
        raise FactoryError(
            f"{path}: not a state dict of tensors (entries {bad[:3]} are not tensors){top}; "
            f"a checkpoint must hold the generator under {CHECKPOINT_KEY!r}"
        )
    if all(k.startswith("module.") for k in obj):  # saved from nn.DataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj, key


def infer_config(sd: Mapping[str, torch.Tensor], source: str = "state dict") -> DCGANConfig:
    """The DCGANConfig a state dict describes (shapes are checked afterwards by load_strict)."""
    convs = sorted(int(k.split(".")[1]) for k in sd
                   if k.startswith("main.") and k.endswith(".weight") and k.count(".") == 2
                   and k.split(".")[1].isdigit() and sd[k].dim() == 4)
    if not convs or convs[0] != 0:
        some = ", ".join(sorted(sd)[:3])
        raise FactoryError(
            f"{source}: not a DCGAN generator (no transposed convolution main.0.weight; keys start {some}); "
            f"dcgan expects the PyTorch-examples layout main.N.*"
        )
    if convs != list(range(0, 3 * len(convs), 3)):
        raise FactoryError(
            f"{source}: convolutions at main.{convs} but a DCGAN has one every 3 modules "
            f"(conv, BatchNorm2d, ReLU): main.0, main.3, main.6, ..."
        )
    last = sd[f"main.{convs[-1]}.weight"]
    cfg = dict(nz=int(sd["main.0.weight"].shape[0]), ngf=int(last.shape[0]), nc=int(last.shape[1]),
               resolution=4 * 2 ** (len(convs) - 1))
    try:
        return DCGANConfig(**cfg)
    except FactoryError as e:
        raise FactoryError(f"{source}: {e} (read off the state dict: {cfg})") from None


def num_batches_tracked(model: DCGAN) -> list[str]:
    """BatchNorm's counters: they play no part in eval mode, so a file may lack them."""
    return [k for k in model.state_dict() if k.endswith(".num_batches_tracked")]


@torch.no_grad()
def random_state_dict(cfg: DCGANConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic random weights in the examples' initialisation (N(0, 0.02) convolutions,
    N(1, 0.02) BatchNorm scales), with unit running statistics: for benchmarks and tests."""
    g = torch.Generator().manual_seed(int(seed))
    out = {}
    for k, v in DCGAN(cfg).state_dict().items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.zeros((), dtype=torch.long)
        elif v.dim() == 4:
            out[k] = 0.02 * torch.randn(v.shape, generator=g)
        elif k.endswith(".weight"):
            out[k] = 1 + 0.02 * torch.randn(v.shape, generator=g)
        elif k.endswith("running_var"):
            out[k] = torch.ones(v.shape)
        else:  # bias, running_mean
            out[k] = torch.zeros(v.shape)
    return out


# ---------------------------------------------------------------------------------- the generator


class DCGANGenerator:
    """Protocol object (see factory.generators): ``dim_z``, ``resolution``, ``device``, ``__call__``,
    ``identity()``. Build it with ``load_generator("dcgan", weights=...)``."""

    name = "dcgan"

    def __init__(self, module: DCGAN, *, device: torch.device, dtype: torch.dtype, weights_sha256: str,
                 weights_source: str, state_dict_key: str | None, autocast: str | None,
                 channels_last: bool, compile: bool | str):
        self.module = module
        self.config = module.cfg
        self.dim_z = module.cfg.nz
        self.resolution = module.cfg.resolution
        self.device, self.dtype = device, dtype
        self.weights_sha256, self.weights_source, self.state_dict_key = weights_sha256, weights_source, state_dict_key
        self.autocast = None if autocast == "fp32" else autocast
        self.channels_last, self.compile = channels_last, compile
        self._fn = compiled(module, compile)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        check_z(self, z)
        x = z.to(device=self.device, dtype=self.dtype).reshape(z.shape[0], self.dim_z, 1, 1)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # deterministic cuDNN: transposed convolutions may otherwise pick atomics-based algorithms
        with precision_scope(self.device, self.autocast, deterministic=True):
            out = self._fn(x)
        if out.shape[1] == 1:
            out = out.expand(-1, 3, -1, -1)
        return out.float().contiguous()

    def identity(self) -> dict:
        return weights_identity(self, state_dict_key=self.state_dict_key,
                                precision={"dtype": str(self.dtype).replace("torch.", ""), "autocast": self.autocast,
                                           "channels_last": self.channels_last, "compile": self.compile})

    def named_directions(self) -> dict:
        return {}

    def __repr__(self) -> str:
        c = self.config
        return f"DCGANGenerator(nz={c.nz}, ngf={c.ngf}, nc={c.nc}, {c.resolution}px, {self.weights_source})"


def dcgan_options(identity: dict) -> dict:
    """load_dcgan's options that rebuild the generator an identity describes (the weights file aside)."""
    return identity_options(identity, what="dcgan")


@register("dcgan", summary="PyTorch-examples DCGAN; shape read off the weights file", from_identity=dcgan_options)
def load_dcgan(*, weights: str | Path | None = None, config: Any = None, random_weights: bool = False,
               seed: int = 0, device: str | torch.device = "cpu", dtype: Any = None, resolution: int | None = None,
               autocast: str | None = None, channels_last: bool = False, compile: bool | str = False,
               **unknown) -> DCGANGenerator:
    """Build a DCGAN generator.

    weights: a torch file (plain state dict or a checkpoint with ``netG_state_dict``); nz, ngf, nc
    and resolution are read off it, and ``config`` / ``resolution``, when given, must agree.
    random_weights=True (with seed, and config for a shape other than the 64 px nz=100 default)
    builds one without a file, for benchmarks. dtype: float32 (default), float64, bfloat16,
    float16; autocast: None, "tf32" or "bf16"; channels_last; compile (True or a torch.compile mode).
    """
    if unknown:
        raise FactoryError(f"dcgan: unknown option(s) {', '.join(sorted(unknown))}; known options: {', '.join(_OPTIONS)}")
    opts = check_options(device=device, dtype=dtype, autocast=autocast, channels_last=channels_last,
                         compile=compile, prefix="dcgan: ")

    if weights is not None and random_weights:
        raise FactoryError("dcgan: pass either weights=PATH or random_weights=True, not both")
    if weights is not None:
        path = Path(weights).expanduser()
        sd, key = read_weights(path)
        cfg = infer_config(sd, str(path))
        if config is not None and DCGANConfig.from_any(config) != cfg:
            raise FactoryError(
                f"dcgan: config {DCGANConfig.from_any(config).short()} disagrees with {path}, which holds "
                f"{cfg.short()}; omit config"
            )
        sha, source = weights_digest(path), str(path)
    elif random_weights:
        cfg = DCGANConfig.from_any(config)
        sd, key = random_state_dict(cfg, seed), None
        sha, source = state_dict_digest(sd), random_source(seed)
    else:
        hint = packaged_face_weights()
        hint = f" (the installed gan-face-generate package ships one: {hint})" if hint else ""
        raise FactoryError(f"dcgan needs its weights: pass weights=PATH (--weights) to a DCGAN generator checkpoint{hint}")
    if resolution is not None and resolution != cfg.resolution:
        raise FactoryError(
            f"dcgan: resolution={resolution} but {source} is a {cfg.resolution}px generator "
            f"({cfg.n_layers} transposed convolutions); omit resolution"
        )
    model = DCGAN(cfg)
    load_strict(model, sd, source=source, what=f"a DCGAN generator with {cfg.short()}",
                optional=num_batches_tracked(model))
    model.to(device=opts.device, dtype=opts.dtype)
    if opts.channels_last:
        model.to(memory_format=torch.channels_last)
    return DCGANGenerator(model, device=opts.device, dtype=opts.dtype, weights_sha256=sha, weights_source=source,
                          state_dict_key=key, autocast=opts.autocast, channels_last=opts.channels_last,
                          compile=opts.compile)
