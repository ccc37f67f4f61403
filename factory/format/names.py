"""The contract's names and content ids: format versions, file and tar member names, index columns,
sample keys, canonical JSON, and the dataset and view ids (content hashes)."""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Iterable

FORMAT_VERSION = 2
# Versions readers accept. 1: no tar offsets in the index (readers scan shards; `factory upgrade` adds
# them), views list accepted rows. 2: index columns tar_offset / tar_size, compact views. 3: the index
# compacted into parts (format/index.py). 4: parts, and the shard entries as a Parquet table beside the
# manifest (format/shardtable.py), written for datasets of many shards (fewer keep version 2).
READ_VERSIONS = (1, 2, 3, 4)
DATASET_KIND = "factory-dataset"
VIEW_KIND = "factory-view"

MANIFEST = "manifest.json"
SHARD_TABLE = "shards.parquet"  # the shard entries of a version-4 manifest (format/shardtable.py)
SHARD_TABLE_SECTION = "shard_table"  # the version-4 manifest's section naming it
SPEC = "spec.json"
CARD = "README.md"
LATENTS = "latents.zarr"
SHARD_DIR = "shards"
INDEX_DIR = "index"
DONE_DIR = "done"
LOCK = ".lock"

# Tar members of one sample: KEY.<ext>. Stock webdataset splits the key at the
# first dot, so keys never contain dots.
EXT_IMAGE = "png"
EXT_MASK = "mask.png"
EXT_RAW_MASK = "rawmask.png"
EXT_LATENT = "latent.npy"
EXT_META = "json"
# Teacher probability maps (`trainers relabel`, `factory relabel`): 8-bit gray PNG, p = value / 255;
# a pixel is teacher foreground when value >= TEACHER_FG_MIN (p >= 0.5).
EXT_TEACHER = "teacher.png"
TEACHER_FG_MIN = 128
# Image codecs of `factory generate --image-codec` -> member extension (manifest "members"."image")
# and the PIL format name a reader must find. Masks are always PNG (lossless).
IMAGE_CODECS = {"png": "png", "webp": "webp", "jpeg": "jpg"}
IMAGE_FORMATS = {"png": "PNG", "webp": "WEBP", "jpg": "JPEG"}
# Foreground rules a spec may record (`factory generate --mask-rule`; factory.masks implements them).
MASK_RULES = ("luminance", "mean-threshold", "operators")
TAR_MTIME = 0  # fixed so shards are byte-reproducible

MAX_SAMPLES = 1 << 40  # rows a manifest may declare
PLATFORM_ID = re.compile(r"^pf-[0-9a-f]{12}$")  # provenance.platform_id: a content id of the record

HIST_BINS = 12  # bins of the index's smoothed histogram (torch.histc over [-1, 1], the authors' filter)

# Limits for data from elsewhere: a tar member or a decoded image larger than these is refused
# before it is read or decoded (a 128 px sample is ~50 KB; a 4096 x 4096 image is 48 MB of RGB).
MAX_MEMBER_BYTES = 64 << 20
MAX_IMAGE_PIXELS = 4096 * 4096

# Index columns every dataset carries (more may follow, e.g. true_iou for
# generators with ground truth). Types are Arrow type names.
INDEX_COLUMNS: dict[str, str] = {
    "key": "string",
    "shard": "int32",
    "row": "int64",
    "fg_ratio_raw": "float32",
    "fg_ratio": "float32",
    "n_components_raw": "int32",
    "n_components": "int32",
    "hist": f"list<float32>[{HIST_BINS}]",
    "hist_maxima": "int32",
    "hist_gray_maxima_inner": "int32",
    "pass_area": "bool",
    "pass_hist_reference": "bool",
    "pass_hist_paper": "bool",
    "tar_offset": "int64",
    "tar_size": "int64",
}
# Where a sample's members lie in its shard (format version 2; absent from version-1 indexes): the bytes
# [tar_offset, tar_offset + tar_size) of the tar are its consecutive tar records, headers included.
OFFSET_COLUMNS = ("tar_offset", "tar_size")


# Index columns a relabelled dataset adds (`factory relabel`): agreement of the GAN mask (M, KEY.mask.png)
# and the teacher's probability p (T = p >= 0.5): IoU(M, T) (1.0 when both are empty), mean p on M,
# mean 1 - p off M (NaN where M, resp. its complement, is empty), the fraction of T, the
# 8-connected components of T.
TEACHER_COLUMNS: dict[str, str] = {
    "teacher_iou": "float32",
    "teacher_conf_fg": "float32",
    "teacher_conf_bg": "float32",
    "teacher_fg_ratio": "float32",
    "teacher_components": "int32",
}

# Teacher maps (`trainers relabel --out MAPS`): MAPS/parts/NNNNNN.tar holds KEY.teacher.png for the
# accepted rows of the parent's shard NNNNNN (keys of the parent dataset), MAPS/parts/NNNNNN.json marks a
# part done, MAPS/maps.json (written last) names the parent, the teacher and every part.
MAPS_KIND = "teacher-maps"
MAPS_MANIFEST = "maps.json"
MAPS_PART_DIR = "parts"


def shard_name(shard: int) -> str:
    return f"{SHARD_DIR}/{shard:06d}.tar"


def index_name(shard: int) -> str:
    return f"{INDEX_DIR}/{shard:06d}.parquet"


def done_name(shard: int) -> str:
    return f"{DONE_DIR}/{shard:06d}.json"


def sample_key(row: int) -> str:
    """Key of the sample at global row `row` (its row in latents.zarr)."""
    return f"{row:010d}"


def key_row(key: str) -> int:
    return int(key)


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dataset_id(shards: Iterable[dict], latents_sha256: str | None = None, format_version: int = FORMAT_VERSION) -> str:
    """Content hash of a dataset: its format version, its shards' (path, sha256, samples, index_sha256)."""
    body = {
        "format_version": format_version,
        "shards": [
            {k: s[k] for k in ("path", "sha256", "samples", "index_sha256")} for s in shards
        ],
        "latents_sha256": latents_sha256,
    }
    return "ds-" + sha256_bytes(canonical_json(body))[:32]


def dataset_id_of_columns(paths: list, sha256s: list, samples: list, index_sha256s: list, *,
                          latents_sha256: str | None, format_version: int) -> str:
    """`dataset_id` of shard entries given as columns (shard order; strings and integers, as a checked manifest
    holds them): the same canonical JSON, written directly (100,000 shards in a tenth of the time)."""
    from json.encoder import encode_basestring_ascii as q

    if not all(type(n) is int for n in samples):
        raise TypeError("samples must be integers")
    shards = ",".join([f'{{"index_sha256":{q(i)},"path":{q(p)},"samples":{n},"sha256":{q(h)}}}'
                       for p, h, n, i in zip(paths, sha256s, samples, index_sha256s)])
    body = f'{{"format_version":{json.dumps(format_version)},"latents_sha256":{json.dumps(latents_sha256)},' \
           f'"shards":[{shards}]}}'
    return "ds-" + sha256_bytes(body.encode())[:32]


def view_id(parent_id: str, predicate: str, accepted_digest: str) -> str:
    """Content id of a view: its parent dataset id, canonical predicate and the sha256 of its accepted rows
    (`accepted_sha256`)."""
    body = {"parent": parent_id, "predicate": predicate, "accepted": accepted_digest}
    return "view-" + sha256_bytes(canonical_json(body))[:32]


def maps_part_name(shard: int) -> str:
    return f"{MAPS_PART_DIR}/{shard:06d}.tar"
