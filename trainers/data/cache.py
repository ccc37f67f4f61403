"""A node-local cache of a remote dataset's shards, shared by the ranks (and loader workers) of one machine.

* **Layout**: ``ROOT/<dataset id>/<shard sha256>.tar``: keyed by the dataset id and the shard's digest, so two
  datasets never collide and a changed dataset never reads a stale shard. Local datasets are never copied.
* **Fetch once per node**: a shard is fetched under an exclusive ``flock`` on ``<sha256>.lock`` (a second
  rank waits, then finds the file), into ``.<sha256>.<bytes>.<pid>.<thread>.part``, hashed as it is
  written (``factory.format.HashingReader``), and renamed into place only when size and sha256 match the
  manifest. A cached file is hashed again once per process before its first use; one that no longer
  matches is fetched again, with one line saying so.
* **In use**: a reader holds a shared ``flock`` on the cached file while it reads it; eviction takes an
  exclusive non-blocking ``flock`` before unlinking, so a shard in use is never evicted.
* **Limit**: before a fetch, files are evicted least recently used first (mtime, touched on every use)
  until the cached files plus the shards being fetched (counted at full size) fit ``limit`` bytes;
  the partial file of a fetch whose process died is removed.
  A limit smaller than the largest shard is a one-line error.
* **Prefetch** (`Prefetcher`): the next ``depth`` shards of a reader's order are fetched by ``depth``
  threads while it reads the current one; ``close()`` stops them (a fetch in flight stops at its next
  chunk and leaves no file).
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from factory import format as fmt
from trainers.errors import TrainersError

DEFAULT_PREFETCH = 2
ROOM_WAIT_S = 60.0  # how long a fetch waits for shards in use to be released before the limit is an error
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class CacheError(TrainersError, ValueError):
    """A cache that cannot work as asked (message names the option to change)."""


class _Stopped(Exception):
    pass


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/factory-trainers``, else ``~/.cache/factory-trainers``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "factory-trainers"


def parse_size(text: str | int) -> int:
    """Bytes of ``"500M"``, ``"20G"``, ``"1.5T"``, ``"20GB"``, ``"20GiB"`` or a plain number (powers of 1024)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:I?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise CacheError(f"--cache-limit {text!r} is not a size; write e.g. 500M, 20G or 1.5T")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def format_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _entries(root: Path) -> list[tuple[Path, int, float]]:
    """(path, bytes, mtime) of every cached shard and every shard being fetched (at its full size)."""
    out = []
    for p in root.glob("*/*"):
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        if p.suffix == ".tar":
            out.append((p, st.st_size, st.st_mtime))
        elif p.suffix == ".part":
            if not fmt.pid_alive(int(p.name.split(".")[3])):  # left by a killed fetch: not a reservation
                p.unlink(missing_ok=True)
                continue
            out.append((p, max(st.st_size, int(p.name.split(".")[2])), float("inf")))
    return out


def cached_bytes(root: Path) -> int:
    return sum(b for _, b, _ in _entries(root)) if root.is_dir() else 0


def default_limit(root: Path) -> int:
    """What the cache holds now plus 80% of the disk's free space."""
    probe = root
    while not probe.exists():
        probe = probe.parent
    return cached_bytes(root) + int(shutil.disk_usage(probe).free * 0.8)


@dataclass
class CacheStats:
    fetched_shards: int = 0
    fetched_bytes: int = 0
    hits: int = 0
    refetched: int = 0


class _Flock:
    """``with _Flock(path, exclusive=True):`` an flock on ``path`` (created), released on exit."""

    def __init__(self, path: Path, *, exclusive: bool = True):
        self.path, self.mode = path, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, self.mode)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # closing releases the lock


@dataclass
class ShardCache:
    """The cache of one dataset's shards under ``root`` (shared with other datasets) holding at most ``limit`` bytes."""

    root: Path
    limit: int
    dataset_id: str
    log: object = field(default=None, repr=False)  # callable(str); default: a line on stderr
    stats: CacheStats = field(default_factory=CacheStats)

    def __post_init__(self):
        self.root = Path(self.root)
        self.folder = self.root / self.dataset_id
        self.folder.mkdir(parents=True, exist_ok=True)
        self._checked: set[str] = set()

    def __getstate__(self):  # loader workers get their own checks and stats
        return {"root": self.root, "limit": self.limit, "dataset_id": self.dataset_id, "log": None}

    def __setstate__(self, state):
        self.__init__(**state)

    def _say(self, line: str) -> None:
        (self.log or (lambda s: print(s, file=sys.stderr, flush=True)))(line)

    def path(self, shard) -> Path:
        return self.folder / f"{shard.sha256}.tar"

    # ------------------------------------------------------------------ reading

    def open(self, shard):
        """The shard's cached file opened for reading (fetched first if needed), held in use until closed."""
        for _ in range(5):
            p = self.ensure(shard)
            try:
                f = open(p, "rb")
            except FileNotFoundError:
                continue  # evicted between the fetch and the open: fetch again
            fcntl.flock(f.fileno(), fcntl.LOCK_SH)
            if os.fstat(f.fileno()).st_nlink > 0:
                os.utime(p)
                return f
            f.close()  # evicted while we waited for the lock
        raise CacheError(f"shard {shard.url} is evicted as soon as it is fetched; raise --cache-limit")

    def ensure(self, shard, stop: threading.Event | None = None) -> Path:
        """The shard's file in the cache, fetched (once per node) when absent or no longer matching."""
        p = self.path(shard)
        if shard.sha256 in self._checked and p.exists():
            self.stats.hits += 1
            return p
        with _Flock(self.folder / f"{shard.sha256}.lock"):
            if p.exists():
                if self._matches(p, shard):
                    self._checked.add(shard.sha256)
                    self.stats.hits += 1
                    return p
                self._say(f"shard cache: {p} no longer matches the manifest's sha256; fetching {shard.url} again")
                self.stats.refetched += 1
                p.unlink(missing_ok=True)
            self._fetch(shard, p, stop)
            self._checked.add(shard.sha256)
        return p

    def _matches(self, p: Path, shard) -> bool:
        try:
            with open(p, "rb") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_SH)
                fmt.hash_shard(shard, f)  # the local copy p against the manifest
            return True
        except fmt.FormatError:
            return False

    # ------------------------------------------------------------------ fetching

    def _fetch(self, shard, p: Path, stop: threading.Event | None) -> None:
        tmp = self.folder / f".{shard.sha256}.{shard.bytes}.{os.getpid()}.{threading.get_ident()}.part"
        self._make_room(shard.bytes, tmp)

        def sink(data: bytes) -> None:
            if stop is not None and stop.is_set():
                raise _Stopped
            dst.write(data)

        fs, path = fmt.get_fs(shard.url)
        try:
            with open(tmp, "wb") as dst, fs.open(path, "rb") as src:
                fmt.HashingReader(src, sha256=shard.sha256, size=shard.bytes, where=f"shard {shard.url}",
                                  sink=sink).finish()
            os.replace(tmp, p)
        except fmt.FormatError as e:
            raise CacheError(str(e)) from None
        except FileNotFoundError:
            raise CacheError(f"shard {shard.url} not found (dataset incomplete or moved?)") from None
        finally:
            tmp.unlink(missing_ok=True)
        self.stats.fetched_shards += 1
        self.stats.fetched_bytes += shard.bytes

    def _make_room(self, need: int, tmp: Path) -> None:
        """Evict least recently used shards not in use until ``need`` more bytes fit; reserve them (``tmp``)."""
        deadline = time.monotonic() + ROOM_WAIT_S
        while True:
            with _Flock(self.root / ".evict.lock"):
                entries = _entries(self.root)
                total = sum(b for _, b, _ in entries)
                for path, size, _ in sorted(entries, key=lambda e: e[2]):
                    if total + need <= self.limit or path.suffix != ".tar":
                        break
                    if _evict(path):
                        total -= size
                if total + need <= self.limit:
                    tmp.touch()  # the reservation: counted at its full size by every rank
                    return
            if time.monotonic() > deadline:
                raise CacheError(f"--cache-limit {format_size(self.limit)} cannot hold the shards in use on this "
                                 "node plus the next one; raise --cache-limit or lower --workers")
            time.sleep(0.2)


def _evict(path: Path) -> bool:
    """Unlink a cached shard unless a reader holds it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    try:
        path.unlink(missing_ok=True)
    finally:
        os.close(fd)
    return True


class Prefetcher:
    """Fetches the next ``depth`` shards of a reader's order in ``depth`` threads; ``close()`` stops them."""

    def __init__(self, cache: ShardCache, order: Iterable, depth: int = DEFAULT_PREFETCH):
        self.cache, self.order, self.depth = cache, [], depth
        self._more = iter(order)  # the order is read as far as the reader has come, plus depth
        self._pos: dict[int, int] = {}
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=depth, thread_name_prefix="shard-prefetch") if depth else None
        self._sent: dict[int, Future] = {}

    def reading(self, shard) -> None:
        """``shard`` is being read now: fetch the ones after it."""
        if self._pool is None or self._stop.is_set():
            return
        while shard.shard not in self._pos and self._extend():
            pass
        i = self._pos.get(shard.shard, -1)
        while len(self.order) < i + 1 + self.depth and self._extend():
            pass
        for nxt in self.order[i + 1:i + 1 + self.depth]:
            if nxt.shard not in self._sent:
                self._sent[nxt.shard] = self._pool.submit(self._fetch, nxt)

    def _extend(self) -> bool:
        """One more shard of the order (False when it has no more)."""
        nxt = next(self._more, None)
        if nxt is None:
            return False
        self._pos.setdefault(nxt.shard, len(self.order))
        self.order.append(nxt)
        return True

    def _fetch(self, shard) -> None:
        try:
            self.cache.ensure(shard, self._stop)
        except (_Stopped, TrainersError, OSError):
            pass  # the reader fetches it again when it needs it and reports the error then

    def close(self) -> None:
        self._stop.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def open_cache(index, *, cache_dir: str | None = None, cache_limit: str | int | None = None,
               enabled: bool = True, announce=None):
    """``index`` with a ShardCache attached when its shards are remote and the cache is ``enabled``.

    ``announce``: callable(str) given the one line that names the folder and the limit (rank 0 passes print)."""
    remote = [s for s in index.shard_info.values() if fmt.is_remote_url(s.url) and not s.url.startswith("file:")]
    if not enabled or not remote:
        return index
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    limit = parse_size(cache_limit) if cache_limit is not None else default_limit(root)
    largest = max(s.bytes for s in remote)
    if limit < largest:
        raise CacheError(f"--cache-limit {format_size(limit)} is smaller than one shard ({format_size(largest)}); "
                         "raise it, or pass --no-cache to stream from the store")
    cache = ShardCache(root, limit, index.dataset_id)
    if announce is not None:
        announce(f"shard cache: {cache.folder} (limit {format_size(limit)}, holds {format_size(cached_bytes(root))}; "
                 "--cache-dir, --cache-limit, --no-cache)")
    import dataclasses

    return dataclasses.replace(index, cache=cache)
