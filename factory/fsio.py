"""TODO docstring."""
from __future__ import annotations

import hashlib
import os
import uuid

import numpy as np

from factory import format as fmt
from factory.errors import FactoryError

# ---------------------------------------------------------------- storage

def is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def atomic_write(url: str, data: bytes) -> None:
    """Write bytes so that the final name holds either nothing or all of them."""
    fs, path = fmt.get_fs(url)
    if is_local(fs):
        d = os.path.dirname(path)
        os.makedirs(d, exist_ok=True)
        tmp = os.path.join(d, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:12]}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        _fsync_dir(d)
    else:
        fs.pipe_file(path, data)


def _fsync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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


def sha256_file(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def load_npy_matrix(path: str, what: str, dim_z: int | None = None) -> np.ndarray:
    """Load a float [N, D] .npy safely (no pickle) or raise a one-line FactoryError."""
    if not os.path.exists(path):
        raise FactoryError(f"{what} file not found: {path}")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        msg = str(e)
        if "pickle" in msg.lower() or "object" in msg.lower():
            raise FactoryError(
                f"{what} file {path} holds Python objects (object dtype); save a float32 array with np.save"
            ) from None
        raise FactoryError(f"{what} file {path} is not a valid .npy array ({msg}); re-save it with np.save") from None
    except (OSError, EOFError) as e:
        raise FactoryError(f"{what} file {path} is truncated or not a .npy file ({e}); re-save it with np.save") from None
    if not isinstance(arr, np.ndarray):
        raise FactoryError(f"{what} file {path} must hold one array (.npy), not an archive")
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
