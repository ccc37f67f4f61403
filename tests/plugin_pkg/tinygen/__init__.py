"""tinygen: a complete minimal generator plug-in (the one docs/generators.md walks through).

Its model stands for a typical third-party GAN: it wants latents shaped [B, dim_z, 1, 1] and
knows nothing of the factory. The adapter class below is all a plug-in needs: it reshapes the
factory's [B, dim_z] latents, runs the model without gradients and returns float32 in [-1, 1].
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn


class TinyNet(nn.Module):
    """The 'third-party model': [B, dim_z, 1, 1] -> [B, 3, resolution, resolution] through Tanh."""

    def __init__(self, dim_z: int, resolution: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ConvTranspose2d(dim_z, 16, resolution // 2),  # 1x1 -> (resolution/2)^2
            nn.ReLU(),
            nn.ConvTranspose2d(16, 3, 4, stride=2, padding=1),  # doubles the side
            nn.Tanh(),
        )

    def forward(self, z4: torch.Tensor) -> torch.Tensor:
        return self.body(z4)


class TinyGenerator:
    """The protocol: dim_z, resolution, device, __call__, identity (+ optional named_directions)."""

    def __init__(self, net: TinyNet, dim_z: int, resolution: int, device: torch.device, weights_sha256: str):
        self.net = net.to(device).eval().requires_grad_(False)
        self.dim_z, self.resolution, self.device = dim_z, resolution, device
        self.weights_sha256 = weights_sha256

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        x = self.net(z.to(self.device, torch.float32)[:, :, None, None])  # [B, dim_z] -> [B, dim_z, 1, 1]
        return x.float().clamp(-1, 1)

    def identity(self) -> dict:
        return {"name": "tinygen", "dim_z": self.dim_z, "resolution": self.resolution,
                "weights_sha256": self.weights_sha256}

    def named_directions(self) -> dict[str, np.ndarray]:
        v = np.zeros(self.dim_z, np.float32)
        v[0] = 1.0  # a stand-in; real plug-ins return directions found by `factory directions discover`
        return {"background": v}


def make(*, device="cpu", weights=None, resolution: int = 32, seed: int = 0, **options) -> TinyGenerator:
    """Tiny test generator (dim_z 16): weights from a state-dict file, or seeded random ones."""
    if options:
        raise ValueError(f"tinygen: unknown options {sorted(options)}; known: device, weights, resolution, seed")
    dim_z = 16
    net = TinyNet(dim_z, resolution)
    if weights is not None:
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    else:
        g = torch.Generator().manual_seed(seed)  # a local RNG: never the global one
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    h = hashlib.sha256()
    for k, v in net.state_dict().items():
        h.update(k.encode() + v.numpy().tobytes())
    return TinyGenerator(net, dim_z, resolution, torch.device(device), h.hexdigest())

def options_from_identity(identity: dict) -> dict:
    """The options that rebuild the generator an identity describes (`factory verify --regenerate`)."""
    return {"resolution": int(identity["resolution"])}


make.options_from_identity = options_from_identity
