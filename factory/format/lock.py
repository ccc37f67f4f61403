"""One writer per dataset: the lock every writer honours, on a local folder (``FolderLock``) and on
an object-store prefix (``StoreLock``).

Local: FOLDER/.lock made with O_EXCL, holding "host pid"; a lock whose process is gone (same host)
is taken over. Object stores have no O_EXCL and no pids to test: PREFIX/.lock is written with a
conditional put (S3 ``If-None-Match: *``), holding the writer's host, pid and a random writer id; a
second writer's put fails and it is refused. The lock is checked again before the manifest is
written (``StoreLock.check``) and removed only by the writer whose id it holds.
"""
from __future__ import annotations

import json
import os
import socket
import uuid

from factory.format.errors import FactoryError
from factory.format.names import LOCK
from factory.format.store import endpoint_reachable


class FolderBusy(FactoryError):
    """Another live process holds the folder's lock (message names it)."""


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host is alive (a zombie, dead but not yet reaped, is not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


class FolderLock:
    """``with FolderLock(path, what):`` the lock on local folder ``path``; raises FolderBusy, naming
    ``what`` holds it, while another live process does."""

    def __init__(self, path: str | os.PathLike, what: str, *, name: str | None = None):
        self.path, self.what, self.held = os.path.join(os.fspath(path), LOCK), what, False
        self.name = name or os.fspath(path)  # how messages name the folder

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    host, pid = open(self.path).read().split()
                except (OSError, ValueError):
                    host, pid = "", "0"
                if host == socket.gethostname() and not pid_alive(int(pid) if pid.isdigit() else 0):
                    os.unlink(self.path)  # stale: its writer died
                    continue
                raise FolderBusy(f"{self.name} is being written by another {self.what} "
                                 f"({host} pid {pid}); wait for it to finish, or delete {self.path} if that "
                                 "process is gone") from None
            with os.fdopen(fd, "w") as f:
                f.write(f"{socket.gethostname()} {os.getpid()}")
            self.held = True
            return self
        raise FolderBusy(f"cannot take the lock {self.path}")

    def check(self) -> None:
        """Nothing to check locally: O_EXCL already excluded every other writer."""

    def __exit__(self, *exc):
        if self.held:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.held = False


class StoreLock:
    """``with StoreLock(fs, path, what, name=url):`` the lock object ``path/.lock`` on an fsspec object
    store, created with a conditional put; raises FolderBusy while another writer's lock is there.

    A lock left by a dead writer on the same host is taken over; one from another host must be
    deleted by hand (the message says how), since its process cannot be tested from here.
    """

    def __init__(self, fs, path: str, what: str, *, name: str):
        self.fs, self.path, self.what, self.name = fs, path.rstrip("/") + "/" + LOCK, what, name
        self.url = name.rstrip("/") + "/" + LOCK
        self.body = {"host": socket.gethostname(), "pid": os.getpid(), "writer": uuid.uuid4().hex}
        self.held = False

    def _holder(self) -> dict:
        try:
            doc = json.loads(self.fs.cat_file(self.path))
        except FileNotFoundError:
            return {}
        except (ValueError, UnicodeDecodeError):
            return {"host": "?", "pid": 0, "writer": "?"}
        return doc if isinstance(doc, dict) else {"host": "?", "pid": 0, "writer": "?"}

    def _busy(self, doc: dict) -> FolderBusy:
        return FolderBusy(f"{self.name} is being written by another {self.what} ({doc.get('host')} pid "
                          f"{doc.get('pid')}, writer {str(doc.get('writer'))[:8]}); wait for it to finish, or "
                          f"delete {self.url} if that writer is gone")

    def __enter__(self):
        data = json.dumps(self.body, sort_keys=True).encode()
        for _ in range(2):
            try:
                self.fs.pipe_file(self.path, data, mode="create")
            except FileExistsError:
                doc = self._holder()
                pid = doc.get("pid")
                if doc and doc.get("host") == socket.gethostname() and isinstance(pid, int) \
                        and not pid_alive(pid):
                    self.fs.rm_file(self.path)  # stale: its writer died on this host
                    continue
                if not doc:
                    continue  # released between our put and our read
                raise self._busy(doc) from None
            self.held = True
            return self
        raise FolderBusy(f"cannot take the lock {self.url}; another writer keeps taking it")

    def check(self) -> None:
        """Refuse to go on (FolderBusy) when the lock no longer holds this writer's id."""
        doc = self._holder()
        if doc.get("writer") != self.body["writer"]:
            self.held = False
            raise self._busy(doc) if doc else FolderBusy(
                f"{self.url} was removed while this {self.what} was writing; another writer may have "
                "started: run the command again once it has finished")

    def __exit__(self, *exc):
        if self.held:
            self.held = False
            if "s3" in _protocols(self.fs) and not endpoint_reachable():
                return  # the store is gone: the lock stays (a rerun on this host takes it over)
            try:
                if self._holder().get("writer") == self.body["writer"]:
                    self.fs.rm_file(self.path)
            except Exception:  # noqa: BLE001 - best effort: the error being raised, if any, matters more
                pass


def _protocols(fs) -> tuple:
    p = getattr(fs, "protocol", ())
    return (p,) if isinstance(p, str) else tuple(p)
