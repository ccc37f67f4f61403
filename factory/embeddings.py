"""Named embedding stores: [N, dim_z] latents of real images (the paper's E-BigBiGAN).

Stored as compressed zarr arrays under $FACTORY_HOME/embeddings/NAME.zarr with
their shape, dtype and the source file's sha256 as attributes.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from factory import format as fmt
from factory.errors import FactoryError
from factory.fsio import factory_home, load_npy_matrix, sha256_file

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

HOW_TO_IMPORT = (
    "import a set with `factory embeddings import FILE.npy --name NAME`, e.g. the paper authors' "
    "BigBiGAN_ImageNet_z.npy: `factory embeddings import BigBiGAN_ImageNet_z.npy --name imagenet`"
)


def store_dir() -> Path:
    return factory_home() / "embeddings"


@dataclass(frozen=True)
class EmbeddingRef:
    name: str
    path: str
    shape: tuple[int, int]
    sha256: str


def import_npy(path: str, name: str, overwrite: bool = False) -> EmbeddingRef:
    """Store FILE.npy as a compressed zarr array named `name`."""
    import numcodecs
    import zarr

    if not _NAME.match(name):
        raise FactoryError(f"embedding name {name!r} must be 1-64 letters, digits, '_', '-' or '.'")
    arr = load_npy_matrix(path, "embeddings")
    digest = sha256_file(path)
    dest = store_dir() / f"{name}.zarr"
    if dest.exists():
        existing = _ref(dest)
        if existing.sha256 == digest:
            return existing
        if not overwrite:
            raise FactoryError(
                f"embeddings {name!r} already exist with other content ({existing.sha256[:12]}); "
                "choose another --name or pass --overwrite"
            )
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{name}.zarr.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    rows = min(arr.shape[0], 65536)
    z = zarr.create_array(
        store=str(tmp), shape=arr.shape, chunks=(rows, arr.shape[1]), dtype="float32",
        zarr_format=2, compressors=numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE),
        fill_value=0.0,
    )
    for i in range(0, arr.shape[0], rows):
        z[i : i + rows] = np.asarray(arr[i : i + rows], dtype=np.float32)
    z.attrs.update(
        {"source": os.path.basename(path), "source_sha256": digest, "shape": list(arr.shape),
         "source_dtype": str(arr.dtype), "dtype": "float32"}
    )
    os.replace(tmp, dest)
    return _ref(dest)


def _ref(path: Path) -> EmbeddingRef:
    import zarr

    z = zarr.open_array(str(path), mode="r")
    return EmbeddingRef(path.name[: -len(".zarr")], str(path), tuple(z.shape), z.attrs.get("source_sha256", ""))


def list_embeddings() -> list[EmbeddingRef]:
    d = store_dir()
    if not d.is_dir():
        return []
    return [_ref(p) for p in sorted(d.glob("*.zarr")) if not p.name.startswith(".")]


def resolve(name_or_path: str) -> EmbeddingRef:
    """A stored name, a .npy file, or a zarr array path."""
    p = Path(name_or_path)
    if name_or_path.endswith(".npy"):
        arr = load_npy_matrix(name_or_path, "embeddings")
        return EmbeddingRef(p.stem, str(p.resolve()), tuple(arr.shape), sha256_file(name_or_path))
    if p.suffix == ".zarr" or (p.is_dir() and ((p / ".zarray").exists() or (p / "zarr.json").exists())):
        if not p.exists():
            raise FactoryError(f"embeddings array not found: {name_or_path}")
        import zarr

        try:
            z = zarr.open_array(str(p), mode="r")
        except Exception as e:  # zarr raises several types for a non-array folder
            raise FactoryError(f"{name_or_path} is not a zarr array: {e}") from None
        if z.ndim != 2 or np.dtype(z.dtype).kind != "f":
            raise FactoryError(f"embeddings {name_or_path} must be a float [N, dim_z] array, got {z.dtype} {z.shape}")
        data = z[:]
        if not np.isfinite(data).all():
            raise FactoryError(f"embeddings {name_or_path} hold NaN or inf")
        digest = z.attrs.get("source_sha256") or fmt.sha256_bytes(np.ascontiguousarray(data, np.float32).tobytes())
        return EmbeddingRef(p.stem, str(p.resolve()), tuple(z.shape), digest)
    dest = store_dir() / f"{name_or_path}.zarr"
    if dest.exists():
        return _ref(dest)
    known = ", ".join(r.name for r in list_embeddings()) or "none"
    raise FactoryError(f"unknown embeddings {name_or_path!r} (known: {known}); {HOW_TO_IMPORT}")
