"""Running a plan's shards: in this process, or as one task per shard on a dask cluster (a local
one we start, with a watch that ends its workers with us, or an existing scheduler), with a
progress bar and the failures of shards collected rather than raised."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import replace

from factory import format as fmt
from factory.generate.config import GenerateConfig
from factory.generate.plan import Plan
from factory.generate.worker import make_shard
from factory.progress import progress_bar


def default_workers() -> int:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count()
    return max(1, min(4, os.cpu_count() or 1))


class ParentWatch:
    """Worker plugin for clusters we start: a worker exits when the client process dies,
    so a killed `factory generate` leaves no orphan writers behind."""

    name = "factory-parent-watch"

    def __init__(self, pid: int):
        self.pid = pid

    def setup(self, worker=None):
        import threading

        def watch():
            # The nannies live in the client process, so nothing restarts us once it is gone.
            while fmt.pid_alive(self.pid):
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, daemon=True, name="factory-parent-watch").start()

    def teardown(self, worker=None):
        pass


def start_client(cfg: GenerateConfig, workers: int):
    import dask
    from distributed import Client, LocalCluster

    if cfg.scheduler:
        return Client(cfg.scheduler), None
    import torch

    gpus = torch.cuda.device_count() if (cfg.device is None or str(cfg.device).startswith("cuda")) else 0
    dask.config.set({"distributed.worker.daemon": False, "distributed.logging.distributed": "error",
                     "distributed.scheduler.allowed-failures": ALLOWED_FAILURES})
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True,
        dashboard_address=":0" if cfg.dashboard else None,
        # without the dashboard the scheduler's bare HTTP server (health checks) takes a free local port
        scheduler_kwargs=None if cfg.dashboard else {"dashboard_address": "127.0.0.1:0"},
        resources={"GPU": 1} if gpus else None, silence_logs=40,
    )
    client = Client(cluster)
    if cfg.dashboard:
        import importlib.util

        note = "" if importlib.util.find_spec("bokeh") else " (its pages need bokeh: pip install 'bokeh>=3.1')"
        print(f"dask dashboard: {client.dashboard_link}{note}", file=sys.stderr, flush=True)
    from distributed import WorkerPlugin

    plugin = type("ParentWatch", (ParentWatch, WorkerPlugin), {})(os.getpid())
    client.register_plugin(plugin)
    return client, cluster


# Attempts of a shard that may die with their worker: the scheduler's, then the client resubmits.
ALLOWED_FAILURES = 10
RESUBMITS = 3


def task_resources(client, cfg: GenerateConfig) -> dict | None:
    """{"GPU": 1} when the cluster's workers declare GPU resources (one shard per GPU at a time).
    On an existing scheduler this waits for a first worker (workers may join later)."""
    if cfg.scheduler and not client.scheduler_info()["workers"]:
        print(f"waiting for dask workers on {cfg.scheduler}", file=sys.stderr, flush=True)
        client.wait_for_workers(1)
    if any(w.get("resources", {}).get("GPU") for w in client.scheduler_info()["workers"].values()):
        return {"GPU": 1}
    return None


def run_shards(cfg: GenerateConfig, plan: Plan, todo: list[int], done: dict) -> list[dict]:
    S = cfg.shard_size
    total = sum(min(S, cfg.n - k * S) for k in todo)
    workers = cfg.workers if cfg.workers is not None else default_workers()
    bar = progress_bar(total=total, unit="cand", desc="generate", disable=not cfg.progress, dynamic_ncols=True,
               smoothing=0.1)
    failures = []

    def record(status) -> bool:
        """Count a shard's status; True when the job should stop (its store is unreachable)."""
        if status.get("ok"):
            done[status["shard"]] = status["result"]
        else:
            failures.append(status)
        failed = {f["shard"] for f in failures}
        waiting = [k for k in todo if k not in done and k not in failed]
        bar.set_postfix_str(
            f"shards {len(done)}/{plan.n_shards}"
            + (f", failed {len(failures)}" if failures else "")
            # at the tail of a job, say what it is still waiting for (no silent hang)
            + (f", waiting on {', '.join(map(str, waiting))}" if 0 < len(waiting) <= 4 else ""),
            refresh=False,  # shown by the update below, at most once per FACTORY_PROGRESS_SECONDS when piped
        )
        bar.update(status["samples"] if status.get("ok") else 0)
        return bool(status.get("stop"))

    job = plan.job(cfg.out, batch_size=cfg.batch_size, device=cfg.device)
    if cfg.same_platform:  # every new shard must match the shards made before (checked on its worker)
        job = replace(job, same_platform=next((d["platform"] for d in done.values() if d.get("platform")), None))
    try:
        if workers == 0 and not cfg.scheduler:
            for k in todo:
                if record(make_shard(job, k, plan.latent_source)):
                    break
            return failures
        client, cluster = start_client(cfg, workers)
        try:
            ncpu = os.cpu_count() or 1
            threads = None if cfg.scheduler else max(1, ncpu // max(1, workers))
            run_on_dask(client, replace(job, threads=threads), plan, todo, record=record,
                        resources=task_resources(client, cfg))
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    finally:
        bar.close()
    return failures


def run_on_dask(client, job, plan: Plan, todo: list[int], *, record, resources: dict | None) -> None:
    """One task per shard; each carries the job and the latent source (small specs: workers open files
    themselves), never scattered data, so a lost worker loses only its running shard. A shard whose
    attempts all died with workers is resubmitted under a new key, RESUBMITS times."""
    from distributed import as_completed

    def submit(k: int, attempt: int):
        key = f"shard-{plan.spec_hash[:12]}-{k:06d}" + (f"-r{attempt}" if attempt else "")
        fut = client.submit(make_shard, job, k, plan.latent_source, key=key, resources=resources, pure=False)
        shard_of[fut.key] = (k, attempt)
        held.append(fut)  # kept until the end, so the scheduler keeps each task's lost-attempt count
        return fut

    shard_of: dict = {}
    held: list = []
    queue = as_completed([submit(k, 0) for k in todo])
    for fut in queue:
        k, attempt = shard_of[fut.key]
        try:
            stop = record(fut.result())
        except Exception as e:  # the shard's workers kept dying (KilledWorker) or similar
            if attempt < RESUBMITS:
                queue.add(submit(k, attempt + 1))
                continue
            stop = record({"shard": k, "ok": False, "error": f"shard {k}: {type(e).__name__}: {e}"})
        if stop:  # the store is unreachable: every other shard would fail the same way, slowly
            client.cancel(held)
            break
    retried = lost_attempts(client, [f.key for f in held])
    if retried:
        from tqdm import tqdm

        tqdm.write(f"{retried} shard attempt(s) were lost with a worker and retried", file=sys.stderr)


def lost_attempts(client, keys) -> int:
    """How many task attempts died with their worker (the scheduler's `suspicious` counts)."""

    def count(dask_scheduler, keys=tuple(keys)):
        return sum(dask_scheduler.tasks[k].suspicious for k in keys if k in dask_scheduler.tasks)

    try:
        return int(client.run_on_scheduler(count))
    except Exception:  # an external scheduler may refuse run_on_scheduler
        return 0
