"""`factory relabel`: a dataset or view plus a teacher's maps (`trainers relabel`) as a new derived dataset.

Every accepted sample is copied like `filter --materialize` does (image, mask and latent members byte
for byte; keys renumbered when the parent is a view, equal to the parent's otherwise; ``parent_row`` in
the index), gains the member KEY.teacher.png (the teacher's map, byte for byte) and the index columns
``format.TEACHER_COLUMNS``: the agreement of the GAN mask and the teacher, so `factory filter --where
"teacher_iou >= 0.5"` selects on it. The manifest's provenance names the parent dataset, the view, the
teacher's sha256 and the maps. Written by the DatasetWriter, so a killed relabel resumes.
"""
from __future__ import annotations

import sys

import numpy as np

from factory import __version__
from factory import format as fmt
from factory.format import FactoryError, parent_url_for
from factory.views.materialize import (
    ParentShards,
    copy_shard,
    derived_root,
    renumbered_index_rows,
    write_derived,
)

EIGHT = np.ones((3, 3), dtype=bool)


def agreement(mask: np.ndarray, teacher: np.ndarray) -> dict[str, float | int]:
    """The TEACHER_COLUMNS of one sample from its decoded uint8 GAN mask and teacher map ([H, W] each)."""
    from scipy import ndimage

    m = mask > 127
    t = teacher >= fmt.TEACHER_FG_MIN
    p = teacher.astype(np.float64) / 255.0
    union = int(np.count_nonzero(m | t))
    return {
        "teacher_iou": float(np.count_nonzero(m & t)) / union if union else 1.0,
        "teacher_conf_fg": float(p[m].mean()) if m.any() else float("nan"),
        "teacher_conf_bg": float(1.0 - p[~m].mean()) if (~m).any() else float("nan"),
        "teacher_fg_ratio": float(t.mean()),
        "teacher_components": int(ndimage.label(t, structure=EIGHT)[1]),
    }


def decode_gray(data: bytes, where: str) -> np.ndarray:
    with fmt.open_image_checked(data, where) as im:
        return np.asarray(im.convert("L"))


class TeacherMaps:
    """The maps of `trainers relabel` at ``url``: checked against the parent, read one part at a time."""

    def __init__(self, url: str, parent: fmt.Resolved):
        self.url = url.rstrip("/")
        murl = fmt.join(self.url, fmt.MAPS_MANIFEST)
        self.manifest = fmt.validate_maps(fmt.read_json(murl, "teacher maps"), murl)
        made_from = self.manifest["parent"]
        want = (parent.manifest["dataset_id"], parent.view["view_id"] if parent.view else None)
        if (made_from["dataset_id"], made_from.get("view_id")) != want:
            raise FactoryError(f"{murl} maps {made_from['dataset_id']} / view {made_from.get('view_id')}, not "
                               f"{want[0]} / view {want[1]}; make maps of this parent with trainers relabel")
        self.parts = {p["shard"]: p for p in self.manifest["parts"]}
        self.cache: dict[int, dict[str, bytes]] = {}

    def get(self, pid: int, key: str) -> bytes:
        """Teacher map bytes of parent key ``key`` (in parent shard ``pid``)."""
        if pid not in self.cache:
            self.cache.clear()
            entry = self.parts.get(pid)
            if entry is None:
                raise FactoryError(f"{self.url} has no part for parent shard {pid}; rerun trainers relabel")
            part = fmt.ShardRef(pid, fmt.join(self.url, entry["path"]), 0, 0, entry["sha256"],
                                exts=frozenset({fmt.EXT_TEACHER}))  # a part holds KEY.teacher.png only
            data, digest = fmt.read_whole(part, check=False)
            if digest != entry["sha256"]:
                raise FactoryError(f"{part.url} does not match the sha256 in {fmt.MAPS_MANIFEST} (changed or corrupt)")
            self.cache[pid] = {key: m[fmt.EXT_TEACHER] for key, m in fmt.shard_samples(data, part).items()}
        got = self.cache[pid].get(key)
        if got is None:
            raise FactoryError(f"{self.url}: no teacher map for key {key} of parent shard {pid}")
        return got

    def lineage(self) -> dict:
        return {"sha256": self.manifest["teacher"]["sha256"], "label": self.manifest["teacher"].get("label"),
                "maps_spec_hash": self.manifest.get("spec_hash"),
                "parts_sha256": fmt.sha256_bytes(fmt.canonical_json(self.manifest["parts"]))}


def accepted_rows(parent: fmt.Resolved) -> np.ndarray:
    if parent.accepted is None:
        return np.arange(parent.manifest["samples"], dtype=np.int64)
    return parent.accepted.all_rows()


def relabel_spec(parent: fmt.Resolved, maps: TeacherMaps, shard_size: int) -> dict:
    return {"kind": "relabel", "format_version": fmt.FORMAT_VERSION,
            "parent_dataset_id": parent.manifest["dataset_id"],
            "view_id": parent.view["view_id"] if parent.view else None,
            "teacher": maps.lineage(), "shard_size": shard_size}


def relabel_shard(source: ParentShards, maps: TeacherMaps, *, k: int, new_rows: np.ndarray, src_rows: np.ndarray,
                  dim_z: int) -> tuple[list, np.ndarray, dict]:
    """Derived shard k: (tar members with KEY.teacher.png, latents, index rows with TEACHER_COLUMNS)."""
    members, latents, idx = copy_shard(source, k=k, new_rows=new_rows, src_rows=src_rows, dim_z=dim_z)
    rows = renumbered_index_rows(idx, k=k, new_rows=new_rows, src_rows=src_rows)
    masks = {name[: -len(fmt.EXT_MASK) - 1]: body for name, body in members if name.endswith("." + fmt.EXT_MASK)}
    cols: dict[str, list] = {c: [] for c in fmt.TEACHER_COLUMNS}
    for new_row, old_row, pid in zip(new_rows, src_rows, source.shards_of(src_rows)):
        key = fmt.sample_key(int(new_row))
        teacher = maps.get(int(pid), fmt.sample_key(int(old_row)))
        members.append((f"{key}.{fmt.EXT_TEACHER}", teacher))
        where = f"{key} (parent {fmt.sample_key(int(old_row))})"
        t = decode_gray(teacher, f"teacher map {where}")
        m = decode_gray(masks[key], f"mask {where}")
        if t.shape != m.shape:
            raise FactoryError(f"teacher map of {where} is {t.shape}, its mask {m.shape}; relabel at the dataset's size")
        for c, v in agreement(m, t).items():
            cols[c].append(v)
    for c, typ in fmt.TEACHER_COLUMNS.items():
        rows[c] = np.asarray(cols[c], np.float32 if typ == "float32" else np.int32)
    return sorted(members), latents, rows


def relabel_dataset(url: str, maps_url: str, out: str, *, shard_size: int | None = None, overwrite: bool = False,
                    allow_remote_shards: bool = False, log=None) -> dict:
    """Write dataset or view ``url`` with the teacher maps at ``maps_url`` as a new dataset at ``out``."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    parent = fmt.open_dataset(url, allow_remote_shards=allow_remote_shards)
    root, S = derived_root(parent, out, shard_size)
    maps = TeacherMaps(maps_url, parent)
    spec = relabel_spec(parent, maps, S)
    dim_z = int(parent.manifest["dim_z"])
    source = ParentShards(parent)

    def make_shard(k, new_rows, src_rows):
        return relabel_shard(source, maps, k=k, new_rows=new_rows, src_rows=src_rows, dim_z=dim_z)

    return write_derived(
        root, spec=spec, parent_rows=accepted_rows(parent), dim_z=dim_z, shard_size=S, overwrite=overwrite, log=log,
        make_shard=make_shard,
        make_manifest=lambda spec_hash, shards: relabelled_manifest(parent=parent, maps=maps, spec=spec,
                                                                    spec_hash=spec_hash, shards=shards, root=root),
    )


def relabelled_manifest(*, parent: fmt.Resolved, maps: TeacherMaps, spec: dict, spec_hash: str, shards: list[dict],
                        root: str) -> dict:
    """manifest.json of a relabelled dataset: the parent's description, members + teacher, its lineage."""
    latents_sha = fmt.sha256_bytes("".join(s["latents_sha256"] for s in shards).encode())
    pm, view = parent.manifest, parent.view or {}
    return {
        "kind": fmt.DATASET_KIND, "format_version": fmt.FORMAT_VERSION,
        "dataset_id": fmt.dataset_id(shards, latents_sha),
        "samples": sum(s["samples"] for s in shards), "bytes": sum(s["bytes"] for s in shards),
        "dim_z": pm["dim_z"], "resolution": pm.get("resolution"), "spec_hash": pm.get("spec_hash"),
        "spec": pm.get("spec", {}), "recipe": pm.get("recipe"), "code_version": __version__,
        "latents": {"path": fmt.LATENTS, "sha256_of_shard_hashes": latents_sha},
        "members": {**pm.get("members", {}), "teacher": fmt.EXT_TEACHER},
        "provenance": {
            "kind": "relabelled", "relabel_spec_hash": spec_hash, "shard_size": spec["shard_size"],
            "parent": {"dataset_id": pm["dataset_id"], "url": parent_url_for(fmt.join(root, fmt.MANIFEST), parent.root)},
            "view_id": view.get("view_id"), "predicate": view.get("predicate", "true"),
            "lineage": view.get("lineage", []), "counts": view.get("counts", {}), "rejected": view.get("rejected", {}),
            "teacher": maps.lineage(), "agreement_columns": list(fmt.TEACHER_COLUMNS),
        },
        "shards": shards,
    }
