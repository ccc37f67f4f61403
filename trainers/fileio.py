"""Small file helpers shared by the trainers modules: atomic writes (the contract's `format.atomic_write`),
canonical JSON, sha256."""
from __future__ import annotations

import hashlib
import json
import os

from factory.format import atomic_write  # noqa: F401 (the contract's: trainers and factory write alike)


def json_bytes(obj) -> bytes:
    """Indented, key-sorted JSON with a final newline (the form of every JSON file trainers writes)."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file, read in chunks (released checkpoints are hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
