"""Shared fixtures: the reference files in ../shared (or $FACTORY_SHARED), skipped with a reason when absent;
the small shapes dataset and views the trainers tests read."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from helpers import one_thread

REPO = Path(__file__).resolve().parent.parent


def shared_dir() -> Path | None:
    env = os.environ.get("FACTORY_SHARED")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared")
    for c in candidates:
        if (c / "reference").is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def shared() -> Path:
    d = shared_dir()
    if d is None:
        pytest.skip("reference files absent: set FACTORY_SHARED to the shared/ folder (reference/, data/)")
    return d


@pytest.fixture(scope="session")
def golden(shared) -> Path:
    d = shared / "reference" / "bigbigan" / "golden_small"
    if not d.is_dir():
        pytest.skip(f"golden vectors absent at {d}")
    return d


@pytest.fixture(scope="module")
def torch_one_thread():
    """One intra-op thread for a module of small models (helpers.one_thread)."""
    with one_thread():
        yield


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """A 60-sample, 3-shard, 64 px shapes dataset (the factory's engine, in-process), made once per session;
    its manifest says its size (``samples``, ``resolution``)."""
    from factory.generate.config import GenerateConfig
    from factory.generate.engine import generate

    root = tmp_path_factory.mktemp("small-dataset") / "ds"
    generate(GenerateConfig(n=60, out=str(root), generator="shapes", generator_options={"resolution": 64},
                            shard_size=20, workers=0, progress=False))
    return root


@pytest.fixture(scope="session")
def table_dataset(tmp_path_factory) -> Path:
    """A 24-sample, 6-shard, 32 px shapes dataset written as a run of 64 shards or more is (compacted index,
    format 4: the shard table), made once per session."""
    from factory.dataset import compact
    from factory.generate.config import GenerateConfig
    from factory.generate.engine import generate

    root = tmp_path_factory.mktemp("table-dataset") / "ds"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compact, "COMPACT_MIN_SHARDS", 4)
        mp.setattr(compact, "PROCESSES", 1)
        generate(GenerateConfig(n=24, out=str(root), generator="shapes", generator_options={"resolution": 32},
                                shard_size=4, workers=0, progress=False), log=lambda msg: None)
    return root


def write_view(dataset: Path, path: Path, keep) -> tuple[Path, dict]:
    """A view JSON (format.view_id) accepting the rows r with keep(r); parent given by relative URL."""
    import json

    from factory import format as fmt

    manifest = json.loads((dataset / fmt.MANIFEST).read_text())
    accepted = {}
    for s in manifest["shards"]:
        accepted[str(s["shard"])] = [r for r in range(s["first_row"], s["first_row"] + s["samples"]) if keep(r)]
    predicate = "test predicate"
    view = {
        "kind": fmt.VIEW_KIND, "format_version": 1,  # a version-1 view (rows listed): still read
        "view_id": fmt.view_id(manifest["dataset_id"], predicate, fmt.sha256_bytes(fmt.canonical_json(accepted))),
        "parent": {"dataset_id": manifest["dataset_id"], "url": os.path.relpath(dataset, path.parent)},
        "predicate": predicate, "samples": sum(len(v) for v in accepted.values()), "accepted": accepted,
    }
    path.write_text(json.dumps(view))
    return path, view


@pytest.fixture()
def view_of():
    """``view_of(dataset, path, keep) -> (path, view)``: writes a view JSON accepting the rows r with keep(r)."""
    return write_view


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# ------------------------------------------------------------------ nothing outlives the suite
# The test process becomes a child subreaper (Linux), so processes orphaned by a killed CLI run
# (encoder pools, forkservers, dask workers) are re-parented to it instead of to init; at the end
# of the session every descendant still alive fails the run (and is killed, so none lingers).

ORPHAN_GRACE_S = 10.0


def _become_subreaper() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    PR_SET_CHILD_SUBREAPER = 36
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def pytest_sessionstart(session):
    session.config._factory_subreaper = _become_subreaper()


def _stop_own_helpers() -> int | None:
    """Stop the encoder pools and the multiprocessing forkserver this interpreter legitimately
    keeps, as interpreter exit would; return the resource tracker's pid (stopped last, since a
    stray process holding its pipe would make stopping it wait forever)."""
    from factory.generate.encode import shutdown_encoder_pools

    shutdown_encoder_pools()
    import multiprocessing.forkserver as forkserver
    import multiprocessing.resource_tracker as resource_tracker

    try:
        forkserver._forkserver._stop()
    except Exception:  # noqa: BLE001 - already stopped or never started
        pass
    return resource_tracker._resource_tracker._pid


def _stop_resource_tracker(grace_s: float = 5.0) -> None:
    import multiprocessing.resource_tracker as resource_tracker

    tracker = resource_tracker._resource_tracker
    if tracker._fd is None:
        return
    os.close(tracker._fd)  # EOF on its pipe ends it
    tracker._fd = None
    pid, tracker._pid = tracker._pid, None
    deadline = time.monotonic() + grace_s
    try:
        while time.monotonic() < deadline:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
            time.sleep(0.1)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    except (ChildProcessError, ProcessLookupError):  # already reaped
        pass


def _living_descendants(grace_s: float, *, ignore: set) -> list:
    import psutil

    me = psutil.Process()
    deadline = time.monotonic() + grace_s
    while True:
        for child in me.children(recursive=False):
            try:  # reap zombies re-parented to us
                if child.status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(child.pid, os.WNOHANG)
            except (psutil.Error, ChildProcessError):
                pass
        alive = [p for p in me.children(recursive=True)
                 if p.pid not in ignore and p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def pytest_sessionfinish(session, exitstatus):
    if not getattr(session.config, "_factory_subreaper", False):
        return
    import psutil

    tracker = _stop_own_helpers()
    alive = _living_descendants(ORPHAN_GRACE_S, ignore={tracker})
    if not alive:
        _stop_resource_tracker()
        return
    lines = []
    for p in alive:
        try:
            lines.append(f"  pid {p.pid}: {' '.join(p.cmdline())[:160]}")
            p.kill()
        except psutil.Error:
            pass
    _stop_resource_tracker()
    sys.stderr.write(f"\nERROR: {len(alive)} process(es) started by the tests outlived them (killed now):\n"
                     + "\n".join(lines) + "\n")
    session.exitstatus = 1


# ------------------------------------------------------------------ servers tests start themselves


@pytest.fixture()
def free_port():
    """A function returning a free TCP port on 127.0.0.1."""
    import socket

    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    return pick


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on 127.0.0.1 with one bucket; only the standard AWS variables point at it
    (as a user would set them for MinIO or any S3-compatible store). Yields {fs, bucket, env}."""
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    import logging
    import socket

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    import fsspec
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = fsspec.filesystem("s3")
    bucket = "factory-test"
    if not fs.exists(bucket):  # moto keeps its buckets per process, across servers
        fs.mkdir(bucket)
    yield {"fs": fs, "bucket": bucket, "env": env}
    close_s3_sessions()
    mp.undo()
    server.stop()


def close_s3_sessions() -> None:
    """Close the aiohttp sessions of every cached S3 filesystem (else interpreter exit warns
    "Unclosed client session"), then drop them. Asynchronous instances are zarr's: their sessions
    live on zarr's event loop."""
    import s3fs
    from fsspec.asyn import sync

    for inst in list(s3fs.S3FileSystem._cache.values()):
        client = getattr(inst, "_s3", None)
        if client is None:
            continue
        try:
            if inst.asynchronous:
                from zarr.core.sync import sync as zarr_sync

                zarr_sync(client.__aexit__(None, None, None), timeout=5)
            elif inst.loop is not None:
                sync(inst.loop, client.__aexit__, None, None, None, timeout=5)
        except Exception:  # noqa: BLE001 - already closed, or its loop is gone
            pass
        inst._s3 = None
    s3fs.S3FileSystem.clear_instance_cache()
