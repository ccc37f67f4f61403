"""Benchmark `factory filter --max-fg 0.5 --histogram reference` on a synthetic 1,000,000-row index.

Builds (once, under --root) the dataset skeleton of benchmarks/scale_bench.py: the contract's
real index columns in fragments of 1,000 rows written by generate's own fragment writer, and a
valid manifest; tars are not needed because filter reads only the index. Prints the
median of 3 timed runs, both in-process (`factory.api.run_filter`) and as the CLI
(a fresh `python -m factory.cli filter ...` process, so imports are included),
after one untimed warm-up run. Hardware is printed with the figures.

    python benchmarks/filter_bench.py [--rows 1000000] [--root /tmp/filter-bench]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scale_bench import FRAGMENT, build  # noqa: E402  (this folder is on sys.path when run as a script)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--root", default="/tmp/filter-bench")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    t0 = time.perf_counter()
    build(args.root, args.rows)
    print(f"index: {args.rows:,} rows in {-(-args.rows // FRAGMENT)} fragments at {args.root} (ready in {time.perf_counter() - t0:.1f} s)")
    from factory.api import run_filter
    from factory.views.views import FilterSpec

    spec = FilterSpec(max_fg=0.5, histogram="reference")
    out = os.path.join(os.path.dirname(args.root.rstrip("/")), "filter-bench-view.json")
    run_filter(args.root, spec, out, overwrite=True)  # warm-up (page cache, imports)
    inproc = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        r = run_filter(args.root, spec, out, overwrite=True)
        inproc.append(time.perf_counter() - t)
    cmd = [sys.executable, "-m", "factory.cli", "filter", args.root, "--max-fg", "0.5", "--histogram", "reference",
           "--out", out, "--overwrite"]
    cli = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        cli.append(time.perf_counter() - t)
    cpu = platform.processor() or platform.machine()
    print(f"hardware: {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"accepted {r.view['samples']:,} of {args.rows:,}; view {os.path.getsize(out):,} bytes")
    print(f"filter in-process: median {statistics.median(inproc):.2f} s  (runs: {', '.join(f'{x:.2f}' for x in inproc)})")
    print(f"factory filter CLI: median {statistics.median(cli):.2f} s  (runs: {', '.join(f'{x:.2f}' for x in cli)})")


if __name__ == "__main__":
    main()
