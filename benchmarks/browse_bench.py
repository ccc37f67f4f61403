"""Benchmark `factory browse`'s questions on a synthetic 1,000,000-row index (no shard is read).

The index skeleton is filter_bench's (the contract's columns, 1,000 zstd fragments). Times, in
process: opening the dataset and loading its index, a new filter's counts, the first page of a new
sort, a later page of the same order, a histogram, saving the filter as a view; then the peak memory.

    python benchmarks/browse_bench.py [--rows 1000000] [--fragments 1000] [--root /tmp/filter-bench]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--fragments", type=int, default=1000)
    ap.add_argument("--root", default="/tmp/filter-bench")
    a = ap.parse_args()
    build(a.root, a.rows, a.fragments)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {a.rows:,} rows in {a.fragments} fragments")
    views = tempfile.mkdtemp()
    try:
        b = timed("open, load the index", lambda: Browser(a.root, views_dir=views))
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
