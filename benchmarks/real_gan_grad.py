"""`dcgan` with gradients on: a plug-in for `factory directions discover` (and `score --refine-steps`).

The built-in `dcgan` generator (factory/generators/dcgan.py) runs its network under
`torch.no_grad()`, as the generator protocol asks, so `directions discover` gets no gradient
to its direction matrix and the directions stay at their random initialisation (see
docs/real-gan.md). This wrapper calls the very same loaded network (eval mode, frozen
weights, float32) without `no_grad`, so gradients flow to the latent. Its images are the
built-in generator's images (checked in benchmarks/real_gan.sh). Use it through the plug-in
mechanism, with this folder on PYTHONPATH:

    PYTHONPATH=benchmarks factory directions discover --generator real_gan_grad:make --weights W ...

It is used for discovery only; scoring and generation use the built-in `dcgan`.
"""
from __future__ import annotations

import torch

from factory.generators import load_generator


class DifferentiableDCGAN:
    def __init__(self, g):
        self.g = g
        self.dim_z, self.resolution, self.device = g.dim_z, g.resolution, g.device

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        x = z.to(self.device, torch.float32).reshape(z.shape[0], self.dim_z, 1, 1)
        return self.g.module(x).float()

    def eval(self):
        return self

    def identity(self) -> dict:
        d = dict(self.g.identity())
        d["wrapper"] = "benchmarks/real_gan_grad.py:make (the built-in dcgan, gradients on)"
        return d

    def named_directions(self) -> dict:
        return {}


def make(*, device="cpu", weights=None, **options) -> DifferentiableDCGAN:
    """The built-in dcgan generator, differentiable in z (for direction discovery)."""
    return DifferentiableDCGAN(load_generator("dcgan", device=device, weights=weights, **options))
