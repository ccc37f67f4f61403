"""Files of the factory: atomic writes (local or fsspec URL), sha256 of files, $FACTORY_HOME, and the safe
readers of files from elsewhere (one .npy reader that never unpickles, one weights_only torch-file reader).

Readers raise `ReadError` (why, and the exception underneath); each caller turns it into its own
one-line FactoryError naming the file.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from pathlib import Path

import numpy as np

from factory import format as fmt
from factory.format import FactoryError
from factory.format.store import atomic_write, is_local  # noqa: F401 (the contract's, shared with trainers)
from factory.settings import settings

CHUNK = 1 << 22  # bytes read at a time when hashing a file

# ---------------------------------------------------------------- storage


def factory_home() -> Path:
    """$FACTORY_HOME (default ~/.cache/factory): where weights/, embeddings/ and cache/ live."""
    return settings().home


def write_failure_log(command: str, failures: list[dict]) -> str | None:
    """Every failure's traceback (its ``detail``) in $FACTORY_HOME/logs/COMMAND-TIME-PID.log, so the
    command itself prints one line; the log's path, or None when no failure carries one."""
    import time

    details = [f for f in failures if f.get("detail")]
    if not details:
        return None
    folder = factory_home() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    path.write_text("\n".join(f"== {f['error']}\n{f['detail']}" for f in details))
    return str(path)


def npy_bytes(arr: np.ndarray) -> bytes:
    """An array as the bytes of a .npy file (C order, no pickle)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def atomic_save_npy(path: str | os.PathLike, arr: np.ndarray) -> None:
    """`np.save` through `atomic_write`."""
    atomic_write(path, npy_bytes(arr))


def atomic_json(path: str | os.PathLike, obj) -> None:
    """JSON (indent 1, keys in insertion order, final newline) through `atomic_write`."""
    atomic_write(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())





def exists(url: str) -> bool:
    fs, path = fmt.get_fs(url)
    return fs.exists(path)


def remove_temp_files(root: str) -> int:
    """Delete temp files a killed writer left behind (local datasets)."""
    fs, path = fmt.get_fs(root)
    if not is_local(fs):
        return 0
    n = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            if f.startswith(".") and ".tmp-" in f:
                os.unlink(os.path.join(dirpath, f))
                n += 1
    return n


def sha256_file(path: str | os.PathLike, chunk: int = CHUNK) -> str:
    """Hex sha256 of a local file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def is_url(path: str | os.PathLike) -> bool:
    """True for an fsspec URL of a remote store (s3://, gs://, https://...), False for a local path."""
    s = os.fspath(path)
    return "://" in s and not s.startswith("file://")


def file_name(path: str | os.PathLike) -> str:
    """The file's own name, without its folder or URL (what a spec records, so that the same file
    elsewhere is the same input: identity is its sha256, not its location)."""
    return os.fspath(path).rstrip("/").rsplit("/", 1)[-1]


def cache_dir() -> Path:
    """$FACTORY_HOME/cache: local copies of remote files, one folder per sha256."""
    return factory_home() / "cache"


def fetch_copy(url: str) -> tuple[str, str]:
    """(local path, sha256) of a file: a local path as it is (hashed), a remote URL downloaded once
    into $FACTORY_HOME/cache/<sha256>/<basename> (hashed while it streams, renamed into place)."""
    if not is_url(url):
        path, digest = os.fspath(url), sha256_file(url)
        _CHECKED[(path, digest)] = path
        return path, digest
    fs, path = fmt.get_fs(url)
    tmp_dir = cache_dir() / "partial"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:12]}"
    h = hashlib.sha256()
    try:
        try:
            with fs.open(path, "rb") as src, open(tmp, "wb") as dst:
                while b := src.read(CHUNK):
                    h.update(b)
                    dst.write(b)
        except FileNotFoundError:
            raise FactoryError(f"file not found: {url}") from None
        digest = h.hexdigest()
        dest = cache_dir() / digest / os.path.basename(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    _CHECKED[(os.fspath(url), digest)] = str(dest)
    return str(dest), digest


# Files whose sha256 this process has checked: (url, sha256) -> local path.
_CHECKED: dict = {}


def forget_checked() -> None:
    """Forget which files this process has checked: the next `local_copy` finds and checks them again."""
    _CHECKED.clear()


def local_copy(url: str, sha256: str) -> str:
    """A local path holding exactly the bytes with this sha256: a local file as it is, a remote URL
    downloaded once per host into $FACTORY_HOME/cache/<sha256>/<basename>. The sha256 is checked
    once per process; a file with other content raises a one-line FactoryError."""
    key = (os.fspath(url), sha256)
    if key in _CHECKED:
        return _CHECKED[key]
    if is_url(url):
        cached = cache_dir() / sha256 / os.path.basename(fmt.get_fs(url)[1])
        path, got = (str(cached), sha256_file(cached)) if cached.exists() else fetch_copy(url)
    else:
        path = os.fspath(url)
        if not os.path.exists(path):
            raise FactoryError(f"file not found on this worker: {path}; put it on a shared file system or an "
                               "object store (s3://...) that every worker reads")
        got = sha256_file(path)
    if got != sha256:
        raise FactoryError(f"{url} has sha256 {got[:12]}, the job expects {sha256[:12]}; the file changed "
                           "since the job started")
    _CHECKED[key] = path
    return path


# ---------------------------------------------------------------- safe readers


class ReadError(FactoryError):
    """A file from elsewhere that a safe reader refused; `reason` says why, `cause` is the error underneath.
    Callers turn it into a FactoryError line naming the file (it is one too, so none escapes as a traceback).

    reason: ``missing`` | ``objects`` (a pickle: object arrays, code) | ``invalid`` | ``unreadable`` | ``archive``
    """

    def __init__(self, reason: str, cause: BaseException | None = None):
        super().__init__(reason if cause is None else f"{reason}: {cause}")
        self.reason = reason
        self.cause = cause

    def first_line(self, limit: int | None = None) -> str:
        """The first line of the underlying error's message (at most `limit` characters)."""
        line = (str(self.cause).strip().splitlines() or [""])[0]
        return line if limit is None else line[:limit]


def read_npy(path: str | os.PathLike, *, mmap: bool = False) -> np.ndarray:
    """The one .npy reader for files from elsewhere: never unpickles, refuses .npz archives.

    Raises `ReadError`: ``missing`` (no such path), ``objects`` (np.load needed pickle), ``invalid``
    (another ValueError of np.load), ``unreadable`` (OSError/EOFError: truncated, a folder...),
    ``archive`` (an .npz).
    """
    if not os.path.exists(path):
        raise ReadError("missing")
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as e:  # object arrays need pickle
        msg = str(e).lower()
        raise ReadError("objects" if "pickle" in msg or "object" in msg else "invalid", e) from None
    except (OSError, EOFError) as e:
        raise ReadError("unreadable", e) from None
    if not isinstance(arr, np.ndarray):
        arr.close()
        raise ReadError("archive")
    return arr


def read_torch_file(path: str | os.PathLike):
    """The one torch-file reader for files from elsewhere: ``torch.load(weights_only=True)`` on the CPU.

    Raises `ReadError`: ``objects`` (the pickle references code or objects other than tensors) or
    ``unreadable`` (corrupt, truncated, not a torch file).
    """
    import pickle
    import zipfile

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ReadError("objects", e) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as e:
        raise ReadError("unreadable", e) from None


def load_npy_matrix(path: str, what: str, dim_z: int | None = None) -> np.ndarray:
    """Load a float [N, D] .npy safely (no pickle, memory-mapped) or raise a one-line FactoryError."""
    try:
        arr = read_npy(path, mmap=True)
    except ReadError as e:
        if e.reason == "missing":
            raise FactoryError(f"{what} file not found: {path}") from None
        if e.reason == "objects":
            raise FactoryError(
                f"{what} file {path} holds Python objects (object dtype); save a float32 array with np.save"
            ) from None
        if e.reason == "invalid":
            raise FactoryError(
                f"{what} file {path} is not a valid .npy array ({e.cause}); re-save it with np.save"
            ) from None
        if e.reason == "unreadable":
            raise FactoryError(
                f"{what} file {path} is truncated or not a .npy file ({e.cause}); re-save it with np.save"
            ) from None
        raise FactoryError(f"{what} file {path} must hold one array (.npy), not an archive") from None
    if arr.dtype.kind != "f":
        raise FactoryError(f"{what} file {path} has dtype {arr.dtype}; a float array [N, dim_z] is required")
    if arr.ndim != 2:
        raise FactoryError(f"{what} file {path} has shape {arr.shape}; a 2-D array [N, dim_z] is required")
    if arr.shape[0] == 0:
        raise FactoryError(f"{what} file {path} has zero rows")
    if dim_z is not None and arr.shape[1] != dim_z:
        raise FactoryError(
            f"{what} file {path} has width {arr.shape[1]} but the generator's dim_z is {dim_z}; "
            "use latents made for this generator"
        )
    # Scan in chunks so a 1M-row memmap is never copied whole just to check it.
    for i in range(0, arr.shape[0], 65536):
        if not np.isfinite(arr[i : i + 65536]).all():
            bad = i + int(np.argwhere(~np.isfinite(arr[i : i + 65536]))[0][0])
            raise FactoryError(f"{what} file {path} holds NaN or inf (first at row {bad}); clean the file")
    return arr
