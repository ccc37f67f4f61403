"""Latent sources. Sample i's latent depends only on (source, seed, i).

Latents are drawn in fixed blocks of BLOCK rows, each from its own seeded
generator, so any range of rows can be produced without the rows before it and
independently of batch size, shard size or worker count.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from factory import format as fmt
from factory.format import FactoryError
from factory.fsio import fetch_copy, is_url, load_npy_matrix, local_copy, read_npy
from factory.latents import embeddings

BLOCK = 1024
_TAG = {"gaussian": 1, "embeddings": 2, "truncated": 3}

# The matrix each process reads rows from, opened once: (path or URL, sha256) -> array (a memmap for .npy).
_MATRICES: dict = {}


def open_matrix(path: str, sha256: str | None) -> np.ndarray:
    """The [N, dim_z] matrix behind a latent source, opened once per process and checked against
    its sha256: a .npy (local, or a URL copied once per host by `fsio.local_copy`) memory-mapped,
    a zarr array (local or URL) read whole."""
    key = (path, sha256)
    if key not in _MATRICES:
        if path.endswith(".npy"):
            m = read_npy(local_copy(path, sha256), mmap=True)  # checked in the client by load_npy_matrix
        else:
            m = _read_zarr(path, sha256)
        _MATRICES.clear()  # one job's matrix per process
        _MATRICES[key] = m
    return _MATRICES[key]


def _read_zarr(path: str, sha256: str | None) -> np.ndarray:
    import zarr

    if not is_url(path) and not os.path.exists(path):
        raise FactoryError(f"embeddings array not found on this worker: {path}; import the store on every worker "
                           "or pass --embeddings s3://.../FILE.npy (or a shared path) that every worker reads")
    z = zarr.open_array(path, mode="r")
    data = z[:]
    got = z.attrs.get("source_sha256") or fmt.sha256_bytes(np.ascontiguousarray(data, np.float32).tobytes())
    if sha256 and got != sha256:
        raise FactoryError(f"embeddings {path} have sha256 {got[:12]}, the job expects {sha256[:12]}; "
                           "the store changed since the job started")
    return data


@dataclass(frozen=True)
class LatentSource:
    """A reproducible source of latents: a small spec (kind, seed, noise; for a file its path or URL and
    sha256), so it travels with every task. `describe()` goes into the dataset spec."""

    kind: str  # gaussian | truncated | embeddings | file
    dim_z: int
    seed: int = 0
    path: str | None = None  # embeddings or latents file: local path or fsspec URL
    name: str | None = None  # embeddings store name, when used
    z_noise: float = 0.0
    sha256: str | None = None
    rows_available: int | None = None
    bound: float = 0.0  # truncated: scale * TruncatedNormal(-bound, bound)
    scale: float = 1.0

    def describe(self) -> dict:
        d = {"kind": self.kind, "seed": self.seed, "dim_z": self.dim_z}
        if self.kind == "truncated":
            d.update(bound=self.bound, scale=self.scale)
        elif self.kind == "embeddings":
            d.update(name=self.name, sha256=self.sha256, rows=self.rows_available, z_noise=self.z_noise)
        elif self.kind == "file":
            d.update(sha256=self.sha256, rows=self.rows_available)
        return d

    # -- data
    def _matrix(self) -> np.ndarray:
        if self.path is None:
            raise FactoryError("latent source has no file")
        return open_matrix(self.path, self.sha256)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Latents of samples [start, stop) as float32 [stop - start, dim_z]."""
        if stop <= start:
            return np.zeros((0, self.dim_z), np.float32)
        if self.kind == "file":
            m = self._matrix()
            if stop > m.shape[0]:
                raise FactoryError(f"latents file has {m.shape[0]} rows; sample {stop - 1} was asked for")
            return np.array(m[start:stop], dtype=np.float32, copy=True)
        out = np.empty((stop - start, self.dim_z), np.float32)
        b0, b1 = start // BLOCK, (stop - 1) // BLOCK
        for b in range(b0, b1 + 1):
            block = self._block(b)
            lo, hi = max(start, b * BLOCK), min(stop, (b + 1) * BLOCK)
            out[lo - start : hi - start] = block[lo - b * BLOCK : hi - b * BLOCK]
        return out

    def _block(self, b: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, _TAG[self.kind], b])
        if self.kind == "gaussian":
            return rng.standard_normal((BLOCK, self.dim_z), dtype=np.float32)
        if self.kind == "truncated":
            return truncated_block(rng, (BLOCK, self.dim_z), self.bound) * np.float32(self.scale)
        m = self._matrix()
        idx = rng.integers(0, m.shape[0], size=BLOCK)
        noise = rng.standard_normal((BLOCK, self.dim_z), dtype=np.float32)
        order = np.argsort(idx, kind="stable")  # sorted reads are far faster on memmaps
        rows = np.empty((BLOCK, self.dim_z), np.float32)
        rows[order] = np.asarray(m[idx[order]], dtype=np.float32)
        if self.z_noise:
            rows += np.float32(self.z_noise) * noise
        return rows


def gaussian(dim_z: int, seed: int) -> LatentSource:
    """N(0, I) latents drawn block by block from ``seed``."""
    return LatentSource("gaussian", dim_z, seed)


def truncated(dim_z: int, seed: int, *, bound: float, scale: float) -> LatentSource:
    """``scale * TruncatedNormal(-bound, bound)`` latents drawn block by block from ``seed`` (BigGAN's truncation trick)."""
    if not (np.isfinite(bound) and bound > 0 and np.isfinite(scale) and scale > 0):
        raise FactoryError(f"truncated latents need bound > 0 and scale > 0, got bound={bound}, scale={scale}")
    return LatentSource("truncated", dim_z, seed, bound=float(bound), scale=float(scale))


def truncated_block(rng: np.random.Generator, shape: tuple, bound: float) -> np.ndarray:
    """Standard normal values with every |x| > bound redrawn (from the same generator) until none is left."""
    out = rng.standard_normal(shape, dtype=np.float32)
    bad = np.abs(out) > bound
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()), dtype=np.float32)
        bad = np.abs(out) > bound
    return out


def from_file(path: str, dim_z: int) -> LatentSource:
    """Row i of a checked float .npy [N, dim_z] (a local path or an fsspec URL) is sample i's latent."""
    if is_url(path):
        local, digest = fetch_copy(path)
        arr = load_npy_matrix(local, "latents", dim_z)
        where = path
    else:
        arr = load_npy_matrix(path, "latents", dim_z)
        where, digest = fetch_copy(os.path.abspath(path))
    return LatentSource("file", dim_z, 0, path=where, sha256=digest, rows_available=arr.shape[0])


def from_embeddings(name_or_path: str, dim_z: int, seed: int, z_noise: float) -> LatentSource:
    """Rows drawn (with replacement, seeded per block) from a stored embedding set, plus ``z_noise`` N(0, I)."""
    if not np.isfinite(z_noise) or z_noise < 0:
        raise FactoryError(f"--z-noise must be a finite number >= 0, got {z_noise}")
    ref = embeddings.resolve(name_or_path)
    if ref.shape[1] != dim_z:
        raise FactoryError(
            f"embeddings {name_or_path!r} have width {ref.shape[1]} but the generator's dim_z is {dim_z}; "
            "use embeddings made by this generator's encoder"
        )
    return LatentSource(
        "embeddings", dim_z, seed, path=ref.path, name=ref.name, z_noise=float(z_noise),
        sha256=ref.sha256, rows_available=ref.shape[0],
    )


def file_rows(path: str) -> int | None:
    """Rows of a .npy latents file (local path or URL) from its header alone; None when the header is
    unreadable (the full check of `from_file` then names the problem)."""
    read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    fs, where = fmt.get_fs(path)
    try:
        with fs.open(where, "rb") as f:
            version = np.lib.format.read_magic(f)
            shape, _, _ = read_header[version](f)
    except (OSError, ValueError, EOFError, KeyError):
        return None
    return int(shape[0]) if len(shape) == 2 else None
