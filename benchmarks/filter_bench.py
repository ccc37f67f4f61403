"""Benchmark `factory filter --max-fg 0.5 --histogram reference` on a synthetic 1,000,000-row index.

Builds (once, under --root) a dataset skeleton whose index has the contract's real
columns in 1,000 fragments of 1,000 rows (zstd Parquet, like generate writes) and a
valid manifest; tars are not needed because filter reads only the index. Prints the
median of 3 timed runs, both in-process (`filters.run_filter`) and as the CLI
(a fresh `python -m factory.cli filter ...` process, so imports are included),
after one untimed warm-up run. Hardware is printed with the figures.

    python benchmarks/filter_bench.py [--rows 1000000] [--fragments 1000] [--root /tmp/filter-bench]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from factory import format as fmt  # noqa: E402
from factory.dataset.shards import index_table, parquet_bytes
from factory.fsio import atomic_write


def build(root: str, rows: int, fragments: int, seed: int = 0) -> None:
    if os.path.exists(os.path.join(root, fmt.MANIFEST)):
        m = json.load(open(os.path.join(root, fmt.MANIFEST)))
        if m["samples"] == rows and len(m["shards"]) == fragments:
            return
    rng = np.random.default_rng(seed)
    per = -(-rows // fragments)
    entries = []
    for k in range(fragments):
        first = k * per
        n = min(per, rows - first)
        if n <= 0:
            break
        fg_raw = rng.beta(1.2, 3.0, n).astype(np.float32)
        fg = np.clip(fg_raw - rng.uniform(0, 0.05, n), 0, 1).astype(np.float32)
        hist = rng.random((n, fmt.HIST_BINS), dtype=np.float32) * 1000
        maxima = rng.integers(1, 5, n).astype(np.int32)
        inner = rng.integers(0, 4, n).astype(np.int32)
        ncr = rng.integers(1, 6, n).astype(np.int32)
        cols = {
            "key": np.array([fmt.sample_key(r) for r in range(first, first + n)], dtype=object),
            "shard": np.full(n, k, np.int32), "row": np.arange(first, first + n, dtype=np.int64),
            "fg_ratio_raw": fg_raw, "fg_ratio": fg, "n_components_raw": ncr,
            "n_components": np.minimum(ncr, rng.integers(1, 3, n)).astype(np.int32),
            "hist": hist, "hist_maxima": maxima, "hist_gray_maxima_inner": inner,
            "pass_area": fg < 0.5, "pass_hist_reference": maxima >= 2, "pass_hist_paper": inner >= 2,
            "tar_offset": np.arange(n, dtype=np.int64) * 6144, "tar_size": np.full(n, 6144, np.int64),
        }
        data = parquet_bytes(index_table(cols))
        atomic_write(os.path.join(root, fmt.index_name(k)), data)
        entries.append({"shard": k, "path": fmt.shard_name(k), "index": fmt.index_name(k), "sha256": "0" * 64,
                        "bytes": 0, "samples": n, "first_row": first, "index_sha256": fmt.sha256_bytes(data),
                        "latents_sha256": "0" * 64})
    manifest = {"kind": fmt.DATASET_KIND, "format_version": fmt.FORMAT_VERSION,
                "dataset_id": fmt.dataset_id(entries, None), "samples": sum(e["samples"] for e in entries),
                "bytes": 0, "dim_z": 120, "resolution": 128, "spec": {"note": "synthetic index for filter_bench"},
                "shards": entries}
    atomic_write(os.path.join(root, fmt.MANIFEST), json.dumps(manifest).encode())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--fragments", type=int, default=1000)
    ap.add_argument("--root", default="/tmp/filter-bench")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    t0 = time.perf_counter()
    build(args.root, args.rows, args.fragments)
    print(f"index: {args.rows:,} rows in {args.fragments} fragments at {args.root} (ready in {time.perf_counter() - t0:.1f} s)")
    from factory.views.views import FilterSpec, run_filter

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
