"""An external dask cluster started the way users start one: `dask scheduler` and `dask worker
--nworkers 2 --nthreads 1 --resources GPU=1` as separate processes on 127.0.0.1, `factory generate
--scheduler tcp://...` writing to S3 (moto) with its embeddings read from S3.

The job starts before any worker exists (every worker joins late), one worker process is SIGKILLed
mid-run, and the shards must be byte-identical to a local in-process run of the same command.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
from click.testing import CliRunner
from helpers import DASK, REPO, downgrade, start_process, start_scheduler, stop_process

from factory import format as fmt
from factory.cli import main

pytestmark = pytest.mark.s3

SPEC = ["generate", "--generator", "shapes", "--resolution", "64", "--n", "360", "--shard-size", "40",
        "--seed", "5", "--z-noise", "0.3", "--quiet"]


def wait_for(cond, timeout: float, what: str, procs=()):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return
        for p in procs:
            assert p.poll() is None or p.returncode == 0, f"{what}: a process exited with {p.returncode}"
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def worker_processes(cli: subprocess.Popen) -> list[psutil.Process]:
    """The worker processes of a `dask worker --nworkers N` command (its nannies run inside it)."""
    return [c for c in psutil.Process(cli.pid).children() if "spawn_main" in " ".join(c.cmdline())]


def test_external_cluster_late_workers_s3_and_a_killed_worker(s3_server, free_port, tmp_path, torch_one_thread):
    fs, bucket = s3_server["fs"], s3_server["bucket"]
    E = np.random.default_rng(3).standard_normal((300, 120)).astype(np.float32)
    (tmp_path / "emb").mkdir()
    np.save(tmp_path / "emb" / "imagenet_z.npy", E)
    fs.put(str(tmp_path / "emb" / "imagenet_z.npy"), f"{bucket}/emb/imagenet_z.npy")
    sha = hashlib.sha256((tmp_path / "emb" / "imagenet_z.npy").read_bytes()).hexdigest()

    # the same command run locally, in this process
    local = tmp_path / "local"
    r = CliRunner().invoke(main, SPEC + ["--embeddings", str(tmp_path / "emb" / "imagenet_z.npy"),
                                         "--workers", "0", "--out", str(local)])
    assert r.exit_code == 0, r.output

    env = {**os.environ, **s3_server["env"], "PYTHONUNBUFFERED": "1", "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    client_env = {**env, "FACTORY_HOME": str(tmp_path / "client-home")}
    worker_env = {**env, "FACTORY_HOME": str(tmp_path / "worker-home")}  # another host: nothing shared but S3
    root = f"s3://{bucket}/cluster-ds"
    procs = []
    try:
        sched, address = start_scheduler(free_port(), env, tmp_path / "scheduler.log")
        procs.append(sched)
        job = start_process([sys.executable, "-m", "factory.cli", *SPEC, "--embeddings",
                             f"s3://{bucket}/emb/imagenet_z.npy", "--scheduler", address, "--out", root],
                            client_env, tmp_path / "generate.log")
        procs.append(job)
        wait_for(lambda: "waiting for dask workers" in (tmp_path / "generate.log").read_text(), 60,
                 "the job to wait for workers", procs)
        workers = start_process([DASK, "worker", address, "--nworkers", "2", "--nthreads", "1", "--resources",
                                 "GPU=1", "--no-dashboard"], worker_env, tmp_path / "workers.log")
        procs.append(workers)

        def first_shard() -> bool:
            fs.invalidate_cache()
            return fs.exists(f"{bucket}/cluster-ds/done") and len(fs.ls(f"{bucket}/cluster-ds/done")) >= 1

        wait_for(first_shard, 120, "a first committed shard on S3", procs)
        victims = worker_processes(workers)
        assert len(victims) == 2, [" ".join(v.cmdline()) for v in victims]
        victims[0].send_signal(signal.SIGKILL)
        fs.invalidate_cache()
        assert len(fs.ls(f"{bucket}/cluster-ds/done")) < 9, "the job ended before a worker was killed"
        job.wait(timeout=240)
        log = (tmp_path / "generate.log").read_text()
        assert job.returncode == 0, log[-3000:]
    finally:
        for p in reversed(procs):
            stop_process(p)

    fs.invalidate_cache()
    remote = json.loads(fs.cat(f"{bucket}/cluster-ds/manifest.json"))
    ref = json.loads((local / "manifest.json").read_text())
    assert remote["dataset_id"] == ref["dataset_id"] and remote["samples"] == 360
    assert remote["spec"]["latents"] == ref["spec"]["latents"] and remote["spec"]["latents"]["name"] == "imagenet_z"
    for s in ref["shards"]:
        got = hashlib.sha256(fs.cat(f"{bucket}/cluster-ds/{s['path']}")).hexdigest()
        assert got == hashlib.sha256((local / s["path"]).read_bytes()).hexdigest() == s["sha256"], s["path"]
    # the workers fetched the embeddings from S3 themselves, once per host, checked by sha256
    assert (tmp_path / "worker-home" / "cache" / sha / "imagenet_z.npy").read_bytes() == \
        (tmp_path / "emb" / "imagenet_z.npy").read_bytes()


def verify_cmd(url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "factory.cli", "verify", url, *extra]


def same_verdict(a: subprocess.CompletedProcess, b: subprocess.CompletedProcess) -> None:
    """Same exit code, stdout and problem lines (the cluster's own notes on stderr aside)."""
    def problems(p):
        return [x for x in p.stderr.splitlines() if "dask workers" not in x and "lost with a worker" not in x]

    assert (a.returncode, a.stdout, problems(a)) == (b.returncode, b.stdout, problems(b))


def with_a_killed_worker(client, cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    """`cmd` run while one worker of `client`'s cluster is SIGKILLed as soon as it holds a task."""
    client.wait_for_workers(2, timeout=120)  # a killed worker's nanny starts a new one
    job = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pids = client.run(os.getpid)
        busy = []
        wait_for(lambda: busy.extend(a for a, keys in client.processing().items() if keys) or busy, 120,
                 "a worker with tasks", [job])
        assert job.poll() is None, "the command ended before a worker was killed"
        os.kill(pids[busy[0]], signal.SIGKILL)
        out, err = job.communicate(timeout=240)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    return subprocess.CompletedProcess(cmd, job.returncode, out, err)


def test_verify_filter_upgrade_on_the_dask_cli_cluster_s3_and_a_killed_worker(s3_server, free_port, tmp_path):
    """`factory verify --cluster` on S3 datasets (clean, tampered) gives exactly the report and exit code of the
    run in one process, `filter --cluster` the same view and `upgrade --cluster` the same files, also when a
    worker is SIGKILLed while it holds their tasks."""
    from distributed import Client

    fs, bucket = s3_server["fs"], s3_server["bucket"]
    local = tmp_path / "ds"
    r = CliRunner().invoke(main, ["generate", "--generator", "shapes", "--resolution", "32", "--n", "300",
                                  "--shard-size", "10", "--workers", "0", "--quiet", "--out", str(local)])
    assert r.exit_code == 0, r.output
    fs.put(str(local), f"{bucket}/clean", recursive=True)
    fs.put(str(local), f"{bucket}/bad", recursive=True)
    m = json.loads((local / "manifest.json").read_text())
    tar = bytearray((local / m["shards"][7]["path"]).read_bytes())
    tar[700] ^= 1  # one flipped bit inside shard 7
    fs.pipe(f"{bucket}/bad/{m['shards'][7]['path']}", bytes(tar))
    fs.rm(f"{bucket}/bad/{m['shards'][21]['index']}")  # and shard 21's index fragment is gone
    env = {**os.environ, **s3_server["env"], "PYTHONUNBUFFERED": "1", "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}

    def here(*args: str) -> subprocess.CompletedProcess:
        """`factory ARGS` in this process (the client side of a command is not what is tested here)."""
        r = CliRunner().invoke(main, list(args))
        assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
        return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr)

    urls = {k: f"s3://{bucket}/{k}" for k in ("clean", "bad")}
    alone = {k: here("verify", u) for k, u in urls.items()}
    assert alone["clean"].returncode == 0 and alone["clean"].stdout.startswith("OK "), alone["clean"]
    assert alone["bad"].returncode == 1 and "shard 7 " in alone["bad"].stderr and "shard 21 " in alone["bad"].stderr
    assert "2 of 30 shards bad" in alone["bad"].stderr

    procs = []
    try:
        sched, address = start_scheduler(free_port(), env, tmp_path / "scheduler.log")
        procs.append(sched)
        workers = start_process([DASK, "worker", address, "--nworkers", "2", "--nthreads", "1", "--no-dashboard"],
                                {**env, "FACTORY_HOME": str(tmp_path / "worker-home")}, tmp_path / "workers.log")
        procs.append(workers)
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
            for k, u in urls.items():
                same_verdict(here("verify", u, "--cluster", address), alone[k])
            # filter: the same view bytes as one process
            for how, extra in (("one", []), ("many", ["--cluster", address])):
                r = here("filter", urls["clean"], "--max-fg", "0.5", "--out", f"s3://{bucket}/views/{how}.json", *extra)
                assert r.returncode == 0, r.stderr
            fs.invalidate_cache()
            assert fs.cat(f"{bucket}/views/one.json") == fs.cat(f"{bucket}/views/many.json")
            # a worker killed while it holds tasks: they run again elsewhere, the result is unchanged
            same_verdict(with_a_killed_worker(client, verify_cmd(urls["bad"], "--cluster", address), env),
                         alone["bad"])
            r = with_a_killed_worker(client, [sys.executable, "-m", "factory.cli", "filter", urls["clean"], "--max-fg",
                                              "0.5", "--out", f"s3://{bucket}/views/killed.json", "--cluster", address],
                                     env)
            assert r.returncode == 0, r.stderr
            fs.invalidate_cache()
            assert fs.cat(f"{bucket}/views/killed.json") == fs.cat(f"{bucket}/views/one.json")
            # upgrade of a version-1 dataset: the same manifest and fragments as one process
            old = tmp_path / "v1"
            shutil.copytree(local, old)
            downgrade(str(old))
            for how in ("up-one", "up-many"):
                fs.put(str(old), f"{bucket}/{how}", recursive=True)
            assert here("upgrade", f"s3://{bucket}/up-one").returncode == 0
            r = with_a_killed_worker(client, [sys.executable, "-m", "factory.cli", "upgrade", f"s3://{bucket}/up-many",
                                              "--cluster", address], env)
            assert r.returncode == 0 and "tars untouched" in r.stdout, r.stderr
            fs.invalidate_cache()
            for path in [fmt.MANIFEST, *(e["index"] for e in m["shards"]), *(fmt.done_name(e["shard"]) for e in m["shards"])]:
                assert fs.cat(f"{bucket}/up-one/{path}") == fs.cat(f"{bucket}/up-many/{path}"), path
            assert json.loads(fs.cat(f"{bucket}/up-many/{fmt.MANIFEST}"))["dataset_id"] == m["dataset_id"]
    finally:
        for p in reversed(procs):
            stop_process(p)
