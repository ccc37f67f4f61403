"""Checking a file's sha256 while it is read: ``HashingReader`` wraps a binary file opened for
reading, hashes every byte the reader is given or skips (a forward seek reads and hashes the bytes
it passes over), and ``finish()`` reads the rest and compares size and digest with the manifest's.
One pass, no second read: trainers streams shards through it; a local shard cache can write the
bytes it reads and keep them only when ``finish()`` passes.
"""
from __future__ import annotations

import hashlib

from factory.format.errors import FormatError

CHUNK = 1 << 20


class HashingReader:
    """A forward-only view of ``f`` that hashes what passes; ``finish()`` raises FormatError naming
    ``where`` when the bytes differ from ``sha256`` (and ``size``, when given)."""

    def __init__(self, f, *, sha256: str, where: str, size: int | None = None, sink=None):
        self.f, self.expected, self.where, self.size = f, sha256, where, size
        self.sink = sink  # optional callable given every chunk read (e.g. a cache file's write)
        self.h = hashlib.sha256()
        self.pos = 0

    def _take(self, data: bytes) -> bytes:
        self.h.update(data)
        if self.sink is not None:
            self.sink(data)
        self.pos += len(data)
        return data

    def read(self, n: int = -1) -> bytes:
        return self._take(self.f.read(n) if n is not None and n >= 0 else self.f.read())

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        target = offset if whence == 0 else self.pos + offset if whence == 1 else None
        if target is None or target < self.pos:
            raise FormatError(f"{self.where}: read out of order while its sha256 is checked")
        while self.pos < target:
            if not self.read(min(CHUNK, target - self.pos)):
                break  # past the end: the tar reader reports the truncation
        return self.pos

    def finish(self) -> str:
        """Read what is left, then check size and sha256; returns the digest."""
        while self.read(CHUNK):
            pass
        digest = self.h.hexdigest()
        if self.size is not None and self.pos != self.size:
            raise FormatError(f"{self.where}: {self.pos} bytes, the manifest says {self.size} (changed or "
                              "truncated since the manifest was written); factory verify lists every bad shard")
        if digest != self.expected:
            raise FormatError(f"{self.where}: sha256 differs from the manifest (changed or swapped since the "
                              "manifest was written); factory verify lists every bad shard")
        return digest
