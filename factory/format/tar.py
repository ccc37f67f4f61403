"""The contract's tar reading: safe members of a shard or of one sample's byte range, member checks,
image checks, and where each sample's members lie in its tar (`member_ranges`, the index's
``tar_offset`` / ``tar_size`` columns since format version 2)."""
from __future__ import annotations

import io
import re
import tarfile

from factory.format.errors import FormatError
from factory.format.names import EXT_IMAGE, IMAGE_FORMATS, MAX_IMAGE_PIXELS, MAX_MEMBER_BYTES, key_row
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


def sample_members(data: bytes, key: str, where: str = "sample") -> dict[str, bytes]:
    """EXT -> bytes of the members of sample ``key`` from its byte range ``[tar_offset, tar_offset + tar_size)``
    of a shard (checked as `safe_tar_members` does; every member must be ``KEY.EXT``)."""
    out: dict[str, bytes] = {}
    for name, body in safe_tar_members(data + b"\0" * (2 * tarfile.BLOCKSIZE), where):
        k, ext = split_member(name)
        if k != key or not ext:
            raise FormatError(f"{where}: member {name!r} is not a member of sample {key} (index offsets stale?)")
        out[ext] = body
    if not out:
        raise FormatError(f"{where}: no member of sample {key} in its byte range")
    return out


def read_range(url: str, offset: int, size: int) -> bytes:
    """Bytes [offset, offset + size) of a local file or fsspec URL, in one read (one range GET on object stores)."""
    if not 0 < size <= MAX_SAMPLE_BYTES or offset < 0:
        raise FormatError(f"{url}: byte range {offset}+{size} is not a sample's range (index corrupt?)")
    fs, path = get_fs(url)
    try:
        data = fs.cat_file(path, start=offset, end=offset + size)
    except FileNotFoundError:
        raise FormatError(f"shard missing: {url}") from None
    except OSError as e:
        raise FormatError(f"cannot read shard {url}: {e}") from None
    if len(data) != size:
        raise FormatError(f"{url}: byte range {offset}+{size} lies past the end of the file (truncated shard?)")
    return data
