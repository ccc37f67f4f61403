"""The data contract shared by `factory` (writer) and `trainers` (reader).

Everything a consumer needs to read a dataset lives in this package and imports nothing
else of `factory`: names of files and tar members, the index schema, manifest
validation (`schema`: every field, JSON limits), dataset ids, the fsspec helpers to open
a dataset anywhere (`store`: reachability, one-line storage errors), the streamed sha256
check (`hashing`) and the one-writer locks (`lock`).
The prose version of this contract is docs/format.md; bump FORMAT_VERSION on
any incompatible change.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Iterable

FORMAT_VERSION = 2
# Versions readers accept. 1: no tar offsets in the index (readers scan shards; `factory upgrade` adds
# them), views list accepted rows. 2: index columns tar_offset / tar_size, compact views.
READ_VERSIONS = (1, 2)
DATASET_KIND = "factory-dataset"
VIEW_KIND = "factory-view"

MANIFEST = "manifest.json"
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


class FactoryError(Exception):
    """The one root of every error a user can cause (input, files, environment), in factory and in
    trainers (which sees only this contract): reported by each CLI as one line, no traceback."""


class FormatError(FactoryError, ValueError):
    """A dataset, view or manifest does not follow the contract (message names the file)."""


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


def view_id(parent_id: str, predicate: str, accepted_digest: str) -> str:
    """Content id of a view: its parent dataset id, canonical predicate and the sha256 of its accepted rows
    (`accepted_sha256`)."""
    body = {"parent": parent_id, "predicate": predicate, "accepted": accepted_digest}
    return "view-" + sha256_bytes(canonical_json(body))[:32]


# ---------------------------------------------------------------- paths / storage

_REMOTE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_remote_url(path: str) -> bool:
    return bool(_REMOTE.match(path))


def check_relative_path(path: str, where: str, allow_remote: bool = False) -> str:
    """A shard path from a manifest must stay inside the dataset folder."""
    if not isinstance(path, str) or not path:
        raise FormatError(f"{where}: shard path must be a non-empty string, got {path!r}")
    if is_remote_url(path):
        if allow_remote:
            return path
        raise FormatError(
            f"{where}: shard path {path!r} is a remote URL; pass --allow-remote-shards to trust it"
        )
    if path.startswith(("/", "\\")) or re.match(r"^[a-zA-Z]:", path):
        raise FormatError(f"{where}: shard path {path!r} is absolute; it must be relative to the dataset")
    parts = re.split(r"[\\/]", path)
    if ".." in parts:
        raise FormatError(f"{where}: shard path {path!r} leaves the dataset folder ('..')")
    if "\x00" in path:
        raise FormatError(f"{where}: shard path {path!r} contains a NUL byte")
    return posixpath.normpath(path)


def join(base: str, rel: str) -> str:
    """Join a dataset URL or folder with a relative path (or return a trusted remote URL)."""
    if is_remote_url(rel):
        return rel
    return base.rstrip("/") + "/" + rel


def get_fs(url: str):
    """fsspec filesystem and path for a URL or local folder."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    check_store(url, fs)  # s3: the endpoint answers and the bucket exists (once per process)
    return fs, path


def read_bytes(url: str, limit: int | None = None) -> bytes:
    """The bytes at ``url``; with ``limit``, at most limit + 1 of them (the caller refuses more)."""
    fs, path = get_fs(url)
    with fs.open(path, "rb") as f:
        return f.read() if limit is None else f.read(limit + 1)


def read_json(url: str, what: str = "file") -> dict:
    """A JSON object from elsewhere, within the size and depth limits (``schema.loads_json``)."""
    try:
        data = read_bytes(url, MAX_JSON_BYTES)
    except FileNotFoundError:
        raise FormatError(f"{what} not found: {url}") from None
    except OSError as e:
        raise FormatError(f"cannot read {what} {url}: {e}") from None
    obj = loads_json(data, f"{what} {url}")
    if not isinstance(obj, dict):
        raise FormatError(f"{what} {url} must hold a JSON object, got {type(obj).__name__}")
    return obj


# ---------------------------------------------------------------- manifests

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _require(obj: dict, key: str, types, where: str):
    if key not in obj:
        raise FormatError(f"{where}: missing field {key!r}")
    val = obj[key]
    if not isinstance(val, types) or (isinstance(val, bool) and bool not in _as_tuple(types)):
        raise FormatError(f"{where}: field {key!r} has type {type(val).__name__}")
    return val


def _as_tuple(t):
    return t if isinstance(t, tuple) else (t,)


def check_version(obj: dict, where: str) -> int:
    """The object's format_version when this code reads it, else FormatError."""
    version = obj.get("format_version")
    if version not in READ_VERSIONS or isinstance(version, bool):
        raise FormatError(f"{where}: format_version {version!r} is not supported (this code reads "
                          f"{', '.join(map(str, READ_VERSIONS))})")
    return version


def has_offsets(manifest: dict) -> bool:
    """Whether a dataset's index records each sample's byte range (format version 2 on)."""
    return manifest.get("format_version", 1) >= 2


def validate_manifest(obj: Any, where: str = "manifest", allow_remote_shards: bool = False) -> dict:
    """Check a dataset manifest from an untrusted source; return it unchanged or raise FormatError."""
    if not isinstance(obj, dict):
        raise FormatError(f"{where}: manifest must be a JSON object")
    kind = obj.get("kind")
    if kind != DATASET_KIND:
        raise FormatError(f"{where}: kind is {kind!r}, expected {DATASET_KIND!r}")
    check_version(obj, where)
    _require(obj, "dataset_id", str, where)
    _require(obj, "samples", int, where)
    _require(obj, "dim_z", int, where)
    check_manifest_fields(obj, where)
    shards = _require(obj, "shards", list, where)
    total = 0
    seen = set()
    for i, s in enumerate(shards):
        w = f"{where}: shards[{i}]"
        if not isinstance(s, dict):
            raise FormatError(f"{w} must be an object")
        sid = _require(s, "shard", int, w)
        if sid in seen:
            raise FormatError(f"{w}: shard id {sid} listed twice")
        seen.add(sid)
        check_relative_path(_require(s, "path", str, w), w, allow_remote_shards)
        check_relative_path(_require(s, "index", str, w), w, allow_remote_shards)
        for h in ("sha256", "index_sha256"):
            if not _HEX64.match(str(_require(s, h, str, w))):
                raise FormatError(f"{w}: {h} is not a 64-digit lowercase hex digest")
        n = _require(s, "samples", int, w)
        b = _require(s, "bytes", int, w)
        first = _require(s, "first_row", int, w)
        if n < 0 or b < 0 or first < 0:
            raise FormatError(f"{w}: samples, bytes and first_row must be >= 0")
        check_shard_fields(s, w)
        total += n
    if total != obj["samples"]:
        raise FormatError(f"{where}: samples is {obj['samples']} but the shards hold {total}")
    return obj


def maps_part_name(shard: int) -> str:
    return f"{MAPS_PART_DIR}/{shard:06d}.tar"


def validate_maps(obj: Any, where: str = "maps") -> dict:
    """Check a teacher-maps manifest (maps.json); return it unchanged or raise FormatError."""
    if not isinstance(obj, dict) or obj.get("kind") != MAPS_KIND:
        raise FormatError(f"{where}: not a teacher-maps manifest (kind {MAPS_KIND!r}); make one with trainers relabel")
    check_version(obj, where)
    parent = _require(obj, "parent", dict, where)
    _require(parent, "dataset_id", str, f"{where}: parent")
    teacher = _require(obj, "teacher", dict, where)
    if not _HEX64.match(str(_require(teacher, "sha256", str, f"{where}: teacher"))):
        raise FormatError(f"{where}: teacher sha256 is not a 64-digit lowercase hex digest")
    _require(obj, "samples", int, where)
    total = 0
    for i, p in enumerate(_require(obj, "parts", list, where)):
        w = f"{where}: parts[{i}]"
        if not isinstance(p, dict):
            raise FormatError(f"{w} must be an object")
        _require(p, "shard", int, w)
        check_relative_path(_require(p, "path", str, w), w)
        if not _HEX64.match(str(_require(p, "sha256", str, w))):
            raise FormatError(f"{w}: sha256 is not a 64-digit lowercase hex digest")
        total += _require(p, "samples", int, w)
    if total != obj["samples"]:
        raise FormatError(f"{where}: samples is {obj['samples']} but the parts hold {total}")
    return obj


def validate_view(obj: Any, where: str = "view") -> dict:
    if not isinstance(obj, dict):
        raise FormatError(f"{where}: view must be a JSON object")
    if obj.get("kind") != VIEW_KIND:
        raise FormatError(f"{where}: kind is {obj.get('kind')!r}, expected {VIEW_KIND!r}")
    version = check_version(obj, where)
    _require(obj, "view_id", str, where)
    parent = _require(obj, "parent", dict, where)
    _require(parent, "dataset_id", str, f"{where}: parent")
    _require(parent, "url", str, f"{where}: parent")
    _require(obj, "samples", int, where)
    total = check_accepted(_require(obj, "accepted", dict, where), version, where)
    if total != obj["samples"]:
        raise FormatError(f"{where}: samples is {obj['samples']} but accepted holds {total}")
    return obj


@dataclass(frozen=True)
class Resolved:
    """A dataset or view opened by URL: the dataset root, its manifest, and the accepted rows."""

    root: str
    manifest: dict
    view: dict | None
    accepted: "AcceptedRows | None"  # shard -> sorted accepted global rows (decoded per shard); None = all

    @property
    def samples(self) -> int:
        if self.view is not None:
            return self.view["samples"]
        return self.manifest["samples"]

    def shard_urls(self) -> list[tuple[int, str]]:
        return [(s["shard"], join(self.root, s["path"])) for s in self.manifest["shards"]]


def manifest_url(url: str) -> str:
    url = url.rstrip("/")
    if url.endswith(".json"):
        return url
    return url + "/" + MANIFEST


def open_dataset(url: str, allow_remote_shards: bool = False) -> Resolved:
    """Open a dataset folder/URL, its manifest.json, or a view JSON; views resolve to their parent."""
    murl = manifest_url(url)
    not_ours = f"{url} is not a dataset folder, a manifest or a view"
    if not is_remote_url(url) and not url.rstrip("/").endswith(".json") and os.path.isfile(url):
        if url.endswith(".toml"):
            not_ours += f" (a recipe? make its dataset with: factory generate --recipe {url} --out FOLDER)"
        raise FormatError(not_ours)
    try:
        obj = read_json(murl, "manifest")
    except FormatError:
        if not is_remote_url(url) and os.path.isfile(url.rstrip("/")) and murl != url.rstrip("/"):
            raise FormatError(not_ours) from None
        raise
    if murl.endswith(".json") and murl == url.rstrip("/") and obj.get("kind") not in (VIEW_KIND, DATASET_KIND):
        raise FormatError(f"{not_ours} (its \"kind\" is {obj.get('kind')!r})")
    if obj.get("kind") == VIEW_KIND:
        view = validate_view(obj, murl)
        parent_url = view["parent"]["url"]
        if not is_remote_url(parent_url) and not parent_url.startswith("/"):
            parent_url = join(posixpath.dirname(murl) if is_remote_url(murl) else _dirname(murl), parent_url)
        parent = open_dataset(parent_url, allow_remote_shards)
        if parent.view is not None:
            raise FormatError(f"{murl}: parent of a view must be a dataset (views of views are flattened)")
        if view["parent"]["dataset_id"] not in parent_ids(parent.manifest):
            raise FormatError(
                f"{murl}: parent dataset at {parent_url} has id {parent.manifest['dataset_id']}, "
                f"the view was made from {view['parent']['dataset_id']} (parent changed)"
            )
        accepted = AcceptedRows(view["accepted"], view["format_version"], murl)
        return Resolved(parent.root, parent.manifest, view, accepted)
    manifest = validate_manifest(obj, murl, allow_remote_shards)
    root = murl[: -len(MANIFEST) - 1] if murl.endswith("/" + MANIFEST) else _dirname(murl)
    return Resolved(root, manifest, None, None)


def parent_ids(manifest: dict) -> tuple[str, ...]:
    """Ids a view's parent may carry: the dataset id, and the id it had before `factory upgrade`
    (same samples and rows, so views made before the upgrade still resolve)."""
    before = (manifest.get("upgraded_from") or {}).get("dataset_id")
    return (manifest["dataset_id"],) + ((before,) if isinstance(before, str) else ())


def _dirname(path: str) -> str:
    return os.path.dirname(os.path.abspath(path)) if not is_remote_url(path) else posixpath.dirname(path)


def parent_url_for(view_url: str, root: str) -> str:
    """Parent URL as stored in a view: relative when both are local, else absolute."""
    if is_remote_url(view_url) or is_remote_url(root):
        if is_remote_url(root):
            return root
        return os.path.abspath(root)
    rel = os.path.relpath(os.path.abspath(root), os.path.dirname(os.path.abspath(view_url)))
    return rel.replace(os.sep, "/")


# The contract's other rooms (their names are part of this module's API).
from factory.format.hashing import HashingReader  # noqa: E402,F401
from factory.format.lock import FolderBusy, FolderLock, StoreLock, pid_alive  # noqa: E402,F401
from factory.format.schema import (  # noqa: E402,F401
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    MAX_RESOLUTION,
    check_manifest,
    check_manifest_fields,
    check_shard_fields,
    loads_json,
    manifest_problems,
    platform_record_id,
)
from factory.format.store import check_store, silence_orphaned_tasks, storage_error, user_error  # noqa: E402,F401
from factory.format.tar import (  # noqa: E402,F401
    MAX_SAMPLE_BYTES,
    check_member,
    check_member_size,
    image_member,
    member_ranges,
    open_image_checked,
    read_range,
    safe_tar_members,
    sample_members,
    split_member,
)
from factory.format.views import (  # noqa: E402,F401
    AcceptedRows,
    accepted_sha256,
    check_accepted,
    decode_rows,
    encode_accepted,
    encode_rows,
)
