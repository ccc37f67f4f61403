"""Reading latent-direction files: `.npy` arrays and torch tensor files (the authors' bg_direction.pth).

A direction is returned as float32 [dim_z] exactly as stored (no renormalisation: the
authors shift by r * h with their h as published). Every failure is one-line FactoryError
naming the file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from factory.format import FactoryError
from factory.fsio import ReadError, read_npy, read_torch_file


def _from_torch(path: Path):
    import torch

    try:
        obj = read_torch_file(path)
    except ReadError as e:
        first = e.first_line(160)
        if e.reason == "objects":
            raise FactoryError(
                f"{path}: not a plain tensor file: its pickle references code or objects other than tensors, "
                f"refused by weights_only loading ({first})"
            ) from None
        raise FactoryError(f"{path}: unreadable direction file ({type(e.cause).__name__}: {first})") from None
    if isinstance(obj, dict) and len(obj) == 1:
        (obj,) = obj.values()  # a one-entry dict holding the tensor
    if not isinstance(obj, torch.Tensor):
        raise FactoryError(f"{path}: expected a tensor, the file holds a {type(obj).__name__}")
    if not (obj.is_floating_point()):
        raise FactoryError(f"{path}: expected a floating-point tensor, got dtype {obj.dtype}")
    return obj.detach().to(dtype=torch.float64).numpy()


def read_numeric_npy(path: str | Path, what: str = "direction") -> np.ndarray:
    """A plain numeric .npy (never pickle) as float64, or a one-line FactoryError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FactoryError(f"{what} file not found: {path}")
    try:
        arr = read_npy(path)
    except ReadError as e:
        if e.reason in ("objects", "invalid"):  # object arrays need pickle
            raise FactoryError(
                f"{path}: not a plain numeric .npy array ({e.first_line(160)}); save a float32 array with np.save"
            ) from None
        if e.reason == "archive":
            raise FactoryError(f"{path}: is an .npz archive; save the {what} array alone with np.save") from None
        raise FactoryError(f"{path}: unreadable .npy file ({type(e.cause).__name__}: {e.cause})") from None
    if arr.dtype.kind not in "fiu":
        raise FactoryError(f"{path}: expected a numeric {what} array, got dtype {arr.dtype}")
    return np.asarray(arr, dtype=np.float64)


def load_direction_file(path: str | Path, dim_z: int) -> np.ndarray:
    """Read a latent direction: `.npy` (allow_pickle=False) or a torch file (weights_only=True).

    Accepts shapes [dim_z] and [1, dim_z]; returns float32 [dim_z].
    """
    path = Path(path)
    if not path.is_file():
        raise FactoryError(f"direction file not found: {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise FactoryError(f"{path}: unreadable direction file ({e.strerror or e})") from None
    if not head:
        raise FactoryError(f"{path}: empty file, not a direction")
    if head.startswith(b"\x93NUMPY"):
        arr = read_numeric_npy(path)
    elif head.startswith(b"PK\x03\x04"):
        if path.suffix == ".npz":
            raise FactoryError(f"{path}: is an .npz archive; save the direction alone with np.save")
        arr = _from_torch(path)
    elif head[:1] == b"\x80":
        arr = _from_torch(path)
    else:
        raise FactoryError(f"{path}: not a .npy or torch tensor file (first bytes {head!r})")
    shape = tuple(arr.shape)
    if shape == (1, dim_z):
        arr = arr[0]
    elif arr.ndim == 1 and shape != (dim_z,) or arr.ndim == 2 and shape[0] == 1:
        raise FactoryError(
            f"{path}: direction has width {shape[-1]}, the generator's dim_z is {dim_z}"
        )
    elif shape != (dim_z,):
        raise FactoryError(f"{path}: direction shape {list(shape)}; expected [{dim_z}] or [1, {dim_z}]")
    if not np.all(np.isfinite(arr)):
        raise FactoryError(f"{path}: direction contains NaN or inf")
    if not np.any(arr):
        raise FactoryError(f"{path}: direction is all zeros")
    return arr.astype(np.float32)
