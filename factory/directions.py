"""Segmenting directions: discovery (Voynov & Babenko 2020) and scoring (Voynov, Morozov & Babenko 2021, §3.2).

Architecture note
-----------------
Three stages, each a function over tensors; the CLI (``factory/cli_directions.py``)
only parses, calls one of them and prints.

- ``random_directions``: unit Gaussian directions, the baseline candidates.
- ``discover``: the 2020 method. A learnable matrix of K unit latent directions
  (the ``proj`` deformator of the reference code without bias: columns are
  renormalised in every forward) and a small CNN *reconstructor* that sees
  ``cat[G(z), G(z + eps d_k)]`` on channels and predicts ``k`` (cross-entropy)
  and ``eps`` (L1, weight 0.25). Both are trained by Adam on the same loss.
  Every step's randomness is a pure function of ``(seed, step)``, so a run
  resumed from an (atomic) checkpoint continues exactly as an uninterrupted one.
- ``score``: for every candidate ``h`` fit two pixelwise affine colour operators
  ``A_i c = M_i c + b_i`` (a ``[2,3,4]`` block per candidate, all candidates in one
  ``[K,2,3,4]`` tensor) minimising the restoration loss (paper eq. 3)

      L(h) = mean_pixels min_i || A_i G(z)[p] - G(z + s h)[p] ||^2

  (squared Euclidean colour error, summed over RGB, averaged over pixels and
  latents) by Adam on fresh latents every step. ``G(z)`` is computed once per
  step and shared by all candidates; the K shifted batches are rendered
  together (in chunks that bound memory). Each candidate's loss is a separate
  term of a sum, so candidates do not interact. Then, on held-out latents:
  the loss and the operator distance ``D = mean_pixels ||A_1 c - A_2 c||``.
  The selected direction is the one with the largest ``D`` among the
  ``keep_best`` fraction with the lowest loss.

Sign conventions (decided here, documented in docs/directions.md)
-----------------------------------------------------------------
The house luminance rule calls a pixel foreground when it gets LIGHTER along
the direction (``gray(G(z)) < gray(G(z + r h))``, the authors' code). Scoring
is blind to the sign of ``h``, so the selected direction is oriented so that
its luminance masks cover less than half of the image on average (objects are
the minority); when it is flipped, its operators are refitted for ``-h``.
The operators mask rule (paper eq. 5) assigns each pixel to the operator that
restores it best; the pixel is foreground when that operator gives the lighter
of the two predictions at that pixel (``gray(A_fg c) > gray(A_other c)``), the
same sign as the luminance rule. Operator 0 / 1 order in files does not matter.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from factory.errors import FactoryError
from factory.directions_io import read_numeric_npy

__all__ = [
    "random_directions",
    "load_candidates",
    "load_names",
    "load_operators",
    "apply_operators",
    "restoration_error",
    "operator_distance",
    "operator_mask",
    "init_operators",
    "fit_operators",
    "evaluate_operators",
    "select",
    "refine_objective",
    "RefineConfig",
    "refine_direction",
    "refine_value",
    "ScoreConfig",
    "score",
    "DiscoverConfig",
    "Reconstructor",
    "discover",
    "mask_iou",
]

GRAY = torch.tensor([0.2989, 0.5870, 0.1140])
_PIXEL_BUDGET = 1 << 21  # pixels of shifted images rendered and differentiated at once (~100 MB of fp32 temporaries)


# ----------------------------------------------------------------- small helpers

def _seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    _atomic_write_bytes(path, buf.getvalue())


def _atomic_json(path: Path, obj) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())


def _pick_device(device: str | None) -> torch.device:
    if device:
        try:
            return torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise FactoryError(f"bad --device {device!r} ({e}); use 'cpu' or 'cuda'") from None
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _load_generator(name: str, device: torch.device, resolution: int | None, weights: str | None):
    from factory.generators import load_generator

    opts: dict = {"device": str(device)}
    if resolution:
        opts["resolution"] = int(resolution)
    if weights:
        opts["weights"] = weights
    return load_generator(name, **opts)


# ----------------------------------------------------------------- candidates

def random_directions(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """``n`` unit Gaussian directions of width ``dim`` -> float32 ``[n, dim]`` (numpy Generator seeded by ``seed``)."""
    if not isinstance(n, int) or n <= 0:
        raise FactoryError(f"--n must be a positive number of directions, got {n!r}")
    if not isinstance(dim, int) or dim <= 0:
        raise FactoryError(f"--dim must be a positive latent width (120 for BigBiGAN and shapes), got {dim!r}")
    v = np.random.default_rng(seed).standard_normal((n, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def load_candidates(path: str | Path, dim_z: int) -> np.ndarray:
    """Read candidate directions ``[K, dim_z]`` (or one ``[dim_z]``) from .npy; returns unit rows, float32."""
    arr = read_numeric_npy(path, "candidates")
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise FactoryError(f"{path}: candidates must be [K, {dim_z}], got shape {list(arr.shape)}")
    if arr.shape[0] == 0:
        raise FactoryError(f"{path}: holds no candidate directions (K = 0); write at least one row")
    if arr.shape[1] != dim_z:
        raise FactoryError(f"{path}: candidates have width {arr.shape[1]}, the generator's dim_z is {dim_z}")
    if not np.all(np.isfinite(arr)):
        raise FactoryError(f"{path}: candidates contain NaN or inf")
    norms = np.linalg.norm(arr, axis=1)
    if np.any(norms == 0):
        raise FactoryError(f"{path}: candidate row {int(np.argmin(norms))} is all zeros; remove it")
    return (arr / norms[:, None]).astype(np.float32)


def load_names(path: str | Path | None, k: int) -> list[str | None] | None:
    """Names of the candidates: a JSON list of K strings (null for unknown) or an object {"index": name}."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise FactoryError(f"names file not found: {path}")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FactoryError(f"{path}: not valid JSON ({e})") from None
    if isinstance(obj, dict) and isinstance(obj.get("names"), list):
        obj = obj["names"]  # the JSON that `factory testworld directions` writes beside its .npy
    if isinstance(obj, list):
        if len(obj) != k:
            raise FactoryError(f"{path}: {len(obj)} names for {k} candidates; give one name (or null) per row")
        return [None if n is None else str(n) for n in obj]
    if isinstance(obj, dict):
        out: list[str | None] = [None] * k
        for key, name in obj.items():
            try:
                i = int(key)
            except ValueError:
                raise FactoryError(f"{path}: key {key!r} is not a row index") from None
            if not 0 <= i < k:
                raise FactoryError(f"{path}: row index {i} out of range for {k} candidates")
            out[i] = str(name)
        return out
    raise FactoryError(f"{path}: expected a JSON list of names or an object {{row: name}}")


def _auto_names(gen, dirs: np.ndarray) -> list[str | None]:
    """Names of candidates parallel (|cos| > 0.9999) to the generator's named directions, if it has any."""
    named = gen.named_directions() if hasattr(gen, "named_directions") else {}
    out: list[str | None] = [None] * dirs.shape[0]
    for name, v in named.items():
        v = np.asarray(v, np.float64)
        cos = dirs.astype(np.float64) @ (v / np.linalg.norm(v))
        for i in np.nonzero(np.abs(cos) > 0.9999)[0]:
            out[int(i)] = name if cos[i] > 0 else f"-{name}"
    return out


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


# ----------------------------------------------------------------- operators

def apply_operators(ops: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
    """``A c = M c + b`` per pixel. ``ops [..., 3, 4]``, ``img [B,3,H,W]`` -> ``[..., B, 3, H, W]``."""
    M, b = ops[..., :3], ops[..., 3]
    out = torch.einsum("...ij,bjhw->...bihw", M, img)
    return out + b[..., None, :, None, None]


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


def operator_mask(img: torch.Tensor, img_shifted: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
    """Paper eq. 5: each pixel goes to the operator that restores ``img_shifted`` best; foreground = the
    pixels whose operator gives the lighter prediction of the two there. ``ops [2,3,4]`` -> bool ``[B,H,W]``."""
    ops = ops.to(device=img.device, dtype=torch.float32)
    pred = apply_operators(ops, img.float())  # [2,B,3,H,W]
    err = (pred - img_shifted.float()[None]).square().sum(dim=2)  # [2,B,H,W]
    w = GRAY.to(img.device)
    lum = torch.einsum("c,kbchw->kbhw", w, pred)  # [2,B,H,W]
    best_is_1 = err[1] < err[0]
    lighter_is_1 = lum[1] > lum[0]
    return best_is_1 == lighter_is_1


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


def _chunk_size(k: int, batch: int, resolution: int, budget: int = _PIXEL_BUDGET) -> int:
    return max(1, min(k, budget // max(1, batch * resolution * resolution)))


def _render_shifted(gen, z: torch.Tensor, dirs: torch.Tensor, scale: float) -> torch.Tensor:
    """``G(z + scale h_k)`` for every candidate row of ``dirs [k,D]`` and latent of ``z [B,D]`` -> ``[k,B,3,H,W]``."""
    k, B = dirs.shape[0], z.shape[0]
    zz = (z[None] + scale * dirs[:, None]).reshape(k * B, -1)
    x = gen(zz)
    return x.view(k, B, *x.shape[1:])


def fit_operators(gen, dirs: torch.Tensor, *, scale: float = 5.0, steps: int = 200, batch: int = 4,
                  lr: float = 0.005, seed: int = 0, progress: bool = False, desc: str = "fit operators",
                  chunk: int | None = None, warm_start: bool = True) -> torch.Tensor:
    """Fit two affine colour operators per candidate (eq. 3) by Adam on fresh latents each step.

    ``warm_start``: start from ``lstsq_operators`` on step 0's latents (lighter / darker pixel groups)
    instead of the near-identity ``init_operators``; Adam then minimises eq. 3 itself.

    ``dirs [K, dim_z]`` unit rows on ``gen.device``; returns ``[K,2,3,4]`` float32 (detached).
    Step ``t`` draws its latents from a generator seeded by ``(seed, t)``.
    """
    from tqdm import tqdm

    dev = gen.device
    K, D = dirs.shape
    chunk = chunk or _chunk_size(K, batch, gen.resolution)
    ops = init_operators(K, dev)
    if warm_start:  # closed-form fit on the latents of step 0
        g = torch.Generator().manual_seed(_seed_of(seed, 1, 0))
        z = torch.randn(batch, D, generator=g).to(dev)
        with torch.no_grad():
            x = gen(z).float()
            for k0 in range(0, K, chunk):
                y = _render_shifted(gen, z, dirs[k0 : k0 + chunk], scale).float()
                ops[k0 : k0 + chunk] = lstsq_operators(x, y)
    ops.requires_grad_(True)
    opt = torch.optim.Adam([ops], lr=lr)
    bar = tqdm(range(steps), desc=desc, unit="step", disable=not progress, dynamic_ncols=True)
    for t in bar:
        g = torch.Generator().manual_seed(_seed_of(seed, 1, t))
        z = torch.randn(batch, D, generator=g).to(dev)
        with torch.no_grad():
            x = gen(z).float()
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for k0 in range(0, K, chunk):
            with torch.no_grad():
                y = _render_shifted(gen, z, dirs[k0 : k0 + chunk], scale).float()
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
    g = torch.Generator().manual_seed(_seed_of(seed, 2))
    z_all = torch.randn(n, D, generator=g)
    chunk = chunk or _chunk_size(K, batch, gen.resolution)
    loss = torch.zeros(K, dtype=torch.float64)
    change = torch.zeros(K, dtype=torch.float64)
    dist = torch.zeros(K, dtype=torch.float64)
    for b0 in range(0, n, batch):
        z = z_all[b0 : b0 + batch].to(dev)
        w = z.shape[0] / n
        x = gen(z).float()
        for k0 in range(0, K, chunk):
            y = _render_shifted(gen, z, dirs[k0 : k0 + chunk], scale).float()
            err, _ = restoration_error(ops[k0 : k0 + chunk], x, y)
            loss[k0 : k0 + chunk] += w * err.mean(dim=(1, 2, 3)).double().cpu()
            change[k0 : k0 + chunk] += w * (y - x[None]).square().sum(dim=2).mean(dim=(1, 2, 3)).double().cpu()
            dist[k0 : k0 + chunk] += w * operator_distance(ops[k0 : k0 + chunk], x).double().cpu()
    rel = loss / change.clamp(min=1e-12)
    return loss.numpy(), rel.numpy(), dist.numpy()


def select(loss: np.ndarray, distance: np.ndarray, keep_best: float) -> int:
    """Index of the largest operator distance among the ``ceil(keep_best * K)`` lowest losses (ties: lower index)."""
    pool = _kept(loss, keep_best)
    best = pool[np.argmax(distance[pool])]
    return int(best)


def _kept(loss: np.ndarray, keep_best: float) -> np.ndarray:
    """Indices of the ``ceil(keep_best * K)`` lowest losses, best first (ties: lower index)."""
    n_keep = max(1, int(math.ceil(keep_best * len(loss) - 1e-9)))
    return np.argsort(loss, kind="stable")[:n_keep]


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
    from factory.masks import gray

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
    from tqdm import tqdm

    dev = gen.device
    D = h0.shape[0]
    v = (h0 / h0.norm()).detach().clone().float().to(dev).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=cfg.lr)
    bar = tqdm(range(cfg.steps), desc=desc, unit="step", disable=not progress, dynamic_ncols=True)
    for t in bar:
        for group in opt.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * t / max(1, cfg.steps)))
        g = torch.Generator().manual_seed(_seed_of(seed, 6, t))
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
    g = torch.Generator().manual_seed(_seed_of(seed, 7))
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


@torch.no_grad()
def _luminance_fg(gen, h: torch.Tensor, scale: float, n: int, seed: int) -> float:
    from factory.masks import luminance_mask

    g = torch.Generator().manual_seed(_seed_of(seed, 3))
    z = torch.randn(n, h.shape[0], generator=g).to(gen.device)
    x, y = gen(z), gen(z + scale * h[None])
    return float(luminance_mask(x, y).float().mean())


# ----------------------------------------------------------------- score

@dataclass
class ScoreConfig:
    generator: str
    candidates: str
    out: str
    weights: str | None = None
    resolution: int | None = None
    names: str | None = None
    scale: float = 5.0
    steps: int = 200
    batch: int = 4
    lr: float = 0.005
    keep_best: float = 0.7
    loss: str = "relative"  # which loss ranks candidates for keep_best: relative | absolute
    eval_n: int = 32
    seed: int = 0
    device: str | None = None
    progress: bool = True
    figures: bool = True
    refine_top: int = 3  # refine this many kept candidates (largest distance first); keep the best objective
    # refine.steps > 0: refine the selection by maximising the criterion itself (refine_direction)
    refine: RefineConfig = field(default_factory=lambda: RefineConfig(steps=0))

    def validate(self) -> None:
        if not (isinstance(self.refine_top, int) and self.refine_top > 0):
            raise FactoryError(f"--refine-top must be a positive number of candidates, got {self.refine_top!r}")
        self.refine.validate()
        if not (isinstance(self.steps, int) and self.steps > 0):
            raise FactoryError(f"--steps must be a positive number of Adam steps, got {self.steps!r}")
        if not (isinstance(self.batch, int) and self.batch > 0):
            raise FactoryError(f"--batch must be a positive number of latents per step, got {self.batch!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise FactoryError(f"--lr must be a positive learning rate, got {self.lr!r}")
        if not (0 < self.keep_best <= 1):
            raise FactoryError(f"--keep-best must be a fraction in (0, 1], got {self.keep_best!r}")
        if not (math.isfinite(self.scale) and self.scale != 0):
            raise FactoryError(f"--scale must be a finite non-zero shift, got {self.scale!r}")
        if self.loss not in ("relative", "absolute"):
            raise FactoryError(f"--loss must be 'relative' or 'absolute', got {self.loss!r}")
        if not (isinstance(self.eval_n, int) and self.eval_n > 0):
            raise FactoryError(f"--eval-n must be a positive number of held-out latents, got {self.eval_n!r}")


def score(cfg: ScoreConfig, log=None) -> dict:
    """Fit, evaluate and select (paper §3.2); write the table, operators, direction and figures under ``cfg.out``.

    Returns the JSON summary (also written as ``scores.json``).
    """
    cfg.validate()
    t_start = time.perf_counter()
    device = _pick_device(cfg.device)
    gen = _load_generator(cfg.generator, device, cfg.resolution, cfg.weights)
    cand = load_candidates(cfg.candidates, gen.dim_z)
    K = cand.shape[0]
    names = load_names(cfg.names, K) or _auto_names(gen, cand)
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FactoryError(f"--out {out} is not writable ({e.strerror or e}); choose a folder you can write") from None

    dirs = torch.as_tensor(cand, device=gen.device)
    t0 = time.perf_counter()
    ops = fit_operators(gen, dirs, scale=cfg.scale, steps=cfg.steps, batch=cfg.batch, lr=cfg.lr, seed=cfg.seed,
                        progress=cfg.progress, desc=f"score {K} directions")
    t_fit = time.perf_counter() - t0
    loss_abs, loss_rel, dist = evaluate_operators(gen, dirs, ops, scale=cfg.scale, n=cfg.eval_n, seed=cfg.seed)
    loss = loss_rel if cfg.loss == "relative" else loss_abs
    sel = select(loss, dist, cfg.keep_best)

    h = dirs[sel]
    refined = None
    if cfg.refine.steps > 0:
        h, refined = _refine_selection(gen, dirs, loss, dist, sel, cfg)

    # Orientation: objects are the minority of pixels under the luminance rule.
    fg = _luminance_fg(gen, h, cfg.scale, cfg.eval_n, cfg.seed)
    flipped = fg > 0.5
    ops_sel = ops[sel]
    if flipped:
        h = -h
    if flipped or refined is not None:  # operators of a direction that is not a scored candidate
        ops_sel = fit_operators(gen, h[None], scale=cfg.scale, steps=cfg.steps, batch=cfg.batch, lr=cfg.lr,
                                seed=cfg.seed, progress=cfg.progress, desc="refit operators")[0]
        fg = _luminance_fg(gen, h, cfg.scale, cfg.eval_n, cfg.seed)
    kept = set(_kept(loss, cfg.keep_best).tolist())
    n_keep = len(kept)
    rows = [
        {"index": i, "name": names[i], "loss": float(loss_abs[i]), "loss_relative": float(loss_rel[i]),
         "distance": float(dist[i]), "kept": i in kept, "selected": i == sel}
        for i in range(K)
    ]
    ops_np = ops.cpu().numpy().astype(np.float32)
    _atomic_save_npy(out / "operators.npy", ops_np)
    _atomic_save_npy(out / "operators_selected.npy", ops_sel.cpu().numpy().astype(np.float32))
    _atomic_save_npy(out / "direction.npy", h.cpu().numpy().astype(np.float32))
    _write_table(out / "scores.parquet", rows)
    if cfg.figures:
        figure1(out / "figure1.png", rows, cfg.keep_best, cfg.loss)
        figure2(out / "figure2.png", gen, h, ops_sel, cfg.scale, seed=cfg.seed)
    summary = {
        "selected": sel,
        "selected_name": names[sel],
        "flipped": bool(flipped),
        "selected_luminance_fg_ratio": fg,
        "refined": refined,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("progress", "figures")},
        "generator": gen.identity(),
        "device": str(gen.device),
        "candidates": K,
        "kept": n_keep,
        "seconds_fit": t_fit,
        "seconds_total": time.perf_counter() - t_start,
        "files": ["scores.parquet", "scores.json", "operators.npy", "operators_selected.npy", "direction.npy"]
        + (["figure1.png", "figure2.png"] if cfg.figures else []),
        "rows": rows,
    }
    _atomic_json(out / "scores.json", summary)
    return summary


def _refine_selection(gen, dirs: torch.Tensor, loss: np.ndarray, dist: np.ndarray, sel: int, cfg: ScoreConfig):
    """Refine the ``refine_top`` kept candidates with the largest distance (the selected one first) by
    ``refine_direction``; return the refined direction with the best held-out objective and a report."""
    pool = _kept(loss, cfg.keep_best)
    others = [int(i) for i in pool[np.argsort(-dist[pool], kind="stable")] if i != sel]
    starts = [sel] + others[: cfg.refine_top - 1]
    t0 = time.perf_counter()
    results = []
    for i in starts:
        h0 = dirs[i]
        h = refine_direction(gen, h0, cfg.refine, scale=cfg.scale, seed=cfg.seed, progress=cfg.progress,
                             desc=f"refine candidate {i}")
        before = refine_value(gen, h0, cfg.refine, scale=cfg.scale, seed=cfg.seed)
        after = refine_value(gen, h, cfg.refine, scale=cfg.scale, seed=cfg.seed)
        results.append({"start": i, "cos_to_start": float(h @ h0), "objective_before": before["objective"],
                        "after": after, "direction": h})
    best = max(range(len(results)), key=lambda j: results[j]["after"]["objective"])
    h = results[best]["direction"]
    report = {
        "chosen_start": results[best]["start"],
        "seconds": time.perf_counter() - t0,
        "runs": [{k: v for k, v in r.items() if k != "direction"} for r in results],
    }
    return h, report


def _write_table(path: Path, rows: list[dict]) -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "index": pa.array([r["index"] for r in rows], pa.int32()),
        "name": pa.array([r["name"] for r in rows], pa.string()),
        "loss": pa.array([r["loss"] for r in rows], pa.float64()),
        "loss_relative": pa.array([r["loss_relative"] for r in rows], pa.float64()),
        "distance": pa.array([r["distance"] for r in rows], pa.float64()),
        "kept": pa.array([r["kept"] for r in rows], pa.bool_()),
        "selected": pa.array([r["selected"] for r in rows], pa.bool_()),
    })
    buf = io.BytesIO()
    pq.write_table(table, buf)
    _atomic_write_bytes(path, buf.getvalue())


def _savefig(fig, path: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    _atomic_write_bytes(path, buf.getvalue())


def figure1(path: Path, rows: list[dict], keep_best: float, loss_kind: str = "relative") -> None:
    """Paper Figure 1: restoration loss vs operator distance; the kept fraction, the selected one, names."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    loss = np.array([r["loss_relative" if loss_kind == "relative" else "loss"] for r in rows])
    dist = np.array([r["distance"] for r in rows])
    kept = np.array([r["kept"] for r in rows])
    sel = next(r["index"] for r in rows if r["selected"])
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(loss[~kept], dist[~kept], s=14, c="0.7", label="not kept (high loss)")
    ax.scatter(loss[kept], dist[kept], s=14, c="tab:blue", label=f"kept (best {keep_best:.0%} by loss)")
    ax.scatter([loss[sel]], [dist[sel]], s=90, facecolors="none", edgecolors="red", linewidths=2, label="selected")
    for r, lx in zip(rows, loss):
        if r["name"]:
            ax.annotate(r["name"], (lx, r["distance"]), fontsize=8, xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel(f"{loss_kind} restoration loss (held out)")
    ax.set_ylabel("operator distance  mean ||A1 c - A2 c||")
    ax.set_title(f"{len(rows)} candidate directions")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    _savefig(fig, path)


@torch.no_grad()
def figure2(path: Path, gen, h: torch.Tensor, ops: torch.Tensor, scale: float, *, n: int = 4, seed: int = 0) -> None:
    """Paper Figure 2: per latent, G(z), G(z + s h), the operators' restoration of it, and the operators mask."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    g = torch.Generator().manual_seed(_seed_of(seed, 4))
    z = torch.randn(n, h.shape[0], generator=g).to(gen.device)
    x, y = gen(z).float(), gen(z + scale * h[None]).float()
    pred = apply_operators(ops, x)  # [2,B,3,H,W]
    err = (pred - y[None]).square().sum(dim=2)
    best = err.argmin(dim=0)  # [B,H,W]
    approx = torch.where(best[:, None].bool(), pred[1], pred[0])
    mask = operator_mask(x, y, ops)
    to_img = lambda t: ((t.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy()  # noqa: E731
    cols = ["G(z)", f"G(z + {scale:g} h)", "operators' restoration", "operators mask"]
    fig, axes = plt.subplots(n, 4, figsize=(8, 2 * n), squeeze=False)
    for i in range(n):
        ims = [to_img(x[i]), to_img(y[i]), to_img(approx[i]), mask[i].cpu().numpy()]
        for j, im in enumerate(ims):
            ax = axes[i, j]
            ax.imshow(im, cmap="gray" if j == 3 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=9)
    fig.tight_layout()
    _savefig(fig, path)


# ----------------------------------------------------------------- mask quality (shapes world)

@torch.no_grad()
def mask_iou(gen, direction, *, scale: float = 5.0, n: int = 256, seed: int = 0, rule: str = "luminance",
             operators=None, batch: int = 64) -> dict:
    """Mean per-image IoU with ``gen.true_mask`` of the raw and CC-cleaned masks of ``rule`` along ``direction``."""
    from factory.masks import make_masks

    if not hasattr(gen, "true_mask"):
        raise FactoryError("mask IoU needs a generator with ground truth (true_mask), e.g. shapes")
    h = torch.as_tensor(np.asarray(direction, np.float32), device=gen.device)
    g = torch.Generator().manual_seed(_seed_of(seed, 5))
    z_all = torch.randn(n, gen.dim_z, generator=g)
    ops = None if operators is None else torch.as_tensor(np.asarray(operators, np.float32))
    ious = {"raw": [], "clean": []}
    for b0 in range(0, n, batch):
        z = z_all[b0 : b0 + batch].to(gen.device)
        x, y = gen(z), gen(z + scale * h[None])
        raw, clean, _, _ = make_masks(x, y, rule=rule, operators=ops)
        truth = gen.true_mask(z)
        for k, m in (("raw", raw), ("clean", clean)):
            inter = (truth & m).flatten(1).sum(1).float()
            union = (truth | m).flatten(1).sum(1).float()
            ious[k].append(torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)))
    return {k: float(torch.cat(v).mean()) for k, v in ious.items()}


# ----------------------------------------------------------------- discover

class Reconstructor(nn.Module):
    """Small CNN on ``cat[G(z), G(z + eps d_k)]`` (6 channels; with ``diff`` also ``G(z + eps d_k) - G(z)``,
    9 channels): logits over K directions and eps."""

    def __init__(self, k: int, width: int = 32, diff: bool = False):
        super().__init__()
        self.diff = diff
        chans = [9 if diff else 6, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.logits = nn.Linear(chans[-1], k)
        self.shift = nn.Linear(chans[-1], 1)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [x0, x1, x1 - x0] if self.diff else [x0, x1]
        f = self.features(torch.cat(parts, dim=1)).mean(dim=(2, 3))
        return self.logits(f), self.shift(f).squeeze(1)


@dataclass
class DiscoverConfig:
    generator: str
    out: str
    n_directions: int
    weights: str | None = None
    resolution: int | None = None
    steps: int = 2000
    batch: int = 32
    lr: float = 1e-3
    lr_directions: float | None = None  # default: lr
    shift_scale: float = 6.0
    min_shift: float = 0.5
    label_weight: float = 1.0
    shift_weight: float = 0.25
    width: int = 32
    deformator: str = "proj"  # "proj": unit columns of a free [D, K] matrix; "ortho": first K columns of expm(S - S^T)
    random_init: bool = True  # ortho: S ~ N(0, 1) (random rotation); False: S ~ 0.001 N(0, 1) (start at the axes)
    rec_diff: bool = False  # reconstructor also sees G(z + eps d) - G(z)
    lr_warmup_boost: float = 1.0  # lr multiplier at step 0, decaying linearly to 1 at boost_steps (0: off)
    boost_steps: int = 0
    seed: int = 2
    checkpoint_every: int = 200
    device: str | None = None
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if not (isinstance(self.n_directions, int) and self.n_directions > 0):
            raise FactoryError(f"--n-directions must be a positive number of directions, got {self.n_directions!r}")
        if not (isinstance(self.steps, int) and self.steps > 0):
            raise FactoryError(f"--steps must be positive, got {self.steps!r}")
        if not (isinstance(self.batch, int) and self.batch > 0):
            raise FactoryError(f"--batch must be positive, got {self.batch!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise FactoryError(f"--lr must be a positive learning rate, got {self.lr!r}")
        if not (isinstance(self.checkpoint_every, int) and self.checkpoint_every > 0):
            raise FactoryError(f"--checkpoint-every must be positive, got {self.checkpoint_every!r}")
        if self.deformator not in ("proj", "ortho"):
            raise FactoryError(f"--deformator must be 'proj' or 'ortho', got {self.deformator!r}")
        if not str(self.out).endswith(".npy"):
            raise FactoryError(f"--out must be a .npy file name (the JSON goes beside it), got {self.out!r}")

    def training_key(self) -> dict:
        """The part of the config that determines the trajectory (a checkpoint is resumed only if it matches)."""
        d = asdict(self)
        for k in ("out", "steps", "checkpoint_every", "device", "progress", "weights", "extra"):
            d.pop(k)
        return d


def _sample_shifts(k: int, batch: int, cfg: DiscoverConfig, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randint(0, k, (batch,), generator=g)
    eps = cfg.shift_scale * (2 * torch.rand(batch, generator=g) - 1)
    eps = torch.sign(eps) * eps.abs().clamp(min=cfg.min_shift)
    eps = torch.where(eps == 0, torch.full_like(eps, cfg.min_shift), eps)
    return idx, eps


def _unit_columns(W: torch.Tensor) -> torch.Tensor:
    return W / W.norm(dim=0, keepdim=True).clamp(min=1e-12)


def _directions_of(W: torch.Tensor, cfg: DiscoverConfig) -> torch.Tensor:
    """The ``[D, K]`` unit directions of the deformator parameter ``W``."""
    if cfg.deformator == "ortho":  # W is [D, D]; A = expm(W - W^T) is orthogonal
        return torch.linalg.matrix_exp(W - W.T)[:, : cfg.n_directions]
    return _unit_columns(W)


def _init_deformator(cfg: DiscoverConfig, D: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(_seed_of(cfg.seed, 11))
    if cfg.deformator == "ortho":
        S = torch.randn(D, D, generator=g)
        return S if cfg.random_init else 0.001 * S
    return _unit_columns(torch.randn(D, cfg.n_directions, generator=g))


def _ckpt_paths(out: Path) -> tuple[Path, Path]:
    d = out.with_name(out.stem + ".ckpt")
    return d / "checkpoint.safetensors", d / "checkpoint.json"


def _flatten_state(W, rec, opts) -> dict[str, torch.Tensor]:
    t = {"directions": W.detach().cpu().contiguous()}
    for k, v in rec.state_dict().items():
        t[f"reconstructor.{k}"] = v.detach().cpu().contiguous()
    for name, opt in opts.items():
        for pid, st in opt.state_dict()["state"].items():
            for key, val in st.items():
                t[f"opt.{name}.{pid}.{key}"] = torch.as_tensor(val).detach().cpu().contiguous()
    return t


def _save_checkpoint(out: Path, step: int, W, rec, opts, cfg: DiscoverConfig, metrics: dict) -> None:
    from safetensors.torch import save

    st_path, js_path = _ckpt_paths(out)
    data = save(_flatten_state(W, rec, opts))
    _atomic_write_bytes(st_path, data)
    import hashlib

    _atomic_json(js_path, {"step": step, "training": cfg.training_key(), "metrics": metrics,
                           "safetensors_sha256": hashlib.sha256(data).hexdigest()})


def _load_checkpoint(out: Path, cfg: DiscoverConfig, W, rec, opts, log) -> int:
    """Restore the last checkpoint when it belongs to this training config; returns the step to start from."""
    import hashlib

    from safetensors.torch import load

    st_path, js_path = _ckpt_paths(out)
    if not js_path.is_file():
        return 0
    try:
        meta = json.loads(js_path.read_text())
        data = st_path.read_bytes()
    except (OSError, json.JSONDecodeError) as e:
        raise FactoryError(f"{js_path}: unreadable checkpoint ({e}); delete {js_path.parent} to start over") from None
    if meta.get("training") != cfg.training_key():
        raise FactoryError(f"{js_path.parent} holds a checkpoint of another training config; "
                           f"delete it or choose another --out")
    if hashlib.sha256(data).hexdigest() != meta.get("safetensors_sha256"):
        raise FactoryError(f"{st_path} does not match its checkpoint.json; delete {js_path.parent} to start over")
    t = load(data)
    with torch.no_grad():
        W.copy_(t["directions"].to(W.device))
    rec.load_state_dict({k[len("reconstructor."):]: v for k, v in t.items() if k.startswith("reconstructor.")})
    for name, opt in opts.items():
        sd = opt.state_dict()
        state: dict = {}
        for k, v in t.items():
            if k.startswith(f"opt.{name}."):
                _, _, pid, key = k.split(".", 3)
                state.setdefault(int(pid), {})[key] = v if key == "step" else v.to(W.device)
        sd["state"] = state
        opt.load_state_dict(sd)
    log(f"resuming from {st_path} at step {meta['step']}")
    return int(meta["step"])


def discover(cfg: DiscoverConfig, log=None) -> dict:
    """Train K unit directions and a reconstructor (Voynov & Babenko 2020); write ``out`` [K, dim_z] + JSON beside.

    Resumes from ``<out stem>.ckpt/`` when a checkpoint of the same training config is there.
    """
    from tqdm import tqdm

    log = log or (lambda m: None)
    cfg.validate()
    out = Path(cfg.out)
    device = _pick_device(cfg.device)
    gen = _load_generator(cfg.generator, device, cfg.resolution, cfg.weights)
    if hasattr(gen, "eval"):
        gen.eval()
    for p in getattr(gen, "parameters", lambda: [])():
        p.requires_grad_(False)
    K, D = cfg.n_directions, gen.dim_z
    torch.manual_seed(_seed_of(cfg.seed, 10))  # reconstructor init only
    if cfg.deformator == "ortho" and K > D:
        raise FactoryError(f"--deformator ortho gives at most dim_z = {D} directions, got --n-directions {K}")
    rec = Reconstructor(K, cfg.width, diff=cfg.rec_diff).to(device)
    W = _init_deformator(cfg, D).to(device).requires_grad_(True)
    opts = {
        "directions": torch.optim.Adam([W], lr=cfg.lr_directions or cfg.lr),
        "reconstructor": torch.optim.Adam(rec.parameters(), lr=cfg.lr),
    }
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FactoryError(f"--out {out}: folder not writable ({e.strerror or e})") from None
    start = _load_checkpoint(out, cfg, W, rec, opts, log)
    t0 = time.perf_counter()
    rec.train()
    ema = {}
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"discover {K} directions",
               unit="step", disable=not cfg.progress, dynamic_ncols=True)
    base_lrs = {n: [pg["lr"] for pg in o.param_groups] for n, o in opts.items()}
    for step in bar:
        if cfg.boost_steps > 0:
            f = 1.0 + (cfg.lr_warmup_boost - 1.0) * max(0.0, 1.0 - step / cfg.boost_steps)
            for n, o in opts.items():
                for pg, b in zip(o.param_groups, base_lrs[n]):
                    pg["lr"] = b * f
        g = torch.Generator().manual_seed(_seed_of(cfg.seed, 12, step))
        z = torch.randn(cfg.batch, D, generator=g).to(device)
        idx, eps = _sample_shifts(K, cfg.batch, cfg, g)
        idx, eps = idx.to(device), eps.to(device)
        with torch.no_grad():
            x0 = gen(z).float()
        dirs = _directions_of(W, cfg)  # [D, K]
        x1 = gen(z + eps[:, None] * dirs[:, idx].T).float()
        logits, eps_hat = rec(x0, x1)
        ce = F.cross_entropy(logits, idx)
        l1 = (eps_hat - eps).abs().mean()
        loss = cfg.label_weight * ce + cfg.shift_weight * l1
        for o in opts.values():
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in opts.values():
            o.step()
        acc = float((logits.argmax(1) == idx).float().mean())
        for k, v in (("loss", float(loss.detach())), ("ce", float(ce.detach())), ("l1", float(l1.detach())), ("acc", acc)):
            ema[k] = v if k not in ema else 0.95 * ema[k] + 0.05 * v
        if cfg.progress:
            bar.set_postfix_str(f"acc {ema['acc']:.2f} loss {ema['loss']:.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            _save_checkpoint(out, step + 1, W, rec, opts, cfg, dict(ema))
    bar.close()
    val = _validate(gen, W, rec, cfg, K, D, device)
    dirs_np = _unit_columns(_directions_of(W.detach(), cfg)).T.cpu().numpy().astype(np.float32)  # [K, D] rows
    _save_checkpoint(out, cfg.steps, W, rec, opts, cfg, dict(ema))
    summary = {
        "kind": "factory.directions.discover",
        "method": f"Voynov & Babenko 2020 ({cfg.deformator} deformator, CNN reconstructor)",
        "shape": list(dirs_np.shape),
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("progress", "extra")},
        "generator": gen.identity(),
        "device": str(device),
        "steps": cfg.steps,
        "train_metrics_ema": ema,
        "validation": val,
        "seconds_this_run": time.perf_counter() - t0,
        "checkpoint": str(_ckpt_paths(out)[0].parent),
    }
    _atomic_save_npy(out, dirs_np)
    _atomic_json(out.with_suffix(".json"), summary)
    return summary


@torch.no_grad()
def _validate(gen, W, rec, cfg: DiscoverConfig, K: int, D: int, device, batches: int = 4) -> dict:
    rec.eval()
    dirs = _directions_of(W, cfg)
    correct, l1, n = 0, 0.0, 0
    for b in range(batches):
        g = torch.Generator().manual_seed(_seed_of(cfg.seed, 13, b))
        z = torch.randn(cfg.batch, D, generator=g).to(device)
        idx, eps = _sample_shifts(K, cfg.batch, cfg, g)
        idx, eps = idx.to(device), eps.to(device)
        logits, eps_hat = rec(gen(z).float(), gen(z + eps[:, None] * dirs[:, idx].T).float())
        correct += int((logits.argmax(1) == idx).sum())
        l1 += float((eps_hat - eps).abs().sum())
        n += cfg.batch
    rec.train()
    return {"accuracy": correct / n, "shift_l1": l1 / n, "samples": n}
