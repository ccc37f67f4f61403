"""The latent map of `factory browse`: a 2-D projection of the latents of a dataset's (or view's) rows.

PCA by default (numpy, two streamed passes over ``latents.zarr``: mean and covariance (float32 products
summed in float64), then the projection
onto the two leading components, each component's sign fixed so its largest coefficient is positive); UMAP
(umap-learn, seeded) when installed and asked for. A projection is computed once and cached outside the
dataset, under ``$FACTORY_HOME/browse-maps/DATASET_ID/VIEW_ID-METHOD.npy`` (float32, one x, y per input row
in row order). The page draws at most `MAX_POINTS` points, a deterministic sample of the rows (all of them
below that).
"""
from __future__ import annotations

import base64
import contextlib
import importlib.util
import os

import numpy as np

from factory import fsio
from factory.dataset.shards import open_latents
from factory.format import FactoryError

MAX_POINTS = 100_000
BLOCK = 1 << 16  # latent rows read at a time


def methods() -> list[str]:
    return ["pca"] + (["umap"] if importlib.util.find_spec("umap") is not None else [])


def cache_path(dataset_id: str, view_id: str | None, method: str) -> str:
    return os.path.join(fsio.factory_home(), "browse-maps", dataset_id, f"{view_id or 'dataset'}-{method}.npy")


def _blocks(z, rows: np.ndarray):
    """(slice of `rows`, their latents as float32) a block of latent rows at a time (rows sorted)."""
    i = 0
    while i < rows.size:
        a = int(rows[i])
        j = int(np.searchsorted(rows, a + BLOCK))
        chunk = np.asarray(z[a:int(rows[j - 1]) + 1], np.float32)
        yield slice(i, j), chunk[rows[i:j] - a]
        i = j


def one_thread():
    """BLAS on one thread where threadpoolctl is installed: the same floats on every machine, and no
    threads spinning against each other on a busy one (20x slower there)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1)


def pca(z, rows: np.ndarray) -> np.ndarray:
    """The rows' latents projected on their two leading principal components (float32, n x 2)."""
    with one_thread():
        return _pca(z, rows)


def _pca(z, rows: np.ndarray) -> np.ndarray:
    d = int(z.shape[1])
    n = rows.size
    s, ss, shift = np.zeros(d), np.zeros((d, d)), None
    for _, x in _blocks(z, rows):  # float32 products of rows centred on the first block's mean, summed in float64
        if shift is None:
            shift = x.mean(0)
        x = x - shift
        s += x.sum(0, dtype=np.float64)
        ss += (x.T @ x).astype(np.float64)
    shift = np.zeros(d, np.float32) if shift is None else shift
    mean = s / max(1, n)
    cov = ss / max(1, n) - np.outer(mean, mean)
    mu = (mean + shift).astype(np.float32)
    w, v = np.linalg.eigh(cov)
    comp = v[:, np.argsort(w)[::-1][:2]]
    if comp.shape[1] < 2:
        comp = np.pad(comp, ((0, 0), (0, 2 - comp.shape[1])))
    comp *= np.where(comp[np.abs(comp).argmax(0), range(2)] < 0, -1.0, 1.0)
    out = np.zeros((n, 2), np.float32)
    for sl, x in _blocks(z, rows):
        out[sl] = (x - mu) @ comp.astype(np.float32)
    return out


def umap(z, rows: np.ndarray) -> np.ndarray:
    import umap as umap_learn

    x = np.concatenate([b for _, b in _blocks(z, rows)]) if rows.size else np.zeros((0, z.shape[1]))
    return umap_learn.UMAP(n_components=2, random_state=0).fit_transform(x).astype(np.float32)


def projection(root: str, rows: np.ndarray, *, dataset_id: str, view_id: str | None, method: str) -> np.ndarray:
    """x, y of each of `rows` (sorted), from the cache or computed and cached."""
    if method not in methods():
        raise FactoryError(f"map method {method!r}: use one of {', '.join(methods())} (umap needs: pip install "
                           "umap-learn)")
    path = cache_path(dataset_id, view_id, method)
    try:
        xy = fsio.read_npy(path)
        if xy.shape == (rows.size, 2) and xy.dtype == np.float32:
            return xy
    except fsio.ReadError:
        pass
    try:
        z = open_latents(root)
    except Exception as e:  # noqa: BLE001 - zarr raises several types for a missing array
        raise FactoryError(f"no latent map: {root}/latents.zarr cannot be read ({type(e).__name__}); "
                           "run factory verify") from None
    xy = (pca if method == "pca" else umap)(z, rows)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fsio.atomic_save_npy(path, xy)
    except OSError:
        pass  # a read-only home: the map is computed again next time
    return xy


def sample(n: int) -> np.ndarray:
    """Positions drawn among n rows: all below MAX_POINTS, else a seeded sample (sorted)."""
    if n <= MAX_POINTS:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, MAX_POINTS, replace=False))


def b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()


def colours(values: np.ndarray, kind: str) -> dict:
    """A column's values at the map's points as the page colours them: numbers as float32 (NaN missing),
    anything else as category codes with their labels (the 20 most common, the rest one "other")."""
    if kind in ("number", "bool"):
        x = values.astype(np.float64)
        ok = np.isfinite(x)
        lo, hi = (float(x[ok].min()), float(x[ok].max())) if ok.any() else (0.0, 1.0)
        return {"kind": kind, "min": lo, "max": hi, "values": b64(x.astype("<f4"))}
    labels, codes, counts = np.unique(values.astype(str), return_inverse=True, return_counts=True)
    top = np.argsort(-counts, kind="stable")[:20]
    remap = np.full(labels.size, len(top), np.float32)
    remap[top] = np.arange(len(top))
    names = [str(labels[i]) for i in top] + (["other"] if labels.size > len(top) else [])
    return {"kind": "category", "labels": names, "min": 0.0, "max": float(max(1, len(names) - 1)),
            "values": b64(remap[codes].astype("<f4"))}
