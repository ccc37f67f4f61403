"""Shard-range tasks on an existing dask cluster, for the work after generation (`verify`): each task is a
small reference (a dataset URL and a shard range) that its worker opens itself, results come back in task
order, and a task whose attempts died with their workers is submitted again (a lost worker costs a retry,
never a changed result)."""
from __future__ import annotations

import sys
from collections.abc import Callable

from factory.format import FactoryError

# Times a task whose attempts all died with workers (the scheduler's allowed-failures each) is resubmitted.
RESUBMITS = 3


def shard_ranges(n_shards: int, tasks: int = 64) -> list[tuple[int, int]]:
    """Shard ids 0..n_shards-1 as at most `tasks` contiguous ranges [lo, hi) of near-equal size."""
    size = max(1, -(-n_shards // max(1, tasks)))
    return [(lo, min(n_shards, lo + size)) for lo in range(0, n_shards, size)]


def run_tasks(address: str | None, fn: Callable, tasks: list[dict], *, name: str, workers: int = 0) -> list:
    """``fn(**task)`` for every task on the dask scheduler at `address` (waiting for a first worker), or on a
    local cluster of `workers` processes started for them; the results in the order of `tasks`. A FactoryError
    raised by a task is raised here; any other failure (its worker died: KilledWorker, a lost connection)
    resubmits the task under a new key, RESUBMITS times."""
    if address is None:
        import dask
        from distributed import LocalCluster

        with dask.config.set({"distributed.logging.distributed": "error"}), \
                LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                             scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}, silence_logs=40) as cluster:
            return run_tasks(cluster.scheduler_address, fn, tasks, name=name)
    from distributed import Client, as_completed

    try:
        client = Client(address, timeout="30s")
    except OSError as e:
        raise FactoryError(f"cannot reach the dask scheduler at {address} ({e}); start it with "
                           "`dask scheduler` or pass another --scheduler") from None
    try:
        if not client.scheduler_info()["workers"]:
            print(f"waiting for dask workers on {address}", file=sys.stderr, flush=True)
            client.wait_for_workers(1)
        which: dict = {}

        def submit(i: int, attempt: int):
            fut = client.submit(fn, **tasks[i], key=f"{name}-{i:06d}" + (f"-r{attempt}" if attempt else ""),
                                pure=False)
            which[fut.key] = (i, attempt)
            return fut

        results: dict[int, object] = {}
        retried = 0
        queue = as_completed([submit(i, 0) for i in range(len(tasks))])
        for fut in queue:
            i, attempt = which[fut.key]
            try:
                results[i] = fut.result()
            except FactoryError:
                raise
            except Exception as e:  # noqa: BLE001 - the task's workers kept dying, or its connection was lost
                if attempt >= RESUBMITS:
                    raise FactoryError(f"{name} task {i} failed {attempt + 1} times on {address} "
                                       f"({type(e).__name__}: {e}); check the workers' logs") from None
                retried += 1
                queue.add(submit(i, attempt + 1))
        if retried:
            print(f"{retried} task(s) lost with a worker were run again", file=sys.stderr, flush=True)
        return [results[i] for i in range(len(tasks))]
    finally:
        client.close()
