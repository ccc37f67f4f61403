"""Benchmark `factory browse`'s questions on a synthetic 1,000,000-row index (no shard is read), or the
server of a real dataset in a fresh process (`--dataset`).

The index skeleton is filter_bench's (the contract's columns, 1,000 zstd fragments). Times, in
process: opening the dataset, a new filter's counts, the first page of a new sort, a later page of the
same order, a histogram, saving the filter as a view; then the peak memory.

With ``--dataset DATASET`` (e.g. a scale_bench skeleton, format 3): ``factory browse`` started as its own
process, then, timed from its start, the first ``/api/rows`` answer and the first ``/api/tile`` (of the first
page's first sample, or, when its shard has no tar, of the first sample of the first shard that has one), a
new filter's counts, and a script of clicks (sorts, histograms of every column the page shows, pages deep
into the data, the map's colours); the server's CPU seconds and peak RSS (``/proc``) after each, and the
load average.

    python benchmarks/browse_bench.py [--rows 1000000] [--fragments 1000] [--root /tmp/filter-bench]
    python benchmarks/browse_bench.py --dataset /work/scale/100M [--views-dir /tmp/browse-bench-views]
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from filter_bench import build  # noqa: E402

from factory.browse.api import Browser  # noqa: E402

WHERE = "fg_ratio < 0.3 and n_components <= 2"


def timed(label: str, fn):
    t = time.perf_counter()
    out = fn()
    print(f"  {label:<44} {1000 * (time.perf_counter() - t):8.0f} ms")
    return out


def proc_stats(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak RSS in MB) of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return cpu, hwm / 1024


def served(dataset: str, views_dir: str, port: int) -> None:
    """Time a fresh `factory browse` process answering a script of the page's requests."""
    import json
    import subprocess
    import urllib.error
    import urllib.parse
    import urllib.request

    from factory import format as fmt

    base = f"http://127.0.0.1:{port}"

    def get(path: str, **q):
        with urllib.request.urlopen(base + path + "?" + urllib.parse.urlencode(q), timeout=600) as r:
            return r.read()

    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "factory.cli", "browse", dataset, "--port", str(port),
                             "--views-dir", views_dir], env=env, stdout=subprocess.DEVNULL)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {dataset}; load average "
          f"{os.getloadavg()[0]:.1f} at start")

    def mark(label: str, t: float) -> None:
        cpu, rss = proc_stats(proc.pid)
        print(f"  {label:<58} {time.perf_counter() - t:7.2f} s  (server: {cpu:6.1f} CPU s, peak {rss:5.0f} MB, "
              f"load {os.getloadavg()[0]:.1f})", flush=True)

    try:
        while True:
            try:
                page = json.loads(get("/api/rows", limit=48))
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None:
                    raise SystemExit("factory browse stopped") from None
                time.sleep(0.05)
        mark("start -> first /api/rows (48 rows, row order)", t0)
        key = page["rows"][0]["key"]
        shard = page["rows"][0]["shard"]
        tars = sorted(os.listdir(os.path.join(dataset, "shards"))) if os.path.isdir(os.path.join(dataset, "shards")) \
            else []
        if f"{shard:06d}.tar" not in tars and tars:
            import tarfile

            with tarfile.open(os.path.join(dataset, "shards", tars[0])) as tf:
                key = tf.next().name.split(".", 1)[0]
            print(f"  (shard {shard} has no tar: the tile of sample {key}, shard {tars[0][:6]}, the first with one)")
        get("/api/tile", key=key, overlay="mask")
        mark("start -> first /api/tile", t0)
        clicks = [
            ("new filter: counts and first page", dict(path="/api/rows", where=WHERE, limit=48)),
            ("another filter (bools)", dict(path="/api/rows", where="pass_hist_reference == true and fg_ratio > 0.1",
                                            limit=48)),
            ("page 1,000 of it (offset 48,000)", dict(path="/api/rows", where=WHERE, offset=48_000, limit=48)),
            ("a page deep into the data (all, offset n/2)", None),
            ("rejected rows, row order", dict(path="/api/rows", where=WHERE, show="rejected", limit=48)),
            ("sort by fg_ratio desc, first page", dict(path="/api/rows", where=WHERE, sort="fg_ratio", order="desc",
                                                       limit=48)),
            ("same sort, page 100", dict(path="/api/rows", where=WHERE, sort="fg_ratio", order="desc", offset=4752,
                                         limit=48)),
            ("sort by n_components asc, all rows", dict(path="/api/rows", where="", show="all", sort="n_components",
                                                        limit=48)),
            ("histogram of fg_ratio (every page column in one pass)", dict(path="/api/hist", column="fg_ratio",
                                                                          where=WHERE)),
            ("histogram of n_components (from that pass)", dict(path="/api/hist", column="n_components",
                                                               where=WHERE)),
            ("sample detail", None),
        ]
        total = json.loads(get("/api/meta"))["candidates"]
        for label, q in clicks:
            t = time.perf_counter()
            if label.startswith("a page deep"):
                get("/api/rows", where="", show="all", offset=total // 2, limit=48)
            elif label == "sample detail":
                get("/api/sample", key=key, where=WHERE)
            else:
                q = dict(q)
                get(q.pop("path"), **q)
            mark(label, t)
    finally:
        proc.send_signal(2)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(f"  load average at the end {os.getloadavg()[0]:.1f}; keys of the index: {fmt.sample_key(0)} ..")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--fragments", type=int, default=1000)
    ap.add_argument("--root", default="/tmp/filter-bench")
    ap.add_argument("--dataset", help="time `factory browse DATASET` as its own process instead")
    ap.add_argument("--views-dir", default="/tmp/browse-bench-views")
    ap.add_argument("--port", type=int, default=8791)
    a = ap.parse_args()
    if a.dataset:
        os.makedirs(a.views_dir, exist_ok=True)
        served(a.dataset, a.views_dir, a.port)
        return
    build(a.root, a.rows, a.fragments)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {a.rows:,} rows in {a.fragments} fragments")
    views = tempfile.mkdtemp()
    try:
        b = timed("open (the index read lazily)", lambda: Browser(a.root, views_dir=views))
        timed("counts of a new filter", lambda: b.counts(WHERE))
        timed("first page, new sort (fg_ratio desc)", lambda: b.rows(WHERE, sort="fg_ratio", descending=True))
        timed("page 100 of that order", lambda: b.rows(WHERE, sort="fg_ratio", descending=True, offset=4752))
        timed("rejected rows by n_components", lambda: b.rows(WHERE, show="rejected", sort="n_components"))
        timed("histogram of fg_ratio", lambda: b.histogram("fg_ratio", WHERE))
        timed("save the filter as a view", lambda: b.save_view("bench", WHERE))
    finally:
        shutil.rmtree(views)
    print(f"  peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
