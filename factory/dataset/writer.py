"""TODO docstring."""
from __future__ import annotations

import json
import os
import socket

from factory import format as fmt
from factory.dataset.shards import create_latents
from factory.errors import FactoryError
from factory.fsio import atomic_write, exists, is_local
from factory.generate.config import GenerateConfig
from factory.generate.plan import Plan

# ---------------------------------------------------------------- client side

class DatasetLock:
    """An exclusive lock on a local output folder (O_EXCL file; stale locks of dead processes are taken over)."""

    def __init__(self, root: str):
        self.root = root
        fs, path = fmt.get_fs(root)
        self.path = os.path.join(path, fmt.LOCK) if is_local(fs) else None
        self.held = False

    def __enter__(self):
        if self.path is None:
            return self
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    host, pid = open(self.path).read().split()
                except (OSError, ValueError):
                    host, pid = "", "0"
                if host == socket.gethostname() and not pid_alive(int(pid)):
                    os.unlink(self.path)  # stale: its writer died
                    continue
                raise FactoryError(
                    f"{self.root} is being written by another factory process ({host} pid {pid}); "
                    f"wait for it to finish, or delete {self.path} if that process is gone"
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            return self
        raise FactoryError(f"cannot take the lock {self.path}")

    def __exit__(self, *exc):
        if self.held and self.path:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_writable(root: str) -> None:
    fs, path = fmt.get_fs(root)
    try:
        fs.makedirs(path, exist_ok=True)
        if is_local(fs):
            probe = os.path.join(path, f".write-probe-{os.getpid()}")
            with open(probe, "wb") as f:
                f.write(b"ok")
            os.unlink(probe)
    except OSError as e:
        raise FactoryError(f"--out {root} is not writable ({e.strerror or e}); choose a folder you can write") from None


def spec_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += spec_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def wipe(root: str) -> None:
    fs, path = fmt.get_fs(root)
    for name in (fmt.MANIFEST, fmt.SPEC, fmt.CARD, fmt.SHARD_DIR, fmt.INDEX_DIR, fmt.DONE_DIR, fmt.LATENTS, "preview.png"):
        p = path.rstrip("/") + "/" + name
        if fs.exists(p):
            fs.rm(p, recursive=True)


def prepare_output(cfg: GenerateConfig, plan: Plan) -> None:
    """Write spec.json and latents.zarr, or check that an existing dataset has the same spec."""
    root = cfg.out
    spec_url = fmt.join(root, fmt.SPEC)
    if exists(spec_url):
        old = json.loads(fmt.read_bytes(spec_url))
        if old.get("spec_hash") != plan.spec_hash:
            if not cfg.overwrite:
                diff = spec_diff(old.get("spec", {}), plan.spec)
                raise FactoryError(
                    f"{root} holds a dataset with another spec ({'; '.join(diff[:6]) or 'spec hash differs'}); "
                    "use another --out, rerun the original command to resume, or pass --overwrite"
                )
            wipe(root)
    spec_doc = {"spec_hash": plan.spec_hash, "spec": plan.spec}
    if not exists(spec_url):
        atomic_write(spec_url, json.dumps(spec_doc, indent=1, sort_keys=True).encode())
    if not exists(fmt.join(root, fmt.LATENTS)):
        create_latents(root, cfg.n, plan.dim_z, cfg.shard_size)
