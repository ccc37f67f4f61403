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
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from factory.errors import FactoryError
from factory.fsio import file_name, sha256_file
from factory.generators import register
from factory.generators.bigbigan.checkpoint import (
    check_state_dict,
    random_state_dict,
    read_state_dict,
)
from factory.generators.bigbigan.fused import FusedBigBiGAN
from factory.generators.bigbigan.model import BigBiGAN, BigBiGANConfig

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
            self.runner: nn.Module = fused_module.to(device).eval().requires_grad_(False)
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
        with _tf32(tf32), self._autocast_ctx():
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
            "weights_source": file_name(self.weights_source),  # name only: the sha256 identifies it
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
        sha = sha256_file(str(path))
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
    model.eval().requires_grad_(False)  # gradients flow to z (directions), never to weights
    model.fold_spectral_norm()
    if fused is None:
        fused = autocast is not None or channels_last or bool(compile)
    # the fused graph is folded in float64 from the fp32 weights, then cast to dtype
    fused_module = FusedBigBiGAN(model, dtype=dtype, channels_last=channels_last) if fused else None
    model.to(device=dev, dtype=dtype)
    return BigBiGANGenerator(model, device=dev, dtype=dtype, weights_sha256=sha, weights_source=source,
                             autocast=autocast, channels_last=channels_last, compile=compile,
                             fused_module=fused_module)
