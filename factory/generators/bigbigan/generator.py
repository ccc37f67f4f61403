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

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from factory.format import FactoryError
from factory.generators import register, torchcore
from factory.generators.bigbigan.checkpoint import (
    match_terms,
    random_state_dict,
    read_state_dict,
)
from factory.generators.bigbigan.fused import FusedBigBiGAN
from factory.generators.bigbigan.model import BigBiGAN, BigBiGANConfig
from factory.generators.torchcore import (
    check_options,
    compiled,
    identity_options,
    load_strict,
    precision_scope,
    random_source,
    state_dict_digest,
    weights_digest,
)

# ----------------------------------------------------------------------------------------------
# The generator object the engine uses
# ----------------------------------------------------------------------------------------------

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
        self._fn = compiled(self.runner, compile)

    # protocol ---------------------------------------------------------------------------------
    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        torchcore.check_z(self, z)
        z = z.to(device=self.device, dtype=self.dtype)
        with precision_scope(self.device, self.autocast):
            out = self._fn(z)
        return out.float().contiguous()

    def identity(self) -> dict:
        return torchcore.weights_identity(self, precision=self.precision())

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
            with torch.no_grad(), precision_scope(self.device, None):
                acts["image"] = self.module(z.to(device=self.device, dtype=self.dtype))
        finally:
            for h in hooks:
                h.remove()
        return {k: v.detach().float().cpu() for k, v in acts.items()}

    def __repr__(self) -> str:
        return f"BigBiGANGenerator({self.config.short()}, {self.precision()})"


def bigbigan_options(identity: dict) -> dict:
    """load_bigbigan's options that rebuild the generator an identity describes (the weights file aside)."""
    return identity_options(identity, what="bigbigan")


@register("bigbigan", from_identity=bigbigan_options)
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
    opts = check_options(device=device, dtype=dtype, autocast=autocast, channels_last=channels_last,
                         compile=compile)
    model = BigBiGAN(cfg)
    if weights is not None and random_weights:
        raise FactoryError("pass either weights=PATH or random_weights=True, not both")
    if weights is not None:
        path = Path(weights).expanduser()
        sd = read_state_dict(path)
        sha = weights_digest(path)
        source = str(path)
    elif random_weights:
        sd = random_state_dict(model, seed)
        sha = state_dict_digest(sd)
        source = random_source(seed)
    else:
        raise FactoryError(
            "bigbigan needs its weights: the file is the authors' BigBiGAN_x1.pth (282 MB); "
            "download it with `factory weights fetch bigbigan` and pass weights=PATH "
            "(or random_weights=True for benchmarks)"
        )
    load_strict(model, sd, source=source, **match_terms(cfg, source))
    model.fold_spectral_norm()
    if fused is None:
        fused = opts.autocast is not None or opts.channels_last or bool(opts.compile)
    # the fused graph is folded in float64 from the fp32 weights, then cast to dtype
    fused_module = FusedBigBiGAN(model, dtype=opts.dtype, channels_last=opts.channels_last) if fused else None
    model.to(device=opts.device, dtype=opts.dtype)
    return BigBiGANGenerator(model, device=opts.device, dtype=opts.dtype, weights_sha256=sha, weights_source=source,
                             autocast=opts.autocast, channels_last=opts.channels_last, compile=opts.compile,
                             fused_module=fused_module)
