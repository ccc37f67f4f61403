"""Opening a dataset or a view by URL (`open_dataset`): the manifest read and validated, a view
resolved to its parent dataset (checked by id) and its accepted rows."""
from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass

from factory.format.errors import FormatError
from factory.format.names import DATASET_KIND, MANIFEST, VIEW_KIND, sha256_bytes
from factory.format.paths import is_remote_url, join, manifest_url
from factory.format.schema import check_version, json_object, read_limited, validate_manifest, validate_view
from factory.format.shardtable import SECTION, TABLE_VERSION, columns_of, has_table, read_shard_table
from factory.format.views import AcceptedRows


@dataclass(frozen=True)
class Resolved:
    """A dataset or view opened by URL: the dataset root, its manifest, and the accepted rows."""

    root: str
    manifest: dict
    view: dict | None
    accepted: AcceptedRows | None  # shard -> sorted accepted global rows (decoded per shard); None = all
    manifest_sha256: str = ""  # of the bytes of ROOT/manifest.json parsed into `manifest` ("" if not read so)

    @property
    def samples(self) -> int:
        if self.view is not None:
            return self.view["samples"]
        return self.manifest["samples"]

    def shard_urls(self) -> list[tuple[int, str]]:
        ids, paths = columns_of(self.manifest["shards"], "shard", "path")
        return [(k, join(self.root, p)) for k, p in zip(ids.tolist(), paths)]


def open_dataset(url: str, allow_remote_shards: bool = False) -> Resolved:
    """Open a dataset folder/URL, its manifest.json, or a view JSON; views resolve to their parent."""
    murl = manifest_url(url)
    not_ours = f"{url} is not a dataset folder, a manifest or a view"
    if not is_remote_url(url) and not url.rstrip("/").endswith(".json") and os.path.isfile(url):
        if url.endswith(".toml"):
            not_ours += f" (a recipe? make its dataset with: factory generate --recipe {url} --out FOLDER)"
        raise FormatError(not_ours)
    try:
        obj, digest = _read_manifest(murl, allow_remote_shards)
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
        return Resolved(parent.root, parent.manifest, view, accepted, parent.manifest_sha256)
    root = murl[: -len(MANIFEST) - 1] if murl.endswith("/" + MANIFEST) else _dirname(murl)
    known = digest in _VALID.get(allow_remote_shards, ())
    _load_table(obj, root, murl, checked=known)
    if not known:
        validate_manifest(obj, murl, allow_remote_shards)
        _VALID.setdefault(allow_remote_shards, set()).add(digest)
    return Resolved(root, obj, None, None, digest if murl.endswith("/" + MANIFEST) else "")


def _load_table(obj: dict, root: str, murl: str, *, checked: bool) -> None:
    """A version-4 manifest's shard entries read from its shard table into ``obj["shards"]`` (a
    `ShardTable`); a manifest that names a table and lists shards, or names one in another version, refused."""
    if obj.get("kind") != DATASET_KIND:
        return
    version = check_version(obj, murl)
    if not has_table(obj) and version < TABLE_VERSION:
        return
    if not has_table(obj):
        raise FormatError(f"{murl}: format version {version} keeps its shard entries in a shard table, and the "
                          f"manifest names none ({SECTION!r})")
    if version < TABLE_VERSION:
        raise FormatError(f"{murl}: a {SECTION!r} section needs format version {TABLE_VERSION}, not {version}")
    if "shards" in obj:
        raise FormatError(f"{murl}: a manifest naming a shard table lists no shards itself (both are here)")
    obj["shards"] = read_shard_table(root, obj, murl, checked=checked)


_VALID: dict[bool, set[str]] = {}  # remote shards allowed -> sha256 of the manifest bytes validated so


def _read_manifest(murl: str, allow_remote_shards: bool) -> tuple[dict, str]:
    """The JSON object at ``murl`` and the sha256 of its bytes; bytes already checked in this process
    (same digest) are parsed again, not checked again."""
    data = read_limited(murl, "manifest")
    digest = sha256_bytes(data)
    if digest in _VALID.get(allow_remote_shards, ()):
        return json.loads(data), digest
    return json_object(data, f"manifest {murl}"), digest


def parent_ids(manifest: dict) -> tuple[str, ...]:
    """Ids a view's parent may carry: the dataset id, and the id it had before `factory upgrade`
    (same samples and rows, so views made before the upgrade still resolve)."""
    before = (manifest.get("upgraded_from") or {}).get("dataset_id")
    return (manifest["dataset_id"],) + ((before,) if isinstance(before, str) else ())


def _dirname(path: str) -> str:
    return os.path.dirname(os.path.abspath(path)) if not is_remote_url(path) else posixpath.dirname(path)
