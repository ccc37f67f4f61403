"""The `shapes` world's "photographs", "encoder" and named directions, as files.

- ``export`` writes a small benchmark in the ECSSD layout (``images/NNNN.png``,
  ``ground_truth_mask/NNNN.png`` with 0/255 masks, same 1-based stems) plus
  ``embeddings.npy`` [N, dim_z] float32: the latents of those images, i.e. what a
  perfect encoder of the world returns. The photographs are drawn from the
  world's *embedding distribution*, not N(0, I): like real photographs encoded by
  BigBiGAN, they have fewer failures (contrast up, close-ups and responsive spots
  rarer) and other texture statistics. Sampling near the embeddings
  (``rows + alpha * N(0, I)``) therefore gives better masks than N(0, I), as in
  the paper. ``testworld.json`` beside them records the generator identity.
- ``directions`` writes the named directions [K, dim_z] float32 to FILE.npy and
  their names, in row order, to FILE.json.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from factory.format import FactoryError
from factory.fsio import atomic_json, atomic_save_npy
from factory.generators import load_generator, to_uint8
from factory.generators.shapes import COORD, DIRECTION_NAMES, N_COORDS, ShapesWorld

# Embedding distribution: per-coordinate (mean, std) that differ from N(0, 1);
# every other coordinate of c = z @ Q stays N(0, 1).
EMBEDDING_SHIFTS: dict[str, tuple[float, float]] = {
    "contrast": (1.0, 0.8),  # washed-out photographs are rare
    "size": (-0.35, 0.8),  # fewer close-ups
    "spots": (-0.7, 0.8),  # fewer responsive spots
    "bg_tex_amp": (-0.5, 0.8),  # calmer backgrounds
    "mix_noise": (0.8, 1.0),  # more smooth-noise backgrounds, fewer stripes
    "mix_stripes": (-0.5, 1.0),
}


def sample_embedding_latents(gen: ShapesWorld, n: int, seed: int) -> np.ndarray:
    """``n`` latents [n, dim_z] float32 from the world's embedding distribution (deterministic in ``seed``)."""
    rng = np.random.default_rng([int(seed), 0xE4BED])
    c = rng.standard_normal((n, gen.dim_z))
    for name, (mu, sd) in EMBEDDING_SHIFTS.items():
        c[:, COORD[name]] = mu + sd * c[:, COORD[name]]
    basis = gen.basis.astype(np.float64)  # orthonormal: z = Q c  <=>  c = Q^T z
    return (c @ basis.T).astype(np.float32)


def _stem(i: int, n: int) -> str:
    return f"{i + 1:0{max(4, len(str(n)))}d}"  # 1-based, 4 digits like ECSSD


def _check_n_seed(n, seed) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise FactoryError(f"n must be a positive integer (number of images), got {n!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise FactoryError(f"seed must be a non-negative integer, got {seed!r}")


def export(n: int, seed: int, resolution: int = 128, out_dir: str | os.PathLike = "testworld",
           *, world_seed: int = 0, batch_size: int = 64) -> Path:
    """Write ``n`` photographs of the world in the ECSSD layout under ``out_dir``; return the folder.

    The folder must not exist or be empty. Everything is written to a temporary
    sibling folder and renamed at the end, so a crash leaves no half-written export.
    """
    from PIL import Image

    _check_n_seed(n, seed)
    if resolution not in (64, 128):
        raise FactoryError(f"resolution must be 64 or 128, got {resolution!r}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FactoryError(f"output {out} already exists and is not an empty folder; choose a new --out")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    except OSError as e:
        raise FactoryError(f"cannot write under {parent} ({e.strerror or e}); choose a writable --out") from None
    try:
        gen = load_generator("shapes", resolution=resolution, seed=world_seed)
        z = sample_embedding_latents(gen, n, seed)
        (tmp / "images").mkdir()
        (tmp / "ground_truth_mask").mkdir()
        with torch.inference_mode():
            for lo in range(0, n, batch_size):
                zb = torch.from_numpy(z[lo : lo + batch_size])
                img, mask = gen.render(zb)
                img8 = to_uint8(img).cpu().numpy()
                m8 = mask.cpu().numpy().astype(np.uint8) * 255
                for j in range(img8.shape[0]):
                    stem = _stem(lo + j, n)
                    Image.fromarray(img8[j]).save(tmp / "images" / f"{stem}.png")
                    Image.fromarray(m8[j]).save(tmp / "ground_truth_mask" / f"{stem}.png")
        np.save(tmp / "embeddings.npy", z)
        info = {
            "kind": "shapes-testworld",
            "generator": gen.identity(),
            "n": n,
            "seed": seed,
            "latents": "embeddings.npy rows i -> images/{stem}.png with stem = i+1 zero-padded to 4 digits",
            "embedding_distribution": {k: {"mean": m, "std": s} for k, (m, s) in EMBEDDING_SHIFTS.items()},
        }
        (tmp / "testworld.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FactoryError(f"cannot write the export to {out} ({e.strerror or e}); choose a writable --out") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def directions(out_path: str | os.PathLike, *, world_seed: int = 0, dim_z: int = 120) -> tuple[Path, Path]:
    """Write the named directions [K, dim_z] float32 to ``out_path`` (.npy) and their names to the .json beside it."""
    out = Path(out_path)
    if out.suffix != ".npy":
        raise FactoryError(f"directions output must end in .npy, got {str(out)!r}")
    gen = ShapesWorld(resolution=8, dim_z=dim_z, seed=world_seed)
    named = gen.named_directions()
    names = list(DIRECTION_NAMES)
    arr = np.stack([named[k] for k in names]).astype(np.float32)
    meta = out.with_suffix(".json")
    doc = {"names": names, "generator": {**gen.identity(), "resolution": None}, "shape": list(arr.shape)}
    try:
        atomic_save_npy(out, arr)
        atomic_json(meta, doc)
    except OSError as e:
        raise FactoryError(f"cannot write {out} ({e.strerror or e}); choose a writable --out") from None
    return out, meta


__all__ = ["export", "directions", "sample_embedding_latents", "EMBEDDING_SHIFTS", "N_COORDS"]
