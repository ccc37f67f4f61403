"""Small file helpers shared by the trainers modules: atomic writes, canonical JSON, sha256, a folder lock."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes) -> None:
    """Write bytes to `path` via a fsynced temp file and os.replace: all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


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


class FolderBusy(FileExistsError):
    """Another live process holds the folder's lock (message names it)."""


class FolderLock:
    """``with FolderLock(folder, what):`` one writer per local output folder: an O_EXCL ``.lock`` holding
    host and pid; a lock left by a dead process on this host is taken over. A second writer gets
    ``FolderBusy`` with a one-line message."""

    def __init__(self, folder: str | os.PathLike, what: str):
        self.path, self.what, self.held = Path(folder) / ".lock", what, False

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                host, pid = (self.path.read_text().split() + ["", "0"])[:2]
                if host == socket.gethostname() and not _alive(int(pid) if pid.isdigit() else 0):
                    self.path.unlink(missing_ok=True)  # stale: its writer died
                    continue
                raise FolderBusy(f"{self.path.parent} is being written by another {self.what} ({host} pid {pid}); "
                                      f"wait for it, or delete {self.path} if that process is gone") from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            return self
        raise FolderBusy(f"cannot take the lock {self.path}")

    def __exit__(self, *exc):
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
