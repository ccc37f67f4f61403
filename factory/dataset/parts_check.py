"""What `factory verify` checks of a compacted index (format 3) at the level of its parts: the index
section against the shard entries (`format.index.index_parts`), each part's size, whole-file sha256 and
footer sha256 against the manifest, every page's checksum, its row groups against the manifest's, and the
``key_bucket`` column against the keys; then each shard's rows as a slice for verify's per-shard checks."""
from __future__ import annotations

import numpy as np

from factory import format as fmt
from factory.format import index as fidx


def section_problems(m: dict) -> list[str]:
    """The index section's problems (empty = good)."""
    try:
        fidx.index_parts(m)
    except fmt.FormatError as e:
        return [str(e)]
    return []


def read_part(root: str, part: dict, columns: list[str] | None) -> tuple[object | None, list[str]]:
    """(the part's `columns` as a table or None, its problems): read whole and hashed, footer hashed, pages
    checked."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    url = fmt.join(root, part["path"])
    try:
        data = fmt.read_bytes(url)
    except FileNotFoundError:
        return None, [f"index part {url} missing"]
    except OSError as e:
        return None, [f"index part {url} unreadable: {e}"]
    problems = []
    if len(data) != part["bytes"]:
        problems.append(f"index part {url} has {len(data)} bytes, the manifest says {part['bytes']}")
    if fmt.sha256_bytes(data) != part["sha256"]:
        problems.append(f"index part {url} sha256 differs from the manifest")
    try:
        tail = fidx.footer_bytes(pa.BufferReader(data), len(data), f"index part {url}")
        if fmt.sha256_bytes(tail) != part["footer_sha256"]:
            problems.append(f"index part {url} footer sha256 differs from the manifest")
        pf = pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=True)
        meta = pf.metadata
        if [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] != [g[2] for g in part["row_groups"]]:
            problems.append(f"index part {url}: row groups differ from the manifest's")
        t = pf.read(columns=None if columns is None else [*columns, "row", fidx.KEY_BUCKET], use_threads=False)
    except Exception as e:  # noqa: BLE001 - any unreadable part is reported, not raised
        return None, problems + [f"index part {url} unreadable: {e}"]
    if t.num_rows != part["rows"]:
        return None, problems + [f"index part {url} has {t.num_rows} rows, the manifest says {part['rows']}"]
    rows = t.column("row").to_numpy()
    if not np.array_equal(t.column(fidx.KEY_BUCKET).to_numpy(), fidx.key_buckets(rows)):
        problems.append(f"index part {url}: key_bucket differs from the keys' hold-out buckets")
    return t.drop_columns([fidx.KEY_BUCKET] + (["row"] if columns is not None and "row" not in columns else [])), \
        problems


def shard_slices(table, part: dict, entries: dict[int, dict]):
    """(shard entry, its rows of the part's table) for every shard of the part, in order."""
    at = 0
    for k in range(part["first_shard"], part["first_shard"] + part["shards"]):
        e = entries[k]
        yield e, table.slice(at, e["samples"])
        at += e["samples"]
