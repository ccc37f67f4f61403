"""TODO docstring."""
from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np

from factory import __version__
from factory import format as fmt
from factory.dataset.reader import decode_npy, load_index, read_shard_samples
from factory.errors import FactoryError
from factory.format import parent_url_for


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


def materialize_view(url: str, view: dict, out: str, shard_size: int | None = None, overwrite: bool = False,
                     allow_remote_shards: bool = False, log=None) -> dict:
    """Write the accepted samples of `view` as a new compact dataset at `out`; returns its manifest."""
    import pyarrow as pa

    from factory.dataset.shards import (
        commit_shard,
        create_latents,
        read_sidecars,
        tar_bytes,
    )
    from factory.dataset.writer import DatasetLock, check_writable, spec_diff, wipe
    from factory.fsio import atomic_write, exists, remove_temp_files

    log = log or (lambda msg: print(msg, file=sys.stderr))
    parent = fmt.open_dataset(url, allow_remote_shards=allow_remote_shards)
    root = out.rstrip("/")
    if fmt.is_remote_url(root) is False and os.path.abspath(root) == os.path.abspath(parent.root):
        raise FactoryError(f"--out {out} is the parent dataset itself; choose a new folder")
    S = int(shard_size or parent.manifest.get("spec", {}).get("shard_size") or 1000)
    if S <= 0:
        raise FactoryError(f"--shard-size must be positive, got {S}")
    mspec = materialize_spec(parent, view, S)
    mhash = fmt.sha256_bytes(fmt.canonical_json(mspec))
    accepted_rows = np.array(sorted(r for rows in view["accepted"].values() for r in rows), np.int64)
    M = len(accepted_rows)
    n_shards = (M + S - 1) // S
    entries = {s["shard"]: s for s in parent.manifest["shards"]}
    starts = sorted((s["first_row"], s["shard"]) for s in parent.manifest["shards"])
    first_rows = np.array([a for a, _ in starts], np.int64)
    shard_of_row = np.array([b for _, b in starts], np.int64)

    check_writable(root)
    with DatasetLock(root):
        remove_temp_files(root)
        spec_url = fmt.join(root, fmt.SPEC)
        manifest_url = fmt.join(root, fmt.MANIFEST)
        if exists(spec_url):
            try:
                old = json.loads(fmt.read_bytes(spec_url))
            except ValueError:
                old = {}
            if old.get("spec_hash") != mhash:
                if not overwrite:
                    diff = spec_diff(old.get("spec", {}) or {}, mspec)
                    raise FactoryError(
                        f"{root} holds another dataset ({'; '.join(diff[:4]) or 'spec differs'}); "
                        "use another --out, or pass --overwrite to replace it"
                    )
                wipe(root)
        elif exists(manifest_url) or exists(fmt.join(root, fmt.SHARD_DIR)):
            if not overwrite:
                raise FactoryError(f"{root} already holds files of another dataset; use another --out or pass --overwrite")
            wipe(root)
        if not exists(spec_url):
            atomic_write(spec_url, json.dumps({"spec_hash": mhash, "spec": mspec}, indent=1, sort_keys=True).encode())
        dim_z = int(parent.manifest["dim_z"])
        if not exists(fmt.join(root, fmt.LATENTS)):
            create_latents(root, M, dim_z, S)
        done = {k: v for k, v in read_sidecars(root).items() if v.get("spec_hash") == mhash}
        todo = [k for k in range(n_shards) if k not in done]
        if not todo and exists(manifest_url):
            log(f"{root}: complete ({M} samples in {n_shards} shards); nothing to do")
            return json.loads(fmt.read_bytes(manifest_url))
        if done:
            log(f"{root}: resuming, {len(done)} of {n_shards} shards already committed")
        cache: dict[int, tuple[dict, Any]] = {}

        def parent_shard(pid: int):
            if pid not in cache:
                cache.clear()
                samples = read_shard_samples(parent.root, entries[pid])
                idx = load_index(parent.root, parent.manifest, shards=[pid])
                cache[pid] = (samples, idx)
            return cache[pid]

        for k in todo:
            new_rows = np.arange(k * S, min((k + 1) * S, M), dtype=np.int64)
            src_rows = accepted_rows[new_rows]
            src_shards = shard_of_row[np.searchsorted(first_rows, src_rows, side="right") - 1]
            members: list[tuple[str, bytes]] = []
            latents = np.zeros((len(new_rows), dim_z), np.float32)
            idx_parts = []
            for pid in np.unique(src_shards):
                pid = int(pid)
                samples, idx = parent_shard(pid)
                sel = src_shards == pid
                rows_here = src_rows[sel]
                prow = idx.column("row").to_numpy()
                pos = np.searchsorted(prow, rows_here)
                if np.any(pos >= len(prow)) or np.any(prow[np.minimum(pos, len(prow) - 1)] != rows_here):
                    raise fmt.FormatError(f"index of shard {pid} lacks rows the view accepts; the parent changed")
                idx_parts.append(idx.take(pa.array(pos)))
                for new_row, old_row in zip(new_rows[sel], rows_here):
                    old_key = fmt.sample_key(int(old_row))
                    if old_key not in samples:
                        raise fmt.FormatError(
                            f"{fmt.join(parent.root, entries[pid]['path'])}: sample {old_key} accepted by the view is missing"
                        )
                    new_key = fmt.sample_key(int(new_row))
                    parts = samples[old_key]
                    lat = decode_npy(parts.get(fmt.EXT_LATENT, b""), f"{entries[pid]['path']}:{old_key}")
                    latents[int(new_row) - k * S] = lat
                    out_members = []
                    for ext, body in parts.items():
                        if ext == fmt.EXT_META:
                            try:
                                meta = json.loads(body)
                            except ValueError:
                                meta = {}
                            meta.update({"key": new_key, "row": int(new_row), "shard": k,
                                         "parent_key": old_key, "parent_row": int(old_row),
                                         "parent_dataset_id": parent.manifest["dataset_id"]})
                            body = fmt.canonical_json(meta)
                        out_members.append((f"{new_key}.{ext}", body))
                    members.extend(sorted(out_members))
            idx = pa.concat_tables(idx_parts)
            rows = {}
            for name in idx.column_names:
                col = idx.column(name)
                if name == "hist":
                    rows[name] = np.asarray(col.combine_chunks().flatten().to_numpy(zero_copy_only=False),
                                            np.float32).reshape(-1, fmt.HIST_BINS)
                else:
                    rows[name] = col.to_numpy(zero_copy_only=False)
            rows["parent_row"] = src_rows.copy()
            rows["key"] = np.array([fmt.sample_key(int(r)) for r in new_rows], dtype=object)
            rows["shard"] = np.full(len(new_rows), k, np.int32)
            rows["row"] = new_rows
            res = commit_shard(root, k, k * S, tar_bytes(members), rows, latents, mhash)
            done[k] = res.to_json()
        manifest = materialized_manifest(parent, view, mspec, mhash, done, n_shards, url, root)
        from factory.dataset.card import write_card

        write_card(root, manifest)
        atomic_write(manifest_url, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return manifest


def materialized_manifest(parent: fmt.Resolved, view: dict, mspec: dict, mhash: str, done: dict,
                           n_shards: int, url: str, root: str) -> dict:
    shards = [dict(done[k]) for k in range(n_shards)]
    for s in shards:
        s.pop("spec_hash", None)
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
