"""Refining a selected direction by gradient ascent on the selection criterion itself (operator distance,
relative restoration loss, sign agreement of +h / -h); see docs/directions.md."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from factory.directions.common import seed_of
from factory.directions.operators import (
    lstsq_operators,
    operator_distance,
    restoration_error,
)
from factory.format import FactoryError
from factory.masks import gray
from factory.progress import progress_bar

# ----------------------------------------------------------------- refine

def refine_objective(gen, h: torch.Tensor, z: torch.Tensor, *, scale: float = 5.0, loss_weight: float = 1.0,
                     agree_weight: float = 1.0, tau: float = 0.05) -> tuple[torch.Tensor, dict]:
    """The selection criterion of §3.2 as a differentiable function of one unit direction ``h [dim_z]``.

    For each of ``G(z + s h)`` and ``G(z - s h)``: split the pixels into lighter / darker, fit one affine
    colour operator per group in closed form (``lstsq_operators``), and take the operator distance ``D``
    (larger = the two parts are treated more differently) and the relative restoration loss (smaller = two
    operators explain the change). Sign agreement: a pixel that gets lighter along ``+h`` should get darker
    along ``-h`` (soft, temperature ``tau`` on the gray change); shifts that move the geometry (pan, zoom,
    growth, rotation) break it, a colour operator applied to the object and to the background does not.

        J = mean_{+,-} D  -  loss_weight * mean_{+,-} relative loss  -  agree_weight * (1 - agreement)

    Returns ``(J, parts)``; ``J`` carries gradients to ``h`` (``gen`` must be differentiable in ``z``).
    """
    with torch.no_grad():
        x = gen(z).float()
    d_sum, rel_sum, changes = 0.0, 0.0, []
    for sign in (1.0, -1.0):
        y = gen(z + (sign * scale) * h[None]).float()
        ops = lstsq_operators(x, y[None])  # [1,2,3,4], differentiable in y
        err, _ = restoration_error(ops, x, y[None])
        change = (y - x).square().sum(dim=1).mean().clamp(min=1e-12)
        d_sum = d_sum + operator_distance(ops, x)[0]
        rel_sum = rel_sum + err.mean() / change
        changes.append(gray(y - x) / tau)
    gp, gm = changes
    agree = (torch.sigmoid(gp) * torch.sigmoid(-gm) + torch.sigmoid(-gp) * torch.sigmoid(gm)).mean()
    dist, rel = d_sum / 2, rel_sum / 2
    J = dist - loss_weight * rel - agree_weight * (1 - agree)
    return J, {"distance": float(dist.detach()), "loss_relative": float(rel.detach()), "agreement": float(agree.detach())}


@dataclass
class RefineConfig:
    """Options of ``refine_direction`` (``score --refine-*``)."""

    steps: int = 300
    batch: int = 16
    lr: float = 0.01
    loss_weight: float = 1.0
    agree_weight: float = 1.0
    tau: float = 0.05
    eval_n: int = 64

    def validate(self) -> None:
        if not (isinstance(self.steps, int) and self.steps >= 0):
            raise FactoryError(f"--refine-steps must be a non-negative number of steps, got {self.steps!r}")
        if not (isinstance(self.batch, int) and self.batch > 0):
            raise FactoryError(f"--refine-batch must be a positive number of latents, got {self.batch!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise FactoryError(f"--refine-lr must be a positive learning rate, got {self.lr!r}")
        for name in ("loss_weight", "agree_weight"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise FactoryError(f"refine {name} must be a finite non-negative weight, got {v!r}")
        if not (self.tau > 0 and math.isfinite(self.tau)):
            raise FactoryError(f"refine tau must be positive, got {self.tau!r}")


def refine_direction(gen, h0: torch.Tensor, cfg: RefineConfig, *, scale: float = 5.0, seed: int = 0,
                     progress: bool = False, desc: str = "refine") -> torch.Tensor:
    """Maximise ``refine_objective`` over unit directions by Adam from ``h0`` (cosine-decayed lr, fresh
    latents each step, step ``t`` seeded by ``(seed, t)``). Returns the unit direction (detached)."""

    dev = gen.device
    D = h0.shape[0]
    v = (h0 / h0.norm()).detach().clone().float().to(dev).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=cfg.lr)
    bar = progress_bar(range(cfg.steps), desc=desc, unit="step", disable=not progress, dynamic_ncols=True)
    for t in bar:
        for group in opt.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * t / max(1, cfg.steps)))
        g = torch.Generator().manual_seed(seed_of(seed, 6, t))
        z = torch.randn(cfg.batch, D, generator=g).to(dev)
        with torch.enable_grad():
            J, parts = refine_objective(gen, v / v.norm(), z, scale=scale, loss_weight=cfg.loss_weight,
                                        agree_weight=cfg.agree_weight, tau=cfg.tau)
            opt.zero_grad(set_to_none=True)
            (-J).backward()
        opt.step()
        if progress:
            bar.set_postfix_str(f"J {float(J):.3f} D {parts['distance']:.3f} agree {parts['agreement']:.3f}")
    return (v / v.norm()).detach()


@torch.no_grad()
def refine_value(gen, h: torch.Tensor, cfg: RefineConfig, *, scale: float = 5.0, seed: int = 0) -> dict:
    """Held-out value of ``refine_objective`` (``cfg.eval_n`` latents seeded by ``seed``) with its parts."""
    g = torch.Generator().manual_seed(seed_of(seed, 7))
    z_all = torch.randn(cfg.eval_n, h.shape[0], generator=g)
    acc: dict[str, float] = {}
    for b0 in range(0, cfg.eval_n, cfg.batch):
        z = z_all[b0 : b0 + cfg.batch].to(gen.device)
        J, parts = refine_objective(gen, h, z, scale=scale, loss_weight=cfg.loss_weight,
                                    agree_weight=cfg.agree_weight, tau=cfg.tau)
        w = z.shape[0] / cfg.eval_n
        for k, val in {"objective": float(J), **parts}.items():
            acc[k] = acc.get(k, 0.0) + w * val
    return acc
