"""Two affine colour operators per candidate direction (paper §3.2, eq. 3): initial and closed-form fits,
the Adam fit, the restoration error, the operator distance and their held-out evaluation; reading
fitted operators from .npy. The method is described in the package docstring (``factory.directions``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from factory.directions.common import chunk_size, render_shifted, seed_of
from factory.directions.io import read_numeric_npy
from factory.format import FactoryError
from factory.masks import GRAY, apply_operators
from factory.progress import progress_bar

__all__ = [
    "load_operators",
    "restoration_error",
    "operator_distance",
    "init_operators",
    "lstsq_operators",
    "fit_operators",
    "evaluate_operators",
]


def load_operators(path: str | Path) -> np.ndarray:
    """Two fitted operators ``[2,3,4]`` (``[1,2,3,4]`` accepted) from .npy -> float32."""
    arr = read_numeric_npy(path, "operators")
    if arr.shape == (1, 2, 3, 4):
        arr = arr[0]
    if arr.shape != (2, 3, 4):
        hint = " (a [K,2,3,4] table of all candidates: pass operators_selected.npy)" if arr.ndim == 4 else ""
        raise FactoryError(f"{path}: operators must have shape [2, 3, 4], got {list(arr.shape)}{hint}")
    if not np.all(np.isfinite(arr)):
        raise FactoryError(f"{path}: operators contain NaN or inf")
    return arr.astype(np.float32)


def restoration_error(ops: torch.Tensor, img: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel restoration error of the better operator (eq. 3) and its index.

    ``ops [K,2,3,4]``, ``img [B,3,H,W]`` (shared), ``target [K,B,3,H,W]`` -> ``(err [K,B,H,W], argmin int64 [K,B,H,W])``.
    """
    pred = apply_operators(ops, img)  # [K,2,B,3,H,W]
    err = (pred - target[:, None]).square().sum(dim=3)  # [K,2,B,H,W]
    e, i = err.min(dim=1)
    return e, i


def operator_distance(ops: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
    """``mean over pixels of ||A_1 c - A_2 c||`` per candidate: ``ops [K,2,3,4]``, ``img [B,3,H,W]`` -> ``[K]``."""
    diff = ops[:, 0] - ops[:, 1]  # [K,3,4]: (M1-M2) c + (b1-b2)
    d = apply_operators(diff, img)  # [K,B,3,H,W]
    return d.square().sum(dim=2).sqrt().mean(dim=(1, 2, 3))


def init_operators(k: int, device, delta: float = 0.1) -> torch.Tensor:
    """Identity colour maps, operator 0 a little lighter (+delta bias) and operator 1 a little darker (-delta)."""
    ops = torch.zeros(k, 2, 3, 4, device=device)
    ops[:, :, :, :3] = torch.eye(3, device=device)
    ops[:, 0, :, 3] = delta
    ops[:, 1, :, 3] = -delta
    return ops


def lstsq_operators(img: torch.Tensor, target: torch.Tensor, ridge: float = 1e-2, delta: float = 0.1) -> torch.Tensor:
    """Closed-form warm start: split each candidate's pixels by whether they get lighter or darker
    (``gray(target) > gray(img)``) and fit one affine map per group by ridge least squares (towards
    ``init_operators``). ``img [B,3,H,W]``, ``target [K,B,3,H,W]`` -> ``[K,2,3,4]``."""
    K = target.shape[0]
    X = torch.cat([img, torch.ones_like(img[:, :1])], 1).permute(0, 2, 3, 1).reshape(-1, 4).double()  # [N,4]
    Y = target.permute(0, 1, 3, 4, 2).reshape(K, -1, 3).double()  # [K,N,3]
    w = GRAY.to(img.device).double()
    lighter = (Y @ w) > (X[:, :3] @ w)[None]  # [K,N]
    prior = init_operators(K, img.device, delta).double().transpose(-1, -2)  # [K,2,4,3]
    eye = torch.eye(4, dtype=torch.float64, device=img.device)
    out = []
    for i, m in enumerate((lighter, ~lighter)):
        wm = m.double()
        G = torch.einsum("kn,ni,nj->kij", wm, X, X)
        R = torch.einsum("kn,ni,knj->kij", wm, X, Y)
        lam = ridge * (wm.sum(1) + 1.0)[:, None, None]
        P = torch.linalg.solve(G + lam * eye, R + lam * prior[:, i])  # [K,4,3]
        out.append(P.transpose(-1, -2))
    return torch.stack(out, 1).float()


def fit_operators(gen, dirs: torch.Tensor, *, scale: float = 5.0, steps: int = 200, batch: int = 4,
                  lr: float = 0.005, seed: int = 0, progress: bool = False, desc: str = "fit operators",
                  chunk: int | None = None, warm_start: bool = True) -> torch.Tensor:
    """Fit two affine colour operators per candidate (eq. 3) by Adam on fresh latents each step.

    ``warm_start``: start from ``lstsq_operators`` on step 0's latents (lighter / darker pixel groups)
    instead of the near-identity ``init_operators``; Adam then minimises eq. 3 itself.

    ``dirs [K, dim_z]`` unit rows on ``gen.device``; returns ``[K,2,3,4]`` float32 (detached).
    Step ``t`` draws its latents from a generator seeded by ``(seed, t)``.
    """

    dev = gen.device
    K, D = dirs.shape
    chunk = chunk or chunk_size(K, batch, gen.resolution)
    ops = init_operators(K, dev)
    if warm_start:  # closed-form fit on the latents of step 0
        g = torch.Generator().manual_seed(seed_of(seed, 1, 0))
        z = torch.randn(batch, D, generator=g).to(dev)
        with torch.no_grad():
            x = gen(z).float()
            for k0 in range(0, K, chunk):
                y = render_shifted(gen, z, dirs[k0 : k0 + chunk], scale).float()
                ops[k0 : k0 + chunk] = lstsq_operators(x, y)
    ops.requires_grad_(True)
    opt = torch.optim.Adam([ops], lr=lr)
    bar = progress_bar(range(steps), desc=desc, unit="step", disable=not progress, dynamic_ncols=True)
    for t in bar:
        g = torch.Generator().manual_seed(seed_of(seed, 1, t))
        z = torch.randn(batch, D, generator=g).to(dev)
        with torch.no_grad():
            x = gen(z).float()
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for k0 in range(0, K, chunk):
            with torch.no_grad():
                y = render_shifted(gen, z, dirs[k0 : k0 + chunk], scale).float()
            err, _ = restoration_error(ops[k0 : k0 + chunk], x, y)
            loss = err.mean(dim=(1, 2, 3)).sum()  # independent per-candidate terms
            loss.backward()
            total += float(loss.detach())
        opt.step()
        if progress:
            bar.set_postfix_str(f"mean loss {total / K:.4f}")
    return ops.detach()


@torch.no_grad()
def evaluate_operators(gen, dirs: torch.Tensor, ops: torch.Tensor, *, scale: float = 5.0, n: int = 32,
                       batch: int = 8, seed: int = 0, chunk: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Held-out restoration loss, relative loss and operator distance per candidate -> three ``[K]`` float64.

    relative loss = restoration loss / mean over pixels of ``||G(z + s h) - G(z)||^2`` (the loss of doing
    nothing): the fraction of the direction's colour change that the two operators do not explain.
    """
    dev = gen.device
    K, D = dirs.shape
    g = torch.Generator().manual_seed(seed_of(seed, 2))
    z_all = torch.randn(n, D, generator=g)
    chunk = chunk or chunk_size(K, batch, gen.resolution)
    loss = torch.zeros(K, dtype=torch.float64)
    change = torch.zeros(K, dtype=torch.float64)
    dist = torch.zeros(K, dtype=torch.float64)
    for b0 in range(0, n, batch):
        z = z_all[b0 : b0 + batch].to(dev)
        w = z.shape[0] / n
        x = gen(z).float()
        for k0 in range(0, K, chunk):
            y = render_shifted(gen, z, dirs[k0 : k0 + chunk], scale).float()
            err, _ = restoration_error(ops[k0 : k0 + chunk], x, y)
            loss[k0 : k0 + chunk] += w * err.mean(dim=(1, 2, 3)).double().cpu()
            change[k0 : k0 + chunk] += w * (y - x[None]).square().sum(dim=2).mean(dim=(1, 2, 3)).double().cpu()
            dist[k0 : k0 + chunk] += w * operator_distance(ops[k0 : k0 + chunk], x).double().cpu()
    rel = loss / change.clamp(min=1e-12)
    return loss.numpy(), rel.numpy(), dist.numpy()
