"""The reading room for tar shards: every reader of a shard's samples (verify, `dataset.reader`, browse,
regenerate, trainers' stream and random access) reads through here, and only this package imports
``tarfile``.

* which shard: `ShardRef` (a manifest entry as read: URL, rows, digest, size, the member extensions every
  sample holds), `shard_entry` (the entry holding a row), `shard_ref`;
* how: a whole shard through the hashing reader (`read_whole`, `hash_shard`), a sequential pass that
  skips unwanted data (`stream_members`), one sample by its byte range (`range_members`, `sample_members`,
  `read_range`), encoded records (`record_members`);
* what may be in it: safe members (`safe_tar_members`, `check_member`: regular files, flat KEY.EXT names,
  rows of the shard) and exactly the members the manifest names, once each (`SampleMembers`): an extra
  member (KEY.sh) or a second KEY.png is one FormatError line naming the shard and the key;
* one error translation (`read_errors`): a missing, unreadable or corrupt shard is one FormatError line.

Also image checks and where each sample's members lie in its tar (`member_ranges`, the index's
``tar_offset`` / ``tar_size`` columns since format version 2).
"""
from __future__ import annotations

import contextlib
import io
import re
import tarfile
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from factory.format.errors import FormatError
from factory.format.hashing import CHUNK, HashingReader
from factory.format.names import EXT_IMAGE, IMAGE_FORMATS, MAX_IMAGE_PIXELS, MAX_MEMBER_BYTES, key_row, sample_key
from factory.format.paths import join
from factory.format.shardtable import columns_of
from factory.format.store import get_fs


def safe_tar_members(data: bytes, where: str = "tar") -> list[tuple[str, bytes]]:
    """(name, bytes) of every member of an in-memory tar, in tar order; raises FormatError on anything unsafe.

    Refused: member names that are absolute or contain '..', links, devices,
    directories and any other non-regular member; a truncated or corrupt tar.
    """
    out = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            for m in tf:
                name = m.name
                if not name or name.startswith(("/", "\\")) or re.match(r"^[a-zA-Z]:", name):
                    raise FormatError(f"{where}: member {name!r} has an absolute path")
                if ".." in re.split(r"[\\/]", name) or "\x00" in name:
                    raise FormatError(f"{where}: member {name!r} leaves the archive folder ('..')")
                if m.issym() or m.islnk():
                    raise FormatError(f"{where}: member {name!r} is a link; shards hold regular files only")
                if not m.isreg():
                    raise FormatError(f"{where}: member {name!r} is not a regular file")
                check_member_size(name, m.size, where)
                f = tf.extractfile(m)
                body = f.read() if f is not None else b""
                if len(body) != m.size:
                    raise FormatError(f"{where}: member {name!r} is truncated")
                out.append((name, body))
    except tarfile.TarError as e:
        raise FormatError(f"{where}: not a readable tar ({e})") from None
    except EOFError:
        raise FormatError(f"{where}: tar is truncated") from None
    return out


_KEY = re.compile(r"^[0-9]+$")


def check_member(ti, *, url: str, shard: int, first_row: int, samples: int) -> tuple[int, str]:
    """Check one tar header (a ``tarfile.TarInfo``) of shard ``shard`` at ``url`` before its data is read;
    return ``(row, extension)``.

    The shard holds rows ``first_row .. first_row + samples - 1``. Refused with FormatError: links,
    folders and other non-regular members; empty or absolute names and NUL bytes; a declared size over
    MAX_MEMBER_BYTES; '..'; names inside a folder; names that are not KEY.EXT with a numeric key; rows
    outside the shard.
    """
    name = ti.name
    where = f"shard {url}: member {name!r}"
    if not ti.isreg():
        kind = "link" if (ti.issym() or ti.islnk()) else "directory" if ti.isdir() else "special file"
        raise FormatError(f"{where} is a {kind}; shards hold regular files only (corrupt or hostile shard)")
    if not name or "\x00" in name or name.startswith(("/", "\\")) or re.match(r"^[a-zA-Z]:", name):
        raise FormatError(f"{where} has an absolute or empty name")
    if ti.size > MAX_MEMBER_BYTES:
        raise FormatError(f"{where} declares {ti.size} bytes, over the {MAX_MEMBER_BYTES} byte limit")
    parts = re.split(r"[\\/]", name)
    if ".." in parts:
        raise FormatError(f"{where} leaves the shard ('..')")
    if len(parts) != 1:
        raise FormatError(f"{where} is inside a folder; shard members are flat KEY.EXT names")
    key, dot, ext = name.partition(".")
    if not dot or not _KEY.match(key):
        raise FormatError(f"{where} is not KEY.EXT with a numeric key")
    row = key_row(key)
    if not first_row <= row < first_row + samples:
        raise FormatError(f"{where}: row {row} does not belong to shard {shard} "
                          f"(rows {first_row}..{first_row + samples - 1})")
    return row, ext


def check_member_size(name: str, size: int, where: str) -> None:
    if size > MAX_MEMBER_BYTES:
        raise FormatError(
            f"{where}: member {name!r} declares {size} bytes, over the {MAX_MEMBER_BYTES} byte limit for a sample member"
        )


def open_image_checked(data: bytes, where: str, *, side: int | None = None):
    """PIL image of encoded bytes whose header was checked before any pixel is decoded: at most
    MAX_IMAGE_PIXELS, and exactly ``side`` x ``side`` when given (the manifest's resolution)."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
    except Exception as e:  # PIL raises many types for corrupt files
        raise FormatError(f"{where}: not a readable image ({e})") from None
    w, h = im.size
    if side is not None and (w, h) != (side, side):
        im.close()
        raise FormatError(f"{where}: image header declares {w}x{h} pixels, the manifest's resolution is "
                          f"{side}x{side} (not decoded)")
    if w * h > MAX_IMAGE_PIXELS:
        im.close()
        raise FormatError(
            f"{where}: image header declares {w}x{h} pixels, over the {MAX_IMAGE_PIXELS} pixel limit "
            "(decompression bomb?)"
        )
    return im


def image_member(manifest: dict) -> str:
    """Extension of the image member of a dataset's samples (``png`` unless generated with another codec)."""
    ext = (manifest.get("members") or {}).get("image", EXT_IMAGE)
    if ext not in IMAGE_FORMATS:
        raise FormatError(f"manifest: image member '.{ext}' is not one of {', '.join(IMAGE_FORMATS)}")
    return ext


def split_member(name: str) -> tuple[str, str]:
    """KEY.EXT -> (KEY, EXT), splitting at the first dot like stock webdataset."""
    base = name.rsplit("/", 1)[-1]
    key, _, ext = base.partition(".")
    prefix = name[: len(name) - len(base)]
    return prefix + key, ext


# ---------------------------------------------------------------- one sample by byte range
# In a shard, a sample's members are consecutive tar records (header, data, padding), so the bytes
# [tar_offset, tar_offset + tar_size) of the tar hold every member of that sample, headers included.

MAX_SAMPLE_BYTES = 8 * MAX_MEMBER_BYTES  # a byte range larger than this is refused before it is read


def member_ranges(data: bytes, where: str = "tar") -> dict[str, tuple[int, int]]:
    """KEY -> (offset, size) of each sample's records in a tar's bytes; FormatError when a sample's
    members are not consecutive (such a tar cannot be read by range)."""
    out: dict[str, tuple[int, int]] = {}
    cur, start, end = None, 0, 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            for m in tf:
                key = split_member(m.name)[0]
                stop = m.offset_data + m.size + (-m.size) % tarfile.BLOCKSIZE
                if key != cur:
                    if key in out:
                        raise FormatError(f"{where}: members of sample {key} are not consecutive")
                    if cur is not None:
                        out[cur] = (start, end - start)
                    cur, start = key, m.offset
                end = stop
    except tarfile.TarError as e:
        raise FormatError(f"{where}: not a readable tar ({e})") from None
    if cur is not None:
        out[cur] = (start, end - start)
    return out


def sample_members(data: bytes, key: str, where: str = "sample", *,
                   exts: Iterable[str] | None = None) -> dict[str, bytes]:
    """EXT -> bytes of the members of sample ``key`` from its byte range ``[tar_offset, tar_offset + tar_size)``
    of a shard (checked as `safe_tar_members` does; every member must be ``KEY.EXT``, once, and with
    ``exts`` one of those extensions)."""
    got = SampleMembers(where, exts)
    for name, body in safe_tar_members(data + b"\0" * (2 * tarfile.BLOCKSIZE), where):
        k, ext = split_member(name)
        if k != key or not ext:
            raise FormatError(f"{where}: member {name!r} is not a member of sample {key} (index offsets stale?)")
        got.add(k, ext, body)
    if not got.samples:
        raise FormatError(f"{where}: no member of sample {key} in its byte range")
    return got.samples[key]


def read_range(url: str, offset: int, size: int, f=None) -> bytes:
    """Bytes [offset, offset + size) of a local file or fsspec URL, in one read (one range GET on object stores);
    from the open copy ``f`` of that file when given."""
    if not 0 < size <= MAX_SAMPLE_BYTES or offset < 0:
        raise FormatError(f"{url}: byte range {offset}+{size} is not a sample's range (index corrupt?)")
    with read_errors(url):
        if f is None:
            fs, path = get_fs(url)
            data = fs.cat_file(path, start=offset, end=offset + size)
        else:
            f.seek(offset)
            data = f.read(size)
    if len(data) != size:
        raise FormatError(f"{url}: byte range {offset}+{size} lies past the end of the file (truncated shard?)")
    return data


# ---------------------------------------------------------------- exactly the members the manifest names

class SampleMembers:
    """key -> {EXT: bytes} gathered member by member, refusing what the index does not name: a member twice
    (a second KEY.png) or, with ``exts``, an extension outside them (KEY.sh, KEY.cls); one FormatError line
    naming ``where`` (the shard) and the key. ``add`` with ``body=None`` checks a header whose data is
    skipped."""

    def __init__(self, where: str, exts: Iterable[str] | None = None):
        self.where = where
        self.exts = None if exts is None else frozenset(exts)
        self.samples: dict[str, dict[str, bytes]] = {}
        self.seen: set[tuple[str, str]] = set()

    def add(self, key: str, ext: str, body: bytes | None) -> None:
        if (key, ext) in self.seen:
            raise FormatError(f"{self.where}: key {key} has member {key}.{ext} twice (a duplicated member; a "
                              "sample holds each member once)")
        if self.exts is not None and ext not in self.exts:
            raise FormatError(f"{self.where}: key {key} has member {key}.{ext}, which the manifest does not name "
                              f"(an extra member; samples hold {', '.join(sorted(self.exts))})")
        self.seen.add((key, ext))
        if body is not None:
            self.samples.setdefault(key, {})[ext] = body


def member_exts(manifest: dict) -> frozenset[str] | None:
    """The member extensions every sample of a dataset holds (its manifest's ``members``; None when the
    manifest does not list them)."""
    members = manifest.get("members")
    return frozenset(members.values()) if isinstance(members, dict) and members else None


# ---------------------------------------------------------------- which shard

@dataclass(frozen=True)
class ShardRef:
    """One shard as the room reads it: its id and URL, its rows ``first_row .. first_row + samples - 1``, the
    manifest's sha256 and size (None: not checked), the member extensions every sample holds (None: any)."""

    shard: int
    url: str
    first_row: int
    samples: int
    sha256: str | None = None
    bytes: int | None = None
    exts: frozenset[str] | None = None


def shard_ref(root: str, manifest: dict, entry: dict) -> ShardRef:
    """The manifest entry ``entry`` of the dataset at ``root`` as a ShardRef."""
    return ShardRef(entry["shard"], join(root, entry["path"]), entry["first_row"], entry["samples"],
                    entry.get("sha256"), entry.get("bytes"), member_exts(manifest))


def shard_entry(manifest: dict, row: int) -> dict:
    """The manifest's shard entry holding global row ``row`` (FormatError when none does)."""
    firsts, counts = columns_of(manifest["shards"], "first_row", "samples")
    hit = np.flatnonzero((firsts <= row) & (row < firsts + counts)) if 0 <= row < 1 << 62 else ()
    if len(hit):
        return manifest["shards"][int(hit[0])]
    raise FormatError(f"dataset {manifest['dataset_id']} has no sample with row {row}")


def check_key(shard: ShardRef, key: str) -> int:
    """The row of ``key`` when it is a sample key of ``shard`` (the member rule of `check_member`)."""
    row, _ = check_member(tarfile.TarInfo(f"{key}.json"), url=shard.url, shard=shard.shard,
                          first_row=shard.first_row, samples=shard.samples)
    return row


# ---------------------------------------------------------------- one error translation

@contextlib.contextmanager
def read_errors(url: str):
    """Errors met reading the shard at ``url`` as one FormatError line naming it."""
    try:
        yield
    except FormatError:
        raise
    except FileNotFoundError:
        raise FormatError(f"shard missing: {url}") from None
    except tarfile.TarError as e:
        raise FormatError(f"shard {url}: not a readable tar ({e})") from None
    except EOFError:
        raise FormatError(f"shard {url}: tar is truncated") from None
    except OSError as e:
        raise FormatError(f"cannot read shard {url}: {e}") from None


def open_shard(url: str):
    """The shard's bytes as a binary file (local or fsspec URL)."""
    fs, path = get_fs(url)
    return fs.open(path, "rb")


# ---------------------------------------------------------------- whole shards, through the hashing reader

def read_whole(shard: ShardRef, *, check: bool = True) -> tuple[bytes, str]:
    """(bytes, sha256) of a whole shard, hashed as it is read; with ``check`` (and the manifest's sha256), a
    size or digest that differs is a FormatError naming the shard."""
    chunks: list[bytes] = []
    with read_errors(shard.url), open_shard(shard.url) as f:
        r = HashingReader(f, sha256=shard.sha256 or "", size=shard.bytes, where=f"shard {shard.url}",
                          sink=chunks.append)
        if check and shard.sha256 is not None:
            digest = r.finish()
        else:
            while r.read(CHUNK):
                pass
            digest = r.h.hexdigest()
    return b"".join(chunks), digest


def hash_shard(shard: ShardRef, f=None) -> None:
    """Hash the whole of ``shard`` (or the open copy ``f`` of it) against the manifest; FormatError naming it."""
    with read_errors(shard.url), (contextlib.nullcontext(f) if f is not None else open_shard(shard.url)) as raw:
        HashingReader(raw, sha256=shard.sha256, size=shard.bytes, where=f"shard {shard.url}").finish()


def shard_samples(data: bytes, shard: ShardRef) -> dict[str, dict[str, bytes]]:
    """key -> {EXT: bytes} of a whole shard's bytes: safe members, each named by the manifest, once."""
    where = f"shard {shard.url}"
    got = SampleMembers(where, shard.exts)
    for name, body in safe_tar_members(data, where):
        key, ext = split_member(name)
        got.add(key, ext, body)
    return got.samples


def read_samples_whole(shard: ShardRef) -> dict[str, dict[str, bytes]]:
    """key -> {EXT: bytes} of a whole shard, read through the hashing reader (sha256 and size checked)."""
    return shard_samples(read_whole(shard)[0], shard)


# ---------------------------------------------------------------- streamed: one sequential pass

def stream_members(shard: ShardRef, *, wanted: set[int], exts: Iterable[str], f=None,
                   check: bool = False) -> dict[int, dict[str, bytes]]:
    """row -> {EXT: bytes} of members ``exts`` of the ``wanted`` rows of ``shard`` (or of its open copy ``f``), in
    one sequential pass: every header is checked (`check_member`, the manifest's members once each), the data
    of other members is skipped (seek), never read nor decoded. With ``check`` the bytes go through the hashing
    reader and the shard's size and sha256 are compared at the end (a changed shard is named as such, rather
    than by its first odd member). Errors are one FormatError line naming the shard."""
    with read_errors(shard.url), (contextlib.nullcontext(f) if f is not None else open_shard(shard.url)) as raw:
        src = HashingReader(raw, sha256=shard.sha256, size=shard.bytes, where=f"shard {shard.url}") if check else raw
        try:
            out = _one_pass(src, shard, set(wanted), frozenset(exts))
        except FormatError:
            if check:
                src.finish()
            raise
        if check:
            src.finish()  # the rest of the file, then size and sha256 against the manifest
    return out


def _one_pass(f, shard: ShardRef, wanted: set[int], exts: frozenset[str]) -> dict[int, dict[str, bytes]]:
    got = SampleMembers(f"shard {shard.url}", shard.exts)
    out: dict[int, dict[str, bytes]] = {}
    name = "?"
    try:
        with tarfile.open(fileobj=f, mode="r:") as tf:
            while True:
                ti = tf.next()
                if ti is None:
                    break
                name = ti.name
                row, ext = check_member(ti, url=shard.url, shard=shard.shard, first_row=shard.first_row,
                                        samples=shard.samples)
                got.add(sample_key(row), ext, None)
                if row not in wanted or ext not in exts:
                    continue
                data = tf.extractfile(ti).read()
                if len(data) != ti.size:
                    raise FormatError(f"shard {shard.url}: member {name!r} is truncated")
                out.setdefault(row, {})[ext] = data
    except FormatError:
        raise
    except (tarfile.TarError, OSError, EOFError) as e:
        raise FormatError(f"shard {shard.url}: cannot read after member {name!r}: {e}") from None
    return out


# ---------------------------------------------------------------- one sample by its byte range

def range_members(shard: ShardRef, key: str, offset: int, size: int, *, f=None) -> dict[str, bytes]:
    """{EXT: bytes} of sample ``key`` of ``shard`` from its byte range (one range read; from the open copy ``f``
    of the shard when given): its members only, each named by the manifest, once."""
    return sample_members(read_range(shard.url, offset, size, f), key, f"shard {shard.url}: key {key}",
                          exts=shard.exts)


# ---------------------------------------------------------------- encoded records

def record_members(records: bytes, where: str = "records") -> dict[str, bytes]:
    """EXT -> bytes of one sample's encoded tar records (as `records.tar_records` makes them)."""
    got = SampleMembers(where)
    key = None
    for name, body in safe_tar_members(records + b"\0" * (2 * tarfile.BLOCKSIZE), where):
        k, ext = split_member(name)
        if key is not None and k != key:
            raise FormatError(f"{where}: members of two samples ({key}, {k}) in one sample's records")
        key = k
        got.add(k, ext, body)
    return got.samples.get(key, {})
