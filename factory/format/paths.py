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
_PATH_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-/"
_NOT_PLAIN = (b"\n\n", b"\n.", b"\n/", b"//", b"/\n", b"/./", b"/.\n", b"/../", b"/..\n")


def check_plain_paths(paths: tuple[str, ...]) -> bool:
    """Whether every shard path is plain (letters, digits, ``_.-`` and ``/``, no ``.``/``..`` part), so
    inside the dataset folder as `check_relative_path` accepts it unchanged: one pass over all of them."""
    try:
        text = "\n".join(paths).encode("ascii")
    except UnicodeEncodeError:
        return False
    return plain_lines(text, len(paths))


def plain_lines(text: bytes, count: int) -> bool:
    """Whether ``text`` is ``count`` plain paths (the rule of ``_PLAIN``), one a line: a few byte searches
    instead of a regex (100,000 paths in milliseconds)."""
    if count < 1:
        return not text
    if text.count(b"\n") != count - 1 or text.translate(None, _PATH_BYTES + b"\n"):
        return False
    if not text or text[:1] in (b".", b"/", b"\n") or text.endswith((b"/", b"/.", b"/..", b"\n")):
        return False
    return not any(bad in text for bad in _NOT_PLAIN)


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


def plain_concat(data: bytes, offsets) -> bool:
    """Whether the strings ``data[offsets[i]:offsets[i + 1]]`` (an Arrow string column's buffers: int64 numpy
    offsets, relative to ``data``) are all plain paths, as `plain_lines` decides, without making a string each:
    a pattern found anywhere in ``data`` (across two paths too) is in one of them or at an edge that is
    refused anyway (a path starting with ``.`` or ``/``, or ending with ``/``)."""
    import numpy as np

    if len(offsets) < 2:
        return True
    raw = np.frombuffer(data, np.uint8)
    starts, ends = offsets[:-1], offsets[1:]
    if (ends <= starts).any() or data.translate(None, _PATH_BYTES):
        return False
    if np.isin(raw[starts], (46, 47)).any() or (raw[ends - 1] == 47).any():  # . or / first, / last
        return False
    if any(bad in data for bad in (b"//", b"/./", b"/../")):
        return False
    dot = (raw[ends - 1] == 46) & (ends - starts >= 2)  # ends with "/." or "/.."
    prev = np.where(dot, raw[np.maximum(ends - 2, 0)], 0)
    if (dot & (prev == 47)).any():
        return False
    two = dot & (prev == 46) & (ends - starts >= 3)
    return not (two & (raw[np.maximum(ends - 3, 0)] == 47)).any()


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
