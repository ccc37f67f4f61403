"""Latent sources. Sample i's latent depends only on (source, seed, i).

Latents are drawn in fixed blocks of BLOCK rows, each from its own seeded
generator, so any range of rows can be produced without the rows before it and
independently of batch size, shard size or worker count.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from factory import embeddings
from factory.errors import FactoryError
from factory.fsio import load_npy_matrix, read_npy, sha256_file

BLOCK = 1024
_TAG = {"gaussian": 1, "embeddings": 2}


@dataclass(frozen=True)
class LatentSource:
    """A reproducible source of latents. `describe()` goes into the dataset spec."""

    kind: str  # gaussian | embeddings | file
    dim_z: int
    seed: int = 0
    path: str | None = None  # embeddings or latents file (resolved local path / zarr URL)
    name: str | None = None  # embeddings store name, when used
    z_noise: float = 0.0
    sha256: str | None = None
    rows_available: int | None = None
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def __getstate__(self):  # never ship a loaded matrix to dask workers
        state = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "_cache"}
        return state

    def __setstate__(self, state):
        for k, v in state.items():
            object.__setattr__(self, k, v)
        object.__setattr__(self, "_cache", {})

    def describe(self) -> dict:
        d = {"kind": self.kind, "seed": self.seed, "dim_z": self.dim_z}
        if self.kind == "embeddings":
            d.update(name=self.name, sha256=self.sha256, rows=self.rows_available, z_noise=self.z_noise)
        elif self.kind == "file":
            d.update(sha256=self.sha256, rows=self.rows_available)
        return d

    # -- data
    def _matrix(self) -> np.ndarray:
        if "m" not in self._cache:
            if self.path is None:
                raise FactoryError("latent source has no file")
            if self.path.endswith(".npy"):
                self._cache["m"] = read_npy(self.path, mmap=True)  # checked by from_file
            else:
                import zarr

                self._cache["m"] = zarr.open_array(self.path, mode="r")[:]
        return self._cache["m"]

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


def from_file(path: str, dim_z: int) -> LatentSource:
    """Row i of a checked float .npy [N, dim_z] is sample i's latent."""
    arr = load_npy_matrix(path, "latents", dim_z)
    return LatentSource("file", dim_z, 0, path=os.path.abspath(path), sha256=sha256_file(path), rows_available=arr.shape[0])


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
