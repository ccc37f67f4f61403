"""Shard writer: tar (WebDataset) + Parquet index fragment + latents.zarr rows, committed atomically.

Commit order for shard k: tar, index fragment and latent rows under their final
names (each written to a temp name, fsynced, renamed on local disks; a single
object PUT on object stores, which is atomic), then the sidecar done/k.json.
A shard without its sidecar does not exist: resume looks at sidecars only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from factory import format as fmt
from factory.fsio import atomic_write

# ---------------------------------------------------------------- index

def table_rows(table) -> dict[str, np.ndarray]:
    """An index table as the column arrays `index_table` takes (its inverse)."""
    rows = {}
    for name in table.column_names:
        col = table.column(name)
        if name == "hist":
            rows[name] = np.asarray(col.combine_chunks().flatten().to_numpy(zero_copy_only=False),
                                    np.float32).reshape(-1, fmt.HIST_BINS)
        else:
            rows[name] = col.to_numpy(zero_copy_only=False)
    return rows


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


def with_offsets(rows: dict, tar: bytes, where: str) -> dict:
    """Index rows with ``tar_offset`` / ``tar_size`` of each key's records in ``tar`` (replacing any given)."""
    ranges = fmt.member_ranges(tar, where)
    try:
        pairs = np.array([ranges[str(k)] for k in rows["key"]], np.int64).reshape(-1, 2)
    except KeyError as e:
        raise fmt.FormatError(f"{where}: index key {e.args[0]} has no member in the tar") from None
    return dict(rows, tar_offset=pairs[:, 0], tar_size=pairs[:, 1])


def parquet_bytes(table) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    # snappy without dictionaries: on the real 1M run's fragments 0.6x the CPU to hash and decode of zstd
    # with dictionaries (what every index-wide read pays, 10,000 times at 10M rows), at 71 kB instead of
    # 50 kB per 1,000 rows (an index is under 1 % of a dataset's bytes)
    pq.write_table(table, sink, compression="snappy", use_dictionary=False, write_statistics=True)
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
    *,
    first_row: int,
    tar: bytes,
    index_rows: dict[str, np.ndarray],
    latents: np.ndarray,
    spec_hash: str,
    platform: dict | None = None,
    batch_size: int | None = None,
) -> ShardResult:
    """Write one shard's tar (bytes, see fmt.tar_join), index fragment, latent rows, then its sidecar (last),
    which names the ``platform`` that made the shard (`factory.provenance.platform_record`) and the
    ``batch_size`` it ran (a GPU's kernels may depend on it; `verify --regenerate` remakes whole batches there).
    The index rows gain each sample's byte range in the tar (`with_offsets`)."""
    idx = parquet_bytes(index_table(with_offsets(index_rows, tar, fmt.shard_name(shard))))
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
    made = {"platform": platform, "batch_size": batch_size}
    sidecar = dict(res.to_json(), spec_hash=spec_hash, **{k: v for k, v in made.items() if v is not None})
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
