"""The tar records a writer makes (the writing side of `tar`): ustar headers with fixed metadata, so equal
members give equal bytes (byte-reproducible shards, teacher-map parts)."""
from __future__ import annotations

import tarfile

from factory.format.names import TAR_MTIME


def tar_records(members: list[tuple[str, bytes]]) -> bytes:
    """The tar records (ustar header + data + padding) of members, with fixed metadata.

    Shards are concatenations of such records plus `tar_end`, so records can be built in
    parallel (per chunk of samples) and joined in order.
    """
    parts = []
    for name, data in members:
        ti = tarfile.TarInfo(name)
        ti.size = len(data)
        ti.mtime = TAR_MTIME
        ti.mode = 0o644
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        ti.type = tarfile.REGTYPE
        parts.append(ti.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))
        parts.append(data)
        pad = (-len(data)) % tarfile.BLOCKSIZE
        if pad:
            parts.append(b"\0" * pad)
    return b"".join(parts)


def tar_join(records: list[bytes]) -> bytes:
    """A complete tar from member records: two zero blocks, then padding to the 10 KiB record size."""
    body = b"".join(records) + b"\0" * (2 * tarfile.BLOCKSIZE)
    return body + b"\0" * ((-len(body)) % tarfile.RECORDSIZE)


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """A tar with fixed metadata; members in the given (sorted-by-key) order."""
    return tar_join([tar_records(members)])
