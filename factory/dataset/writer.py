"""The one writer of dataset folders, used by `factory generate` and `factory filter --materialize`.

`DatasetWriter` owns the folder around the shards: an exclusive lock, the writable check,
removal of temp files a killed writer left, spec.json (checked against an existing one and
diffed, or the folder wiped with overwrite), latents.zarr, resume from the shards' sidecars,
and the card plus manifest.json written last. The shards themselves are committed by
`factory.dataset.shards.commit_shard`.
"""
from __future__ import annotations

import json
import os

from factory import format as fmt
from factory.dataset.card import index_stats, write_card
from factory.dataset.shards import create_latents, read_sidecars
from factory.dataset.signing import SIGNATURES
from factory.format import FactoryError
from factory.fsio import atomic_write, exists, is_local, remove_temp_files

DIFF_LIMIT = 6  # spec differences named when a folder holds another dataset


class DatasetLock:
    """The lock on an output folder: ``format.FolderLock`` on local disk, ``format.StoreLock`` (a lock
    object written with a conditional put) on an object store."""

    def __init__(self, root: str):
        self.root = root
        fs, path = fmt.get_fs(root)
        self.lock = fmt.FolderLock(path, "factory process", name=root) if is_local(fs) else \
            fmt.StoreLock(fs, path, "factory process", name=root)

    def __enter__(self):
        self.lock.__enter__()  # FolderBusy (a FactoryError) while another process writes
        return self

    def check(self) -> None:
        """Still this writer's lock (an object store's may have been removed and taken by another):
        FolderBusy otherwise."""
        self.lock.check()

    def __exit__(self, *exc):
        self.lock.__exit__(*exc)


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
    for name in (SIGNATURES, fmt.MANIFEST, fmt.SHARD_TABLE, fmt.SPEC, fmt.CARD, fmt.SHARD_DIR, fmt.INDEX_DIR, fmt.DONE_DIR, fmt.LATENTS,
                 "preview.png"):
        p = path.rstrip("/") + "/" + name
        if fs.exists(p):
            fs.rm(p, recursive=True)


def read_spec_doc(url: str) -> dict:
    """An existing spec.json; {} when it is not a JSON object (a damaged file names no spec)."""
    try:
        doc = json.loads(fmt.read_bytes(url))
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


class DatasetWriter:
    """A dataset folder being written (a context manager: lock held, folder prepared, inside `with`).

    ``other_spec``: the command's refusal when the folder holds a dataset of another spec, a
    format string with ``{root}`` and ``{diff}`` (the first DIFF_LIMIT differences).
    """

    def __init__(self, root: str, *, spec: dict, spec_hash: str, samples: int, dim_z: int, shard_size: int,
                 other_spec: str, overwrite: bool = False):
        self.root = root.rstrip("/")
        self.spec, self.spec_hash = spec, spec_hash
        self.samples, self.dim_z, self.shard_size = samples, dim_z, shard_size
        self.n_shards = (samples + shard_size - 1) // shard_size
        self.other_spec = other_spec
        self.overwrite = overwrite
        self.manifest_url = fmt.join(self.root, fmt.MANIFEST)
        self.lock = DatasetLock(self.root)

    def __enter__(self) -> DatasetWriter:
        check_writable(self.root)
        self.lock.__enter__()
        try:
            remove_temp_files(self.root)
            self.prepare()
        except BaseException:
            self.lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.lock.__exit__(*exc)

    def prepare(self) -> None:
        """Write spec.json and latents.zarr, or check that an existing dataset has the same spec
        (another one is refused, or wiped with overwrite)."""
        spec_url = fmt.join(self.root, fmt.SPEC)
        if exists(spec_url):
            old = read_spec_doc(spec_url)
            if old.get("spec_hash") != self.spec_hash:
                if not self.overwrite:
                    old_spec = old.get("spec")
                    diff = spec_diff(old_spec if isinstance(old_spec, dict) else {}, self.spec)
                    raise FactoryError(self.other_spec.format(
                        root=self.root, diff="; ".join(diff[:DIFF_LIMIT]) or "spec hash differs"))
                wipe(self.root)
        elif exists(self.manifest_url) or exists(fmt.join(self.root, fmt.SHARD_DIR)):
            if not self.overwrite:
                raise FactoryError(
                    f"{self.root} already holds files of another dataset; use another --out or pass --overwrite")
            wipe(self.root)
        if not exists(spec_url):
            doc = {"spec_hash": self.spec_hash, "spec": self.spec}
            atomic_write(spec_url, json.dumps(doc, indent=1, sort_keys=True).encode())
        if not exists(fmt.join(self.root, fmt.LATENTS)):
            create_latents(self.root, self.samples, self.dim_z, self.shard_size)

    def committed(self) -> dict[int, dict]:
        """Shards already committed under this spec: {shard: a copy of its sidecar}."""
        return {k: dict(v) for k, v in read_sidecars(self.root).items() if v.get("spec_hash") == self.spec_hash}

    def resume(self, log) -> tuple[dict[int, dict], list[int], dict | None]:
        """(committed shards, shards still to make, the manifest when nothing is left to do); logs which."""
        done = self.committed()
        todo = [k for k in range(self.n_shards) if k not in done]
        if not todo and exists(self.manifest_url):
            log(f"{self.root}: complete ({self.samples} samples in {self.n_shards} shards); nothing to do")
            return done, todo, fmt.open_dataset(self.root).manifest
        if done:
            log(f"{self.root}: resuming, {len(done)} of {self.n_shards} shards already committed")
        return done, todo, None

    def shard_entries(self, done: dict[int, dict]) -> list[dict]:
        """The manifest's shard list: each committed shard's result, without the sidecar's spec_hash
        (new dicts; `done` is left as it is)."""
        return [{k: v for k, v in done[i].items() if k != "spec_hash"} for i in range(self.n_shards)]

    def finish(self, manifest: dict) -> None:
        """The card (README.md, preview.png), then manifest.json: a dataset exists once its manifest does."""
        manifest["index_stats"] = index_stats(self.root, manifest, check_sha=False)  # `factory info` reads these
        self.lock.check()  # a dataset's manifest is written by the writer holding its lock, only
        write_card(self.root, manifest)
        fmt.write_manifest(self.root, manifest)  # version 4: the shard table, then manifest.json
