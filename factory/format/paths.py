"""Paths inside a dataset: remote URLs told from local paths, shard paths kept inside the dataset
folder, joins of a dataset URL with a relative path, a manifest's URL, a view's parent URL."""
from __future__ import annotations

import os
import posixpath
import re

from factory.format.errors import FormatError
from factory.format.names import MANIFEST

_REMOTE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_remote_url(path: str) -> bool:
    return bool(_REMOTE.match(path))


# the plain relative paths writers write (e.g. shards/000001.tar, index/000000-001048.parquet): names of
# letters, digits, _ - . (never "." or ".." alone) separated by single slashes; normalised already
_PLAIN_PATH = r"(?!\.\.?(?:/|$))[A-Za-z0-9_-][A-Za-z0-9_.-]*(?:/(?!\.\.?(?:/|$))[A-Za-z0-9_.-]+)*"
_PLAIN = re.compile(rf"^{_PLAIN_PATH}$")
_PLAIN_LINES = re.compile(rf"(?:{_PLAIN_PATH}\n)*{_PLAIN_PATH}", re.M)  # plain paths, one a line


def check_plain_paths(paths: tuple[str, ...]) -> bool:
    """Whether every shard path is plain (letters, digits, ``_.-`` and ``/``, no ``.``/``..`` part), so
    inside the dataset folder as `check_relative_path` accepts it unchanged: one match over all of them."""
    text = "\n".join(paths)
    return text.count("\n") == len(paths) - 1 and _PLAIN_LINES.fullmatch(text) is not None


def check_relative_path(path: str, where: str, allow_remote: bool = False) -> str:
    """A shard path from a manifest must stay inside the dataset folder."""
    if isinstance(path, str) and _PLAIN.match(path):  # the common case, in one match (100k shards: 2 paths each)
        return path
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


def manifest_url(url: str) -> str:
    url = url.rstrip("/")
    if url.endswith(".json"):
        return url
    return url + "/" + MANIFEST


def parent_url_for(view_url: str, root: str) -> str:
    """Parent URL as stored in a view: relative when both are local, else absolute."""
    if is_remote_url(view_url) or is_remote_url(root):
        if is_remote_url(root):
            return root
        return os.path.abspath(root)
    rel = os.path.relpath(os.path.abspath(root), os.path.dirname(os.path.abspath(view_url)))
    return rel.replace(os.sep, "/")
