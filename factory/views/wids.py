"""A dataset's or view's samples as a wids shard list (`factory export wids`): the descriptor of the shards
holding the samples, and the samples' indices in wids' numbering, so that
``torch.utils.data.Subset(wids.ShardListDataset(FILE.json), np.load(FILE.npy))`` is the view, no copy made.

wids numbers the samples of a shard list consecutively: shard after shard in the list's order, each shard's
samples in tar order (grouped by key). A shard of this format holds its rows ``first_row ..
first_row + samples - 1`` in row order (the writer's order; `factory verify` checks it), so row ``r`` of the
list's shard ``s`` is index ``offset(s) + r - first_row(s)``.
"""
from __future__ import annotations

import io
import json
import os

import numpy as np

from factory import format as fmt

WIDS_KIND = "wids-shard-index-v1"


def shard_url(res: fmt.Resolved, entry: dict) -> str:
    """The shard's URL as the descriptor names it: an absolute local path, or the store's URL."""
    url = fmt.join(res.root, entry["path"])
    return url if fmt.is_remote_url(url) else os.path.abspath(url)


def wids_plan(res: fmt.Resolved, *, name: str) -> tuple[dict, np.ndarray]:
    """(descriptor, int64 indices) of the samples of ``res`` (a dataset: every row; a view: its accepted rows).
    Only shards holding at least one of the samples are listed."""
    shardlist, parts, offset = [], [], 0
    for s in sorted(res.manifest["shards"], key=lambda e: e["shard"]):
        if res.accepted is None:
            rows = np.arange(s["first_row"], s["first_row"] + s["samples"], dtype=np.int64)
        else:
            rows = res.accepted[s["shard"]] if s["shard"] in res.accepted else np.zeros(0, np.int64)
        if rows.size == 0:
            continue
        if rows[0] < s["first_row"] or rows[-1] >= s["first_row"] + s["samples"]:
            raise fmt.FormatError(f"view lists rows outside shard {s['shard']} (rows {s['first_row']}.."
                                  f"{s['first_row'] + s['samples'] - 1})")
        shardlist.append({"url": shard_url(res, s), "nsamples": int(s["samples"]), "filesize": int(s["bytes"])})
        parts.append(offset + rows - s["first_row"])
        offset += int(s["samples"])
    desc = {"__kind__": WIDS_KIND, "wids_version": 1, "name": name, "shardlist": shardlist}
    return desc, (np.concatenate(parts) if parts else np.zeros(0, np.int64))


def write_wids(res: fmt.Resolved, out: str, indices: str, *, name: str) -> dict:
    """Write the descriptor (``out``, JSON) and the indices (``indices``, .npy int64), each atomically."""
    from factory.fsio import atomic_write

    if not out.endswith(".json"):
        raise fmt.FactoryError(f"--out {out}: the wids shard list is a JSON file; name it *.json")
    if not indices.endswith(".npy"):
        raise fmt.FactoryError(f"--indices {indices}: the indices are a .npy file; name it *.npy")
    desc, idx = wids_plan(res, name=name)
    buf = io.BytesIO()
    np.save(buf, idx.astype(np.int64), allow_pickle=False)
    atomic_write(out, (json.dumps(desc, indent=1) + "\n").encode())
    atomic_write(indices, buf.getvalue())
    return {"shards": len(desc["shardlist"]), "samples": int(idx.shape[0]),
            "indexed": sum(e["nsamples"] for e in desc["shardlist"]), "out": out, "indices": indices}
