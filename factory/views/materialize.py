"""`filter --materialize`: the accepted samples of a view copied into a new compact dataset.

Keys and rows are renumbered (the index column ``parent_row`` and each KEY.json's ``parent_*``
name the sample in the parent); the folder is written by the same DatasetWriter as `generate`'s
(lock, spec check, resume from sidecars, manifest last), so a killed materialize resumes.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np

from factory import __version__
from factory import format as fmt
from factory.dataset.reader import decode_npy, load_index, read_samples, read_shard_samples
from factory.dataset.shards import commit_shard, table_rows
from factory.dataset.writer import DatasetWriter
from factory.format import FactoryError, parent_url_for

SPARSE = 4  # a parent shard is read by sample (range reads) when fewer than 1/SPARSE of its samples are wanted
OTHER_SPEC = "{root} holds another dataset ({diff}); use another --out, or pass --overwrite to replace it"


def materialize_spec(parent: fmt.Resolved, view: dict, shard_size: int) -> dict:
    return {
        "kind": "materialize",
        "format_version": fmt.FORMAT_VERSION,
        "parent_dataset_id": parent.manifest["dataset_id"],
        "view_id": view["view_id"],
        "predicate": view["predicate"],
        "accepted_sha256": view["accepted_sha256"],
        "shard_size": shard_size,
    }


class ParentShards:
    """The parent's shards, read one at a time (the samples and index rows of the last one kept)."""

    def __init__(self, parent: fmt.Resolved):
        self.parent = parent
        self.entries = {s["shard"]: s for s in parent.manifest["shards"]}
        starts = sorted((s["first_row"], s["shard"]) for s in parent.manifest["shards"])
        self.first_rows = np.array([a for a, _ in starts], np.int64)
        self.shard_of_row = np.array([b for _, b in starts], np.int64)
        self.cache: dict[int, tuple[dict, Any]] = {}

    def shards_of(self, rows: np.ndarray) -> np.ndarray:
        """The parent shard of each parent row."""
        return self.shard_of_row[np.searchsorted(self.first_rows, rows, side="right") - 1]

    def read(self, pid: int, rows: np.ndarray | None = None):
        """(samples by key, index table) of parent shard `pid`; with `rows` (a few of its rows) and tar offsets in
        the parent's index, only those samples, one range read each."""
        entry = self.entries[pid]
        if rows is not None and fmt.has_offsets(self.parent.manifest) and pid not in self.cache \
                and len(rows) * SPARSE < entry["samples"]:
            got = read_samples(self.parent, rows)
            samples = {fmt.sample_key(r): parts for r, parts in got.items()}
            return samples, load_index(self.parent.root, self.parent.manifest, shards=[pid])
        if pid not in self.cache:
            self.cache.clear()
            samples = read_shard_samples(self.parent, self.entries[pid])
            idx = load_index(self.parent.root, self.parent.manifest, shards=[pid])
            self.cache[pid] = (samples, idx)
        return self.cache[pid]

    def index_positions(self, pid: int, idx, rows_here: np.ndarray) -> np.ndarray:
        """Positions of `rows_here` in parent shard `pid`'s index table."""
        prow = idx.column("row").to_numpy()
        pos = np.searchsorted(prow, rows_here)
        if np.any(pos >= len(prow)) or np.any(prow[np.minimum(pos, len(prow) - 1)] != rows_here):
            raise fmt.FormatError(f"index of shard {pid} lacks rows the view accepts; the parent changed")
        return pos

    def copied_members(self, pid: int, samples: dict, *, k: int, new_row: int, old_row: int) -> tuple[list, Any]:
        """One sample's members renamed to its new key (meta JSON rewritten), and its latent."""
        old_key = fmt.sample_key(int(old_row))
        if old_key not in samples:
            raise fmt.FormatError(
                f"{fmt.join(self.parent.root, self.entries[pid]['path'])}: sample {old_key} accepted by the view is missing"
            )
        new_key = fmt.sample_key(int(new_row))
        parts = samples[old_key]
        lat = decode_npy(parts.get(fmt.EXT_LATENT, b""), f"{self.entries[pid]['path']}:{old_key}")
        out_members = []
        for ext, body in parts.items():
            if ext == fmt.EXT_META:
                try:
                    meta = json.loads(body)
                except ValueError:
                    meta = {}
                meta.update({"key": new_key, "row": int(new_row), "shard": k,
                             "parent_key": old_key, "parent_row": int(old_row),
                             "parent_dataset_id": self.parent.manifest["dataset_id"]})
                body = fmt.canonical_json(meta)
            out_members.append((f"{new_key}.{ext}", body))
        return sorted(out_members), lat


def copy_shard(source: ParentShards, *, k: int, new_rows: np.ndarray, src_rows: np.ndarray, dim_z: int):
    """Materialized shard k: (tar members in key order, latents [n, dim_z], parent index rows as a table)."""
    import pyarrow as pa

    src_shards = source.shards_of(src_rows)
    members: list[tuple[str, bytes]] = []
    latents = np.zeros((len(new_rows), dim_z), np.float32)
    idx_parts = []
    first = int(new_rows[0]) if len(new_rows) else 0
    for pid in np.unique(src_shards):
        pid = int(pid)
        sel = src_shards == pid
        rows_here = src_rows[sel]
        samples, idx = source.read(pid, rows_here)
        idx_parts.append(idx.take(pa.array(source.index_positions(pid, idx, rows_here))))
        for new_row, old_row in zip(new_rows[sel], rows_here):
            sample_members, lat = source.copied_members(pid, samples, k=k, new_row=new_row, old_row=old_row)
            latents[int(new_row) - first] = lat
            members.extend(sample_members)
    return members, latents, pa.concat_tables(idx_parts)


def renumbered_index_rows(idx, *, k: int, new_rows: np.ndarray, src_rows: np.ndarray) -> dict:
    """The index rows of materialized shard k: the parent's columns, renumbered, plus parent_row."""
    rows = table_rows(idx)
    rows["parent_row"] = src_rows.copy()
    rows["key"] = np.array([fmt.sample_key(int(r)) for r in new_rows], dtype=object)
    rows["shard"] = np.full(len(new_rows), k, np.int32)
    rows["row"] = new_rows
    return rows


def derived_root(parent: fmt.Resolved, out: str, shard_size: int | None) -> tuple[str, int]:
    """(root, samples per shard) of a dataset derived from ``parent``: never the parent itself; the
    parent's shard size unless one is given."""
    root = out.rstrip("/")
    if not fmt.is_remote_url(root) and os.path.abspath(root) == os.path.abspath(parent.root):
        raise FactoryError(f"--out {out} is the parent dataset itself; choose a new folder")
    S = int(shard_size or parent.manifest.get("spec", {}).get("shard_size") or 1000)
    if S <= 0:
        raise FactoryError(f"--shard-size must be positive, got {S}")
    return root, S


def write_derived(root: str, *, spec: dict, parent_rows: np.ndarray, dim_z: int, shard_size: int, overwrite: bool,
                  log, make_shard, make_manifest) -> dict:
    """Write (or resume) a dataset whose sample i comes from the parent's row ``parent_rows[i]``, on the
    DatasetWriter. ``make_shard(k, new_rows, src_rows)`` -> (members, latents, index rows) of shard k;
    ``make_manifest(spec_hash, shard_entries)`` -> manifest.json. Returns the manifest."""
    S = shard_size
    spec_hash = fmt.sha256_bytes(fmt.canonical_json(spec))
    writer = DatasetWriter(root, spec=spec, spec_hash=spec_hash, samples=len(parent_rows), dim_z=dim_z,
                           shard_size=S, other_spec=OTHER_SPEC, overwrite=overwrite)
    with writer:
        done, todo, manifest = writer.resume(log)
        if manifest is not None:
            return manifest
        for k in todo:
            new_rows = np.arange(k * S, min((k + 1) * S, len(parent_rows)), dtype=np.int64)
            members, latents, rows = make_shard(k, new_rows, parent_rows[new_rows])
            res = commit_shard(root, k, first_row=k * S, tar=fmt.tar_bytes(members), index_rows=rows, latents=latents,
                               spec_hash=spec_hash)
            done[k] = res.to_json()
        manifest = make_manifest(spec_hash, writer.shard_entries(done))
        writer.finish(manifest)
    return manifest


def materialize_view(url: str, view: dict, out: str, *, shard_size: int | None = None, overwrite: bool = False,
                     allow_remote_shards: bool = False, log=None) -> dict:
    """Write the accepted samples of `view` as a new compact dataset at `out`; returns its manifest."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    parent = fmt.open_dataset(url, allow_remote_shards=allow_remote_shards)
    root, S = derived_root(parent, out, shard_size)
    mspec = materialize_spec(parent, view, S)
    accepted_rows = fmt.AcceptedRows(view["accepted"], view["format_version"]).all_rows()
    dim_z = int(parent.manifest["dim_z"])
    source = ParentShards(parent)

    def make_shard(k, new_rows, src_rows):
        members, latents, idx = copy_shard(source, k=k, new_rows=new_rows, src_rows=src_rows, dim_z=dim_z)
        return members, latents, renumbered_index_rows(idx, k=k, new_rows=new_rows, src_rows=src_rows)

    return write_derived(
        root, spec=mspec, parent_rows=accepted_rows, dim_z=dim_z, shard_size=S, overwrite=overwrite, log=log,
        make_shard=make_shard,
        make_manifest=lambda mhash, shards: materialized_manifest(parent=parent, view=view, mspec=mspec, mhash=mhash,
                                                                  shards=shards, root=root),
    )


def materialized_manifest(*, parent: fmt.Resolved, view: dict, mspec: dict, mhash: str, shards: list[dict],
                          root: str) -> dict:
    """manifest.json of a materialized view from its shard entries (see DatasetWriter.shard_entries)."""
    latents_sha = fmt.sha256_bytes("".join(s["latents_sha256"] for s in shards).encode())
    pm = parent.manifest
    return {
        "kind": fmt.DATASET_KIND,
        "format_version": fmt.FORMAT_VERSION,
        "dataset_id": fmt.dataset_id(shards, latents_sha),
        "samples": sum(s["samples"] for s in shards),
        "bytes": sum(s["bytes"] for s in shards),
        "dim_z": pm["dim_z"],
        "resolution": pm.get("resolution"),
        "spec_hash": pm.get("spec_hash"),
        "spec": pm.get("spec", {}),
        "recipe": pm.get("recipe"),
        "code_version": __version__,
        "latents": {"path": fmt.LATENTS, "sha256_of_shard_hashes": latents_sha},
        "members": pm.get("members", {}),
        "provenance": {
            "kind": "materialized-view",
            "materialize_spec_hash": mhash,
            "shard_size": mspec["shard_size"],
            "parent": {"dataset_id": pm["dataset_id"], "url": parent_url_for(fmt.join(root, fmt.MANIFEST), parent.root)},
            "view_id": view["view_id"],
            "predicate": view["predicate"],
            "lineage": view.get("lineage", []),
            "counts": view.get("counts", {}),
            "rejected": view.get("rejected", {}),
        },
        "shards": shards,
    }
