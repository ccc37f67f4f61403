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
from factory.format import FactoryError
from factory.fsio import (
    atomic_save_npy,
    exists,
    factory_home,
    fetch_copy,
    is_url,
    load_npy_matrix,
    sha256_file,
)

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
    check_name(name)
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
    return write_store(dest, arr, attrs={"source": os.path.basename(path), "source_sha256": digest,
                                         "source_dtype": str(arr.dtype)})


def write_store(dest: Path, arr: np.ndarray, *, attrs: dict, rows: dict | None = None) -> EmbeddingRef:
    """Write ``arr`` [N, dim_z] (any float array, a memmap included: copied in chunks) as the float32
    zarr store ``dest`` with ``attrs`` (source_sha256 among them) and, when given, the per-row table
    ``rows`` as dest/ROWS_FILE. Built under a temporary name: the store appears complete or not at all."""
    import numcodecs
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zarr

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    chunk = min(arr.shape[0], 65536)
    z = zarr.create_array(
        store=str(tmp), shape=arr.shape, chunks=(chunk, arr.shape[1]), dtype="float32",
        zarr_format=2, compressors=numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE),
        fill_value=0.0,
    )
    for i in range(0, arr.shape[0], chunk):
        z[i : i + chunk] = np.asarray(arr[i : i + chunk], dtype=np.float32)
    z.attrs.update({**attrs, "shape": list(arr.shape), "dtype": "float32"})
    if rows is not None:
        pq.write_table(pa.table(rows), str(tmp / ROWS_FILE))
    if dest.exists():
        shutil.rmtree(dest)
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
    """A stored name, a .npy file or a zarr array: a local path or an fsspec URL (s3://, gs://, ...).

    The name is the file's stem and the digest its sha256, so the same file read from a URL or a
    local path gives the same spec; workers open the path or URL themselves (`sources.open_matrix`)."""
    p = Path(name_or_path)
    remote = is_url(name_or_path)
    where = name_or_path if remote else str(p.resolve())
    if name_or_path.endswith(".npy"):
        if remote:
            local, digest = fetch_copy(name_or_path)
            arr = load_npy_matrix(local, "embeddings")
        else:
            arr = load_npy_matrix(name_or_path, "embeddings")
            where, digest = fetch_copy(where)
        return EmbeddingRef(p.stem, where, tuple(arr.shape), digest)
    if p.suffix == ".zarr" or (not remote and p.is_dir() and ((p / ".zarray").exists() or (p / "zarr.json").exists())):
        if not (exists(name_or_path) if remote else p.exists()):
            raise FactoryError(f"embeddings array not found: {name_or_path}")
        import zarr

        try:
            z = zarr.open_array(name_or_path if remote else str(p), mode="r")
        except Exception as e:  # zarr raises several types for a non-array folder
            raise FactoryError(f"{name_or_path} is not a zarr array: {e}") from None
        if z.ndim != 2 or np.dtype(z.dtype).kind != "f":
            raise FactoryError(f"embeddings {name_or_path} must be a float [N, dim_z] array, got {z.dtype} {z.shape}")
        data = z[:]
        if not np.isfinite(data).all():
            raise FactoryError(f"embeddings {name_or_path} hold NaN or inf")
        digest = z.attrs.get("source_sha256") or fmt.sha256_bytes(np.ascontiguousarray(data, np.float32).tobytes())
        return EmbeddingRef(p.stem, where, tuple(z.shape), digest)
    dest = store_dir() / f"{name_or_path}.zarr"
    if dest.exists():
        return _ref(dest)
    known = ", ".join(r.name for r in list_embeddings()) or "none"
    raise FactoryError(f"unknown embeddings {name_or_path!r} (known: {known}); {HOW_TO_IMPORT}")


# ------------------------------------------------------------- stores written by `embeddings invert`

ROWS_FILE = "rows.parquet"  # per-row table beside the array, inside NAME.zarr (zarr ignores it)


def check_name(name: str) -> None:
    """FactoryError unless `name` is a valid store name."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise FactoryError(f"embedding name {name!r} must be 1-64 letters, digits, '_', '-' or '.'")


def stored(name: str) -> bool:
    return (store_dir() / f"{name}.zarr").exists()


def store_rows(name: str, arr: np.ndarray, *, attrs: dict, rows: dict | None = None,
               overwrite: bool = False) -> EmbeddingRef:
    """Store `arr` [N, dim_z] as NAME.zarr (float32, content-addressed: source_sha256 is the sha256 of
    its float32 bytes) with `attrs` and, when given, the per-row table `rows` (column -> N values)
    as NAME.zarr/rows.parquet; the store appears under its name complete or not at all."""
    check_name(name)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] == 0 or not np.isfinite(arr).all():
        raise FactoryError(f"embeddings {name!r}: need a finite float [N, dim_z] array, got shape {arr.shape}")
    dest = store_dir() / f"{name}.zarr"
    if dest.exists() and not overwrite:
        raise FactoryError(f"embeddings {name!r} already exist; choose another --name or pass --overwrite")
    return write_store(dest, arr, attrs={**attrs, "source_sha256": fmt.sha256_bytes(arr.tobytes())}, rows=rows)


def read_store(name_or_path: str) -> tuple[np.ndarray, EmbeddingRef]:
    """The rows [N, dim_z] float32 of a stored name, .npy or zarr array, and its reference."""
    import zarr

    ref = resolve(name_or_path)
    if ref.path.endswith(".npy"):
        return np.asarray(load_npy_matrix(ref.path, "embeddings"), dtype=np.float32), ref
    return np.asarray(zarr.open_array(ref.path, mode="r")[:], dtype=np.float32), ref


def read_rows(name_or_path: str) -> dict | None:
    """The per-row table (file, sha256, mse, psnr) of an inverted store, or None for other stores."""
    import pyarrow.parquet as pq

    ref = resolve(name_or_path)
    p = Path(ref.path) / ROWS_FILE
    return pq.read_table(str(p)).to_pydict() if p.exists() else None


def export_npy(name_or_path: str, out: str) -> tuple[Path, EmbeddingRef]:
    """Write a store's rows to `out` (.npy, float32, atomically), e.g. to share or to pass as --latents."""
    if not str(out).endswith(".npy"):
        raise FactoryError(f"--out must end in .npy, got {out!r}")
    arr, ref = read_store(name_or_path)
    try:
        atomic_save_npy(out, arr)
    except OSError as e:
        raise FactoryError(f"cannot write {out} ({e.strerror or e}); choose a writable --out") from None
    return Path(out), ref
