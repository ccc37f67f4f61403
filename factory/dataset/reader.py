"""Reading a dataset's index and shards safely: index fragments checked against the manifest's sha256,
the index schema, shard tars parsed with `format.safe_tar_members`, latent members decoded without pickle."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from factory import format as fmt

# ================================================================ index reading

def load_index(root: str, manifest: dict, columns: list[str] | None = None, *, check_sha: bool = True,
               shards: list[int] | None = None):
    """Concatenated index fragments (shard order), only `columns`; each fragment's sha256 is checked."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    entries = [s for s in manifest["shards"] if shards is None or s["shard"] in shards]
    entries.sort(key=lambda s: s["shard"])

    def fetch(s):
        url = fmt.join(root, s["index"])
        try:
            return fmt.read_bytes(url)
        except FileNotFoundError:
            raise fmt.FormatError(f"index fragment missing: {url} (shard {s['shard']})") from None
        except OSError as e:
            raise fmt.FormatError(f"cannot read index fragment {url}: {e}") from None

    def parse(s, data):
        url = fmt.join(root, s["index"])
        if check_sha and fmt.sha256_bytes(data) != s["index_sha256"]:
            raise fmt.FormatError(f"index fragment {url} does not match the manifest's sha256 (changed or corrupt)")
        try:
            # ParquetFile.read is ~2x cheaper per small file than pq.read_table (no dataset layer)
            t = pq.ParquetFile(pa.BufferReader(data)).read(columns=columns, use_threads=False)
        except (pa.ArrowException, KeyError, ValueError, OSError) as e:
            raise fmt.FormatError(f"index fragment {url} is not a readable index: {e}") from None
        if t.num_rows != s["samples"]:
            raise fmt.FormatError(f"index fragment {url} has {t.num_rows} rows, the manifest says {s['samples']}")
        return t

    if not entries:
        return None
    if fmt.is_remote_url(fmt.join(root, entries[0]["index"])):
        # object stores: latency-bound, fetch many fragments at once
        with ThreadPoolExecutor(min(32, len(entries))) as ex:
            blobs = list(ex.map(fetch, entries))
    else:
        blobs = [fetch(s) for s in entries]  # local disk: threads only add GIL contention
    tables = [parse(s, d) for s, d in zip(entries, blobs)]
    try:
        return pa.concat_tables(tables, promote_options="default")
    except pa.ArrowInvalid as e:
        raise fmt.FormatError(f"{root}: index fragments have different schemas: {e}") from None


def accepted_flags(accepted: dict[int, set[int]], row_col: np.ndarray) -> np.ndarray:
    """Bool per entry of an index's ``row`` column: True where a view accepts that row."""
    rows = np.fromiter((r for v in accepted.values() for r in v), np.int64)
    flag = np.zeros(int(max(row_col.max(initial=-1), rows.max(initial=-1))) + 1, bool)
    flag[rows] = True
    return flag[row_col]


def index_schema(root: str, manifest: dict):
    """Arrow schema of the index (first fragment's footer; the contract's columns when there is none)."""
    import pyarrow.parquet as pq

    if not manifest["shards"]:
        return contract_schema()
    s = min(manifest["shards"], key=lambda e: e["shard"])
    url = fmt.join(root, s["index"])
    fs, path = fmt.get_fs(url)
    try:
        with fs.open(path, "rb") as f:
            return pq.read_schema(f)
    except FileNotFoundError:
        raise fmt.FormatError(f"index fragment missing: {url} (shard {s['shard']})") from None
    except Exception as e:  # noqa: BLE001 - any unreadable footer is a format problem of that file
        raise fmt.FormatError(f"index fragment {url} is not a readable Parquet file: {e}") from None


def contract_schema():
    """Arrow schema of the contract's index columns (format.INDEX_COLUMNS)."""
    import pyarrow as pa

    fields = []
    for name, typ in fmt.INDEX_COLUMNS.items():
        if name == "hist":
            fields.append(pa.field(name, pa.list_(pa.float32(), fmt.HIST_BINS)))
        elif typ == "string":
            fields.append(pa.field(name, pa.string()))
        elif typ == "bool":
            fields.append(pa.field(name, pa.bool_()))
        else:
            fields.append(pa.field(name, getattr(pa, typ)()))
    return pa.schema(fields)


# ================================================================ shards

def decode_npy(data: bytes, where: str) -> np.ndarray:
    """A latent member's .npy bytes as an array (no pickle), or FormatError naming `where`."""
    import io

    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError) as e:
        raise fmt.FormatError(f"{where}: latent is not a readable .npy ({e})") from None


def read_shard_samples(root: str, entry: dict, where: str | None = None) -> dict[str, dict[str, bytes]]:
    """key -> {ext: bytes} of one shard, read safely; checks the shard's sha256."""
    url = fmt.join(root, entry["path"])
    where = where or url
    try:
        data = fmt.read_bytes(url)
    except FileNotFoundError:
        raise fmt.FormatError(f"shard missing: {url}") from None
    except OSError as e:
        raise fmt.FormatError(f"cannot read shard {url}: {e}") from None
    if fmt.sha256_bytes(data) != entry["sha256"]:
        raise fmt.FormatError(f"shard {url} does not match the manifest's sha256 (changed or corrupt); run factory verify")
    samples: dict[str, dict[str, bytes]] = {}
    for name, body in fmt.safe_tar_members(data, where):
        key, ext = fmt.split_member(name)
        samples.setdefault(key, {})[ext] = body
    return samples
