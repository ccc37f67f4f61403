"""`trainers relabel`: a teacher's probability map for every sample of a dataset or view, as teacher maps.

Teacher maps (names in factory.format, prose in docs/self-training.md)::

    MAPS/parts/NNNNNN.tar    KEY.teacher.png (8-bit gray, p = value / 255) for the accepted rows of the
                             parent's shard NNNNNN, keys of the parent dataset, in key order
    MAPS/parts/NNNNNN.json   the part's sidecar (sha256, bytes, samples, spec hash), written after its tar
    MAPS/maps.json           written last: parent dataset id, view id, teacher sha256, every part

The teacher is any ``--model`` (a run folder or an authors' ``.pth``). It sees each image at the
dataset's own resolution, in eval mode, in batches of ``--batch-size`` cut from one part's samples in key
order, so a part's bytes depend only on its samples, the teacher and the batch size (on one device): a
run killed anywhere resumes from the parts whose sidecars name the same spec (parent, view, teacher,
batch size) and ends with the same bytes.
`factory relabel PARENT --maps MAPS --out DERIVED` turns the maps into a dataset.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from factory import format as fmt
from trainers import __version__
from trainers.data.cache import open_cache
from trainers.data.stream import SampleIndex, build_index, decode_image, read_shard
from trainers.device import resolve_device
from trainers.errors import TrainersError
from trainers.fileio import atomic_write, json_bytes, sha256_bytes, sha256_file
from trainers.model.checkpoint import WEIGHTS_FILE, model_label, open_model
from trainers.model.unet import ModelConfig, foreground_probability, pixels_to_input
from trainers.progress import RateLine, emit


class RelabelError(TrainersError, ValueError):
    """A relabelling request that cannot run as asked (message says what to change)."""


@dataclass(frozen=True)
class RelabelConfig:
    """What `trainers relabel` was asked for."""

    model: str
    data: str
    out: str
    device: str = "auto"
    batch_size: int = 64
    progress: bool = True
    allow_remote_shards: bool = False
    cache: bool = True  # remote shards through the node's shard cache (trainers.data.cache)
    cache_dir: str | None = None
    cache_limit: str | None = None


def teacher_sha256(model: str) -> str:
    """sha256 of the teacher's weights file: RUN/model.safetensors, or the ``.pth`` itself."""
    p = Path(model)
    f = p if p.is_file() else p / WEIGHTS_FILE
    if not f.is_file():
        raise RelabelError(f"--model {model}: no weights file {f} (a run folder or an authors' .pth)")
    return sha256_file(f)


def png_of_probability(p: np.ndarray) -> bytes:
    """8-bit gray PNG of a probability map: value = round(255 p)."""
    buf = io.BytesIO()
    Image.fromarray(np.rint(np.clip(p, 0.0, 1.0) * 255.0).astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


@torch.inference_mode()
def predict_part(net: torch.nn.Module, index: SampleIndex, shard: int, *, device: torch.device,
                 batch_size: int) -> list[tuple[str, bytes]]:
    """(KEY.teacher.png, bytes) of every accepted row of ``shard``, in key order."""
    rows = index.rows[index.shards == shard]
    info = index.shard_info[shard]
    encoded = read_shard(info, set(rows.tolist()), (index.image_member,), index.cache)
    config = net.config if isinstance(getattr(net, "config", None), ModelConfig) else ModelConfig()
    expect = fmt.IMAGE_FORMATS[index.image_member]
    out = []
    for b0 in range(0, rows.shape[0], batch_size):
        batch = rows[b0:b0 + batch_size].tolist()
        images = [decode_image(encoded[r][index.image_member], "RGB",
                               f"shard {info.url}: key {fmt.sample_key(r)}", expect=expect) for r in batch]
        x = torch.from_numpy(pixels_to_input(np.stack(images).transpose(0, 3, 1, 2)))
        probs = foreground_probability(net(x.to(device)), config)[:, 0].to("cpu", torch.float64).numpy()
        out += [(f"{fmt.sample_key(r)}.{fmt.EXT_TEACHER}", png_of_probability(p)) for r, p in zip(batch, probs)]
    return out


def open_parent(cfg: RelabelConfig) -> SampleIndex:
    index = build_index(fmt.open_dataset(cfg.data, allow_remote_shards=cfg.allow_remote_shards), split="all")
    return open_cache(index, cache_dir=cfg.cache_dir, cache_limit=cfg.cache_limit, enabled=cfg.cache,
                      announce=emit)


def maps_spec(index: SampleIndex, teacher: str, batch_size: int) -> dict:
    """What decides the maps' bytes: the parent (dataset and view), the teacher, the batches, the encoding."""
    return {"kind": fmt.MAPS_KIND, "format_version": fmt.FORMAT_VERSION, "parent_dataset_id": index.dataset_id,
            "view_id": index.view_id, "teacher_sha256": teacher, "batch_size": batch_size,
            "input": "native resolution", "encoding": "png8 p=v/255"}


def committed_parts(out: Path, spec_hash: str) -> dict[int, dict]:
    """Parts already done under this spec (temp files of a killed run removed); another spec is refused."""
    for tmp in (out / fmt.MAPS_PART_DIR).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    done = {}
    for p in sorted((out / fmt.MAPS_PART_DIR).glob("*.json")):
        side = json.loads(p.read_text())
        if side.get("spec_hash") != spec_hash:
            raise RelabelError(f"{out} holds teacher maps of another dataset, teacher or --batch-size ({p.name}); "
                               "choose another --out")
        done[int(side["shard"])] = side
    return done


def relabel(cfg: RelabelConfig) -> dict:
    """Write (or resume) the teacher maps of ``cfg.data`` by ``cfg.model`` at ``cfg.out``; returns maps.json.
    One writer per folder (a second `trainers relabel` into it is refused)."""
    if cfg.batch_size < 1:
        raise RelabelError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    with fmt.FolderLock(cfg.out, "trainers relabel"):
        return write_maps(cfg)


def write_maps(cfg: RelabelConfig) -> dict:
    out = Path(cfg.out)
    index = open_parent(cfg)
    teacher = teacher_sha256(cfg.model)
    spec = maps_spec(index, teacher, cfg.batch_size)
    spec_hash = sha256_bytes(fmt.canonical_json(spec))
    done = committed_parts(out, spec_hash)
    shards = sorted(int(s) for s in np.unique(index.shards))
    manifest_path = out / fmt.MAPS_MANIFEST
    if manifest_path.is_file() and set(done) == set(shards):
        return json.loads(manifest_path.read_text())
    device = resolve_device(cfg.device)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    net = open_model(cfg.model, device).eval()
    line = RateLine(len(index), what="relabel", enabled=cfg.progress)
    line.update(sum(d["samples"] for d in done.values()))
    for k in (s for s in shards if s not in done):
        members = predict_part(net, index, k, device=device, batch_size=cfg.batch_size)
        tar = fmt.tar_bytes(members)  # fixed metadata: equal maps give equal bytes
        path = fmt.maps_part_name(k)
        atomic_write(out / path, tar)
        done[k] = {"shard": k, "path": path, "sha256": sha256_bytes(tar), "bytes": len(tar),
                   "samples": len(members), "spec_hash": spec_hash}
        atomic_write((out / path).with_suffix(".json"), json_bytes(done[k]))
        line.update(len(members))
    line.update(0, final=True)
    manifest = {"kind": fmt.MAPS_KIND, "format_version": fmt.FORMAT_VERSION, "spec": spec, "spec_hash": spec_hash,
                "parent": {"dataset_id": index.dataset_id, "view_id": index.view_id, "url": cfg.data},
                "teacher": {"sha256": teacher, "label": model_label(cfg.model),
                            "config": getattr(net, "config", ModelConfig()).to_dict()},
                "samples": sum(done[k]["samples"] for k in shards), "code": {"trainers": __version__},
                "parts": [{x: done[k][x] for x in ("shard", "path", "sha256", "bytes", "samples")} for k in shards]}
    atomic_write(manifest_path, json_bytes(manifest))
    return manifest
