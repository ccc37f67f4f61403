"""Shard writer: tar (WebDataset) + Parquet index fragment + latents.zarr rows, committed atomically.

Commit order for shard k: tar, index fragment and latent rows under their final
names (each written to a temp name, fsynced, renamed on local disks; a single
object PUT on object stores, which is atomic), then the sidecar done/k.json.
A shard without its sidecar does not exist: resume looks at sidecars only.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
from dataclasses import dataclass

import numpy as np

from factory import format as fmt


# ---------------------------------------------------------------- storage

def is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def atomic_write(url: str, data: bytes) -> None:
    """Write bytes so that the final name holds either nothing or all of them."""
    fs, path = fmt.get_fs(url)
    if is_local(fs):
        d = os.path.dirname(path)
        os.makedirs(d, exist_ok=True)
        tmp = os.path.join(d, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:12]}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        _fsync_dir(d)
    else:
        fs.pipe_file(path, data)


def _fsync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def exists(url: str) -> bool:
    fs, path = fmt.get_fs(url)
    return fs.exists(path)


def remove_temp_files(root: str) -> int:
    """Delete temp files a killed writer left behind (local datasets)."""
    fs, path = fmt.get_fs(root)
    if not is_local(fs):
        return 0
    n = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            if f.startswith(".") and ".tmp-" in f:
                os.unlink(os.path.join(dirpath, f))
                n += 1
    return n


# ---------------------------------------------------------------- encoding

def encode_png(arr: np.ndarray, level: int = 1) -> bytes:
    """Deterministic PNG (no timestamps) of uint8 HxW or HxWx3, or of a bool mask (0/255 gray)."""
    from PIL import Image

    if arr.dtype == bool:
        img = Image.fromarray(arr.astype(np.uint8) * 255, mode="L")
    else:
        img = Image.fromarray(arr)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def encode_image(arr: np.ndarray, codec: dict) -> bytes:
    """Deterministic encoding of a uint8 HxWx3 image with the spec's ``image_codec``.

    png: Pillow PNG at ``png_level``; webp: lossless WebP (``method``, ``quality`` = effort);
    jpeg: baseline JPEG at ``quality`` with ``subsampling`` 4:4:4 (lossy). No metadata.
    """
    from PIL import Image

    kind = codec["image"]
    if kind == "png":
        return encode_png(arr, codec["png_level"])
    buf = io.BytesIO()
    if kind == "webp":
        Image.fromarray(arr).save(buf, format="WEBP", lossless=True, method=codec["method"], quality=codec["effort"])
    elif kind == "jpeg":
        Image.fromarray(arr).save(buf, format="JPEG", quality=codec["quality"], subsampling=0)
    else:
        raise ValueError(f"unknown image codec {kind!r}")
    return buf.getvalue()


Z_RLE = 3  # zlib strategy: run-length matches only


def encode_mask_png(mask: np.ndarray) -> bytes:
    """8-bit gray PNG (0/255) of a bool mask: zlib level 9 with the run-length strategy.

    Plain level 9 spends ~8 ms on a 128x128 mask with ragged edges (the lazy match
    search degenerates on long runs of equal bytes); Z_RLE takes ~0.5 ms for files
    of about the same size (benchmarks/encode_bench.py).
    """
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buf, format="PNG", compress_level=9,
                                                                 compress_type=Z_RLE)
    return buf.getvalue()


def encode_npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def tar_records(members: list[tuple[str, bytes]]) -> bytes:
    """The tar records (ustar header + data + padding) of members, with fixed metadata.

    Shards are concatenations of such records plus `tar_end`, so records can be built in
    parallel (per chunk of samples) and joined in order.
    """
    parts = []
    for name, data in members:
        ti = tarfile.TarInfo(name)
        ti.size = len(data)
        ti.mtime = fmt.TAR_MTIME
        ti.mode = 0o644
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        ti.type = tarfile.REGTYPE
        parts.append(ti.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))
        parts.append(data)
        pad = (-len(data)) % tarfile.BLOCKSIZE
        if pad:
            parts.append(b"\0" * pad)
    return b"".join(parts)


def tar_join(records: list[bytes]) -> bytes:
    """A complete tar from member records: two zero blocks, then padding to the 10 KiB record size."""
    body = b"".join(records) + b"\0" * (2 * tarfile.BLOCKSIZE)
    return body + b"\0" * ((-len(body)) % tarfile.RECORDSIZE)


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """A tar with fixed metadata; members in the given (sorted-by-key) order."""
    return tar_join([tar_records(members)])


# ---------------------------------------------------------------- index

def index_table(rows: dict[str, np.ndarray]):
    """Arrow table of one shard's index rows with the contract's types first."""
    import pyarrow as pa

    cols = {}
    for name, typ in fmt.INDEX_COLUMNS.items():
        v = rows[name]
        if name == "hist":
            flat = pa.array(np.asarray(v, np.float32).reshape(-1), pa.float32())
            cols[name] = pa.FixedSizeListArray.from_arrays(flat, fmt.HIST_BINS)
        elif typ == "string":
            cols[name] = pa.array(list(v), pa.string())
        else:
            arrow_type = pa.bool_() if typ == "bool" else getattr(pa, typ)()
            cols[name] = pa.array(np.asarray(v), arrow_type)
    for name in sorted(set(rows) - set(fmt.INDEX_COLUMNS)):
        cols[name] = pa.array(np.asarray(rows[name]))
    return pa.table(cols)


def parquet_bytes(table) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", write_statistics=True)
    return sink.getvalue().to_pybytes()


# ---------------------------------------------------------------- latents.zarr

def open_latents(root: str, mode: str = "r"):
    import zarr

    url = fmt.join(root, fmt.LATENTS)
    return zarr.open_array(url, mode=mode) if fmt.is_remote_url(url) else zarr.open_array(
        fmt.get_fs(url)[1], mode=mode
    )


def create_latents(root: str, n: int, dim_z: int, chunk_rows: int):
    """Create latents.zarr [n, dim_z] with one chunk per shard, so shards never share a chunk."""
    import numcodecs
    import zarr

    url = fmt.join(root, fmt.LATENTS)
    store = url if fmt.is_remote_url(url) else fmt.get_fs(url)[1]
    return zarr.create_array(
        store=store, shape=(n, dim_z), chunks=(chunk_rows, dim_z), dtype="float32", zarr_format=2,
        compressors=numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE),
        fill_value=0.0, overwrite=False,
    )


# ---------------------------------------------------------------- shard commit

@dataclass
class ShardResult:
    shard: int
    path: str
    index: str
    sha256: str
    bytes: int
    samples: int
    first_row: int
    index_sha256: str
    latents_sha256: str

    def to_json(self) -> dict:
        return dict(self.__dict__)


def commit_shard(
    root: str,
    shard: int,
    first_row: int,
    tar: bytes,
    index_rows: dict[str, np.ndarray],
    latents: np.ndarray,
    spec_hash: str,
) -> ShardResult:
    """Write one shard's tar (bytes, see tar_join), index fragment, latent rows, then its sidecar (last)."""
    idx = parquet_bytes(index_table(index_rows))
    atomic_write(fmt.join(root, fmt.shard_name(shard)), tar)
    atomic_write(fmt.join(root, fmt.index_name(shard)), idx)
    z = open_latents(root, "r+")
    z[first_row : first_row + latents.shape[0]] = latents
    res = ShardResult(
        shard=shard,
        path=fmt.shard_name(shard),
        index=fmt.index_name(shard),
        sha256=fmt.sha256_bytes(tar),
        bytes=len(tar),
        samples=int(latents.shape[0]),
        first_row=first_row,
        index_sha256=fmt.sha256_bytes(idx),
        latents_sha256=fmt.sha256_bytes(np.ascontiguousarray(latents, np.float32).tobytes()),
    )
    sidecar = dict(res.to_json(), spec_hash=spec_hash)
    atomic_write(fmt.join(root, fmt.done_name(shard)), fmt.canonical_json(sidecar))
    return res


def read_sidecars(root: str) -> dict[int, dict]:
    fs, path = fmt.get_fs(fmt.join(root, fmt.DONE_DIR))
    if not fs.exists(path):
        return {}
    out = {}
    for p in fs.ls(path, detail=False):
        name = p.rsplit("/", 1)[-1]
        if name.startswith(".") or not name.endswith(".json"):
            continue
        with fs.open(p, "rb") as f:
            obj = json.loads(f.read())
        out[int(obj["shard"])] = obj
    return out
