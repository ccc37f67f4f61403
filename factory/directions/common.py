"""What every directions stage shares: seeding, opening the generator, reading candidate directions and
their names, and rendering shifted images in memory-bounded chunks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from factory.directions.io import read_numeric_npy
from factory.format import FactoryError
from factory.fsio import atomic_save_npy

_PIXEL_BUDGET = 1 << 21  # pixels of shifted images rendered and differentiated at once (~100 MB of fp32 temporaries)


# ----------------------------------------------------------------- small helpers

def seed_of(*parts: int) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (e.g. ``(seed, stage, step)``)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def open_generator(name: str, device: torch.device, options: dict, *, class_id: int | None = None):
    """The generator ``name`` on ``device`` with its other `load_generator` options; ``class_id``: the
    class a class-conditional generator (biggan) renders every latent with."""
    from factory.generators import load_generator

    if class_id is not None:
        options = {**options, "classes": [int(class_id)]}
    return load_generator(name, **{**options, "device": str(device)})


# ----------------------------------------------------------------- candidates

def random_directions(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """``n`` unit Gaussian directions of width ``dim`` -> float32 ``[n, dim]`` (numpy Generator seeded by ``seed``)."""
    if not isinstance(n, int) or n <= 0:
        raise FactoryError(f"--n must be a positive number of directions, got {n!r}")
    if not isinstance(dim, int) or dim <= 0:
        raise FactoryError(f"--dim must be a positive latent width (120 for BigBiGAN and shapes), got {dim!r}")
    v = np.random.default_rng(seed).standard_normal((n, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def write_random_directions(out: str, n: int, *, dim: int | None = None, seed: int = 0, generator: str = "shapes",
                            weights: str | None = None) -> np.ndarray:
    """`random_directions` saved to ``out`` (a .npy path, written atomically); returns the array. ``dim``: the
    width, by default the latent width of ``generator`` (with its ``weights``)."""
    if not out.endswith(".npy"):
        raise FactoryError(f"--out must end with .npy, got {out!r}")
    if dim is None:
        from factory.generators import load_generator

        dim = load_generator(generator, device="cpu", **({"weights": weights} if weights else {})).dim_z
    arr = random_directions(n, dim, seed)
    atomic_save_npy(Path(out), arr)
    return arr


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


def auto_names(gen, dirs: np.ndarray) -> list[str | None]:
    """Names of candidates parallel (|cos| > 0.9999) to the generator's named directions, if it has any."""
    named = gen.named_directions() if hasattr(gen, "named_directions") else {}
    out: list[str | None] = [None] * dirs.shape[0]
    for name, v in named.items():
        v = np.asarray(v, np.float64)
        cos = dirs.astype(np.float64) @ (v / np.linalg.norm(v))
        for i in np.nonzero(np.abs(cos) > 0.9999)[0]:
            out[int(i)] = name if cos[i] > 0 else f"-{name}"
    return out


def chunk_size(k: int, batch: int, resolution: int, budget: int = _PIXEL_BUDGET) -> int:
    """Candidates rendered at once so that ``chunk * batch * resolution**2 <= budget`` (at least 1)."""
    return max(1, min(k, budget // max(1, batch * resolution * resolution)))


def render_shifted(gen, z: torch.Tensor, dirs: torch.Tensor, scale: float) -> torch.Tensor:
    """``G(z + scale h_k)`` for every candidate row of ``dirs [k,D]`` and latent of ``z [B,D]`` -> ``[k,B,3,H,W]``."""
    k, B = dirs.shape[0], z.shape[0]
    zz = (z[None] + scale * dirs[:, None]).reshape(k * B, -1)
    x = gen(zz)
    return x.view(k, B, *x.shape[1:])
