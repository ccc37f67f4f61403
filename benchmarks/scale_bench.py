"""What every index-side command costs at 1M, 4M and 10M rows, beside duckdb on the same Parquet files.

For each size it builds (once, under --root) a dataset skeleton: the real index schema (format
version 2, incl. true_iou and tar offsets) with realistic column distributions and values stored as a
32-px dataset stores them (a fragment is as large as the real 1M run's, rewritten), in fragments of
1,000 rows written by the factory's own fragment writer, and a valid manifest. Tars are not made,
because filter, info and index verification never read them; trainers' first batch does, so the
shards that batch touches are made for real (every sample the same 32 px PNG pair, at the byte
ranges the index records).

Each command runs as a subprocess (imports included), three times (``--repeats``); the run with the
median wall time is reported, with its CPU seconds and peak RSS from ``/usr/bin/time -v``. Measured: ``factory filter --max-fg 0.5 --histogram reference`` (and duckdb's same
query, fetching the accepted (shard, row) pairs), ``factory info`` of the dataset and of the view
(duckdb: the same aggregates), ``factory verify --index-only`` (duckdb: reading key, shard, row of
every fragment), trainers' first batch from the view with ``--access stream`` and ``random``
(default split: 10 permille held out), and the view's size. Then the 10M / 1M cost ratio of each
(10 = linear).

    pip install -e '.[bench]'
    python benchmarks/scale_bench.py [--sizes 1000000,4000000,10000000] [--root /tmp/scale-bench] [--json OUT]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

from factory import format as fmt  # noqa: E402
from factory.dataset.shards import index_table  # noqa: E402
from factory.format import tar_join, tar_records  # noqa: E402

FRAGMENT = 1000
RES = 32
BATCH = 32


# ---------------------------------------------------------------- skeleton

def sample_members(key: str) -> list[tuple[str, bytes]]:
    """The members every skeleton sample has (same bytes for all; fixed sizes so offsets are i * record)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (RES, RES, 3), np.uint8)
    mask = np.zeros((RES, RES), np.uint8)
    mask[8:24, 8:24] = 255
    out = []
    for ext, arr in (("png", img), ("mask.png", mask)):
        b = io.BytesIO()
        Image.fromarray(arr).save(b, format="PNG")
        out.append((f"{key}.{ext}", b.getvalue()))
    lat = io.BytesIO()
    np.save(lat, np.zeros(120, np.float32))
    out += [(f"{key}.json", b'{"skeleton":true}'), (f"{key}.latent.npy", lat.getvalue())]
    return sorted(out)


RECORD = len(tar_records(sample_members("0000000000")))


def skeleton_rows(first: int, n: int, seed: int) -> dict:
    """Index rows first..first+n-1 (shards of FRAGMENT rows), values as a 32-px dataset holds them (ratios of
    pixel counts, histograms of counts), so the files compress like the real 1M run's index."""
    rng = np.random.default_rng([seed, first])
    px = RES * RES
    fg_raw = (np.round(rng.beta(1.2, 3.0, n) * px) / px).astype(np.float32)
    fg = (np.round(np.clip(fg_raw - rng.uniform(0, 0.05, n), 0, 1) * px) / px).astype(np.float32)
    hist = rng.multinomial(6 * px, rng.dirichlet(np.ones(fmt.HIST_BINS) * 0.3, n)).astype(np.float32)
    maxima = rng.integers(1, 5, n).astype(np.int32)
    inner = rng.integers(0, 4, n).astype(np.int32)
    ncr = rng.integers(1, 6, n).astype(np.int32)
    iou = (np.round(rng.beta(5, 2, n) * px) / px).astype(np.float32)
    row = np.arange(first, first + n, dtype=np.int64)
    return {
        "key": np.array([fmt.sample_key(r) for r in range(first, first + n)], dtype=object),
        "shard": (row // FRAGMENT).astype(np.int32), "row": row,
        "fg_ratio_raw": fg_raw, "fg_ratio": fg, "n_components_raw": ncr,
        "n_components": np.minimum(ncr, rng.integers(1, 3, n)).astype(np.int32),
        "hist": hist, "hist_maxima": maxima, "hist_gray_maxima_inner": inner,
        "pass_area": fg < 0.5, "pass_hist_reference": maxima >= 2, "pass_hist_paper": inner >= 2,
        "tar_offset": (row % FRAGMENT) * RECORD, "tar_size": np.full(n, RECORD, np.int64),
        "true_iou": iou, "true_iou_raw": (np.round(np.clip(iou - 0.05, 0, 1) * px) / px).astype(np.float32),
    }


def _write_part(args) -> dict:
    """One part of the compacted index, written by the factory's own part writer (`dataset.compact`)."""
    import pyarrow as pa

    from factory.dataset.compact import part_bytes
    from factory.format import index as fidx

    root, part, seed = args
    first, last = part[0][0]["shard"], part[-1][-1]["shard"]
    path = fidx.part_name(first, last)
    groups = []
    for g in part:
        n = sum(e["samples"] for e in g)
        t = index_table(skeleton_rows(g[0]["first_row"], n, seed))
        groups.append(t.append_column(fidx.KEY_BUCKET, pa.array(fidx.key_buckets(t.column("row").to_numpy()),
                                                                 pa.int16())))
    full = os.path.join(root, path)
    if not os.path.exists(full):  # parts are a pure function of (shards, seed): a killed build resumes
        data = part_bytes(groups, path)
        with open(full + ".tmp", "wb") as f:
            f.write(data)
        os.replace(full + ".tmp", full)
    data = open(full, "rb").read()
    return {"path": path, "first_shard": first, "shards": last - first + 1,
            "rows": sum(e["samples"] for g in part for e in g), "bytes": len(data), "sha256": fmt.sha256_bytes(data),
            "footer_sha256": fmt.sha256_bytes(data[-8 - int.from_bytes(data[-8:-4], "little"):]),
            "row_groups": [[g[0]["shard"], len(g), sum(e["samples"] for e in g)] for g in part]}


def build(root: str, rows: int, seed: int = 0, jobs: int = 2) -> None:
    """The skeleton as a finished run of `rows` writes it: shards of FRAGMENT rows, the index compacted into
    parts by the factory's part writer, a manifest with its index section and statistics, its shard entries in
    the shard table (format 4, written by `format.write_manifest`)."""
    from factory.dataset.compact import compacted_manifest, plan_parts

    if os.path.exists(os.path.join(root, fmt.MANIFEST)):
        m = json.load(open(os.path.join(root, fmt.MANIFEST)))
        if m["samples"] == rows:
            return
    os.makedirs(os.path.join(root, fmt.INDEX_DIR), exist_ok=True)
    entries = []
    for k in range(-(-rows // FRAGMENT)):
        n = min(FRAGMENT, rows - k * FRAGMENT)
        tar_len = -(-(RECORD * n + 1024) // 10240) * 10240  # records, two zero blocks, 10 KiB padding
        entries.append({"shard": k, "path": fmt.shard_name(k), "index": fmt.index_name(k),
                        "sha256": fmt.sha256_bytes(b"skeleton %d" % k), "bytes": tar_len, "samples": n,
                        "first_row": k * FRAGMENT, "index_sha256": fmt.sha256_bytes(b"fragment %d" % k),
                        "latents_sha256": fmt.sha256_bytes(b"latents %d" % k)})
    plan = plan_parts(entries)
    with ProcessPoolExecutor(jobs) as ex:
        parts = list(ex.map(_write_part, [(root, p, seed) for p in plan]))
    lat = fmt.sha256_bytes("".join(e["latents_sha256"] for e in entries).encode())
    manifest = {"kind": fmt.DATASET_KIND, "format_version": fmt.FORMAT_VERSION,
                "dataset_id": fmt.dataset_id(entries, lat), "samples": rows,
                "bytes": sum(e["bytes"] for e in entries), "dim_z": 120, "resolution": RES,
                "spec": {"n": rows, "shard_size": FRAGMENT, "keep_raw_mask": False, "generator": {"name": "shapes"}},
                "latents": {"path": fmt.LATENTS, "sha256_of_shard_hashes": lat},
                "members": {"image": "png", "mask": "mask.png", "latent": "latent.npy", "meta": "json"},
                "shards": entries}
    write_manifest(root, compacted_manifest(manifest, parts))


def write_manifest(root: str, manifest: dict) -> None:
    """manifest.json (and, format 4, its shard table) with the index statistics a real dataset's writer records
    (`factory info` reads them), written by the factory's manifest writer."""
    from factory.dataset.card import index_stats

    manifest["index_stats"] = index_stats(root, manifest, check_sha=False)
    fmt.write_manifest(root, manifest)


def make_tars(root: str, shards: set[int]) -> None:
    """The real tars of `shards` (the ones a first batch reads), at the index's byte ranges."""
    m = fmt.open_dataset(root).manifest
    for e in m["shards"]:
        p = os.path.join(root, e["path"])
        if e["shard"] in shards and not os.path.exists(p):
            os.makedirs(os.path.dirname(p), exist_ok=True)
            recs = [tar_records(sample_members(fmt.sample_key(r)))
                    for r in range(e["first_row"], e["first_row"] + e["samples"])]
            with open(p, "wb") as f:
                f.write(tar_join(recs))


def seal(root: str) -> None:
    """Make the tars a first batch reads (stream and random access) and record their true sha256 and size
    in the manifest (trainers checks each shard it reads), under a new dataset id. The shards a first batch
    reads depend on the index rows only, so a view made before sealing names them."""
    import subprocess

    if os.path.exists(os.path.join(root, ".sealed")):
        return
    view = os.path.join(root, "view.json")
    subprocess.run([sys.executable, "-m", "factory.cli", "filter", root, "--max-fg", "0.5", "--histogram", "reference",
                    "--out", view, "--overwrite"], check=True, cwd=HERE, env=dict(os.environ, PYTHONPATH=HERE),
                   stdout=subprocess.DEVNULL)
    shards = first_batch_shards(view, "stream") | first_batch_shards(view, "random")
    make_tars(root, shards)
    m = dict(fmt.open_dataset(root).manifest)
    m["shards"] = list(m["shards"])  # new dicts, changed below (a shard table's entries are read-only)
    for e in m["shards"]:
        if e["shard"] in shards:
            p = os.path.join(root, e["path"])
            e["sha256"], e["bytes"] = fmt.sha256_bytes(open(p, "rb").read()), os.path.getsize(p)
    m["bytes"] = sum(e["bytes"] for e in m["shards"])
    m["dataset_id"] = fmt.dataset_id(m["shards"], m["latents"]["sha256_of_shard_hashes"], m["format_version"])
    write_manifest(root, m)
    open(os.path.join(root, ".sealed"), "w").close()


def first_batch_shards(view: str, access: str) -> set[int]:
    """Shards the first batch of `trainers train --data VIEW` reads (same planner, default split)."""
    from trainers.data.stream import lazy_order, open_index, rank_steps

    idx = open_index(view, split="train", holdout_permille=10)
    order = lazy_order(idx, 0, 0, len(idx) if access == "random" else 2000)
    pos = rank_steps(order, 0, world_size=1, rank=0, batch_size=BATCH)[0]
    return set(idx.shards_at(pos).tolist())


# ---------------------------------------------------------------- measuring

def run_measured(cmd: list[str], repeats: int = 3) -> tuple[float, float, str, float]:
    """The run with the median wall time of `repeats` runs of `cmd` (`measure_once`)."""
    runs = sorted((measure_once(cmd) for _ in range(max(1, repeats))), key=lambda r: r[0])
    return runs[len(runs) // 2]


def measure_once(cmd: list[str]) -> tuple[float, float, str, float]:
    """(wall seconds, peak RSS MB, stdout, CPU seconds) of one subprocess, measured by /usr/bin/time -v (a small
    parent, so a fork's copy of this process does not count). On a shared machine CPU seconds are steadier."""
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile("r") as rep:
        t = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-v", "-o", rep.name, *cmd], capture_output=True, cwd=HERE,
                           env=dict(os.environ, PYTHONPATH=HERE))
        wall = time.perf_counter() - t
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(map(str, cmd))} failed: {p.stderr.decode()[-2000:]}")
        v = {k.strip(): x.strip() for k, _, x in (ln.rpartition(":") for ln in rep.read().splitlines())}
    cpu = float(v["User time (seconds)"]) + float(v["System time (seconds)"])
    return wall, int(v["Maximum resident set size (kbytes)"]) / 1024, p.stdout.decode(), cpu


DUCK = {
    "filter": "SELECT shard, row FROM read_parquet('{root}/index/*.parquet') "
              "WHERE fg_ratio < 0.5 AND pass_hist_reference",
    "info": "SELECT count(*), avg(fg_ratio), min(fg_ratio), max(fg_ratio), avg(pass_area::INT), "
            "avg(pass_hist_reference::INT), avg(pass_hist_paper::INT), avg(n_components), avg(true_iou), "
            "histogram(n_components_raw) FROM read_parquet('{root}/index/*.parquet')",
    "verify": "SELECT key, shard, row FROM read_parquet('{root}/index/*.parquet')",
}


def duck(query: str) -> list[str]:
    code = ("import duckdb, sys; con = duckdb.connect(); r = con.execute(sys.argv[1]).fetchnumpy(); "
            "print(len(next(iter(r.values()))))")
    return [sys.executable, "-c", code, query]


def first_batch_cmd(view: str, access: str) -> list[str]:
    code = f"""
import time, sys
t0 = time.perf_counter()
from trainers.data.stream import LoaderState, TrainStream, open_index
idx = open_index(sys.argv[1], split="train", holdout_permille=10)
t_index = time.perf_counter() - t0
if sys.argv[2] == "random":
    from trainers.data.random_access import open_random_access
    it = iter(open_random_access(sys.argv[1], idx, batch_size={BATCH}).loader(num_workers=0))
else:
    it = iter(TrainStream(idx, batch_size={BATCH}))
b = next(it)
print(f"first batch {{tuple(b['image'].shape)}} after {{time.perf_counter() - t0:.2f}} s, "
      f"{{t_index:.2f}} s of them opening the view and splitting off the hold-out")
"""
    return [sys.executable, "-c", code, view, access]


def bench_size(root: str, rows: int, log, repeats: int = 3, skip: tuple = ()) -> dict:
    t = time.perf_counter()
    build(root, rows)
    seal(root)
    log(f"{rows:,} rows: skeleton ready at {root} ({time.perf_counter() - t:.0f} s)")
    view = os.path.join(root, "view.json")
    fac = [sys.executable, "-m", "factory.cli"]
    res = {}
    res["filter"] = run_measured(fac + ["filter", root, "--max-fg", "0.5", "--histogram", "reference", "--out", view,
                                       "--overwrite"], repeats)
    res["view_bytes"] = os.path.getsize(view)
    res["info"] = run_measured(fac + ["info", root], repeats)
    res["info_view"] = run_measured(fac + ["info", view], repeats)
    if "verify_index" not in skip:
        res["verify_index"] = run_measured(fac + ["verify", root, "--index-only"], repeats)
    for access in ("stream", "random"):
        res[f"first_batch_{access}"] = run_measured(first_batch_cmd(view, access), repeats)
    for name, q in DUCK.items():
        if not (name == "verify" and "verify_index" in skip):
            res[f"duckdb_{name}"] = run_measured(duck(q.format(root=root)), repeats)
    for k, v in res.items():
        if isinstance(v, tuple):
            last = v[2].strip().splitlines()[-1][:90] if v[2].strip() else ""
            log(f"  {k:20s} {v[0]:7.2f} s wall {v[3]:7.2f} s CPU {v[1]:7.0f} MB   {last}")
        else:
            log(f"  {k:20s} {v:,} bytes")
    return res


ROWS_OUT = [("factory filter", "filter", "duckdb_filter"), ("factory info DATASET", "info", "duckdb_info"),
            ("factory info VIEW", "info_view", "duckdb_info"), ("factory verify --index-only", "verify_index", "duckdb_verify"),
            ("trainers first batch (stream)", "first_batch_stream", None),
            ("trainers first batch (random)", "first_batch_random", None)]


def table(results: dict[int, dict]) -> str:
    sizes = sorted(results)
    head = "| command | " + " | ".join(f"{s / 1e6:g}M: wall s / CPU s / MB" for s in sizes) + \
        " | duckdb wall / CPU s at each | " f"{sizes[-1] / 1e6:g}M / {sizes[0] / 1e6:g}M wall, CPU |"
    lines = [head, "|" + "---|" * (len(sizes) + 3)]
    for label, key, dk in ROWS_OUT:
        if any(key not in results[s] for s in sizes):
            continue
        cells = [f"{results[s][key][0]:.1f} / {results[s][key][3]:.1f} / {results[s][key][1]:.0f}" for s in sizes]
        dcell = " · ".join(f"{results[s][dk][0]:.1f} / {results[s][dk][3]:.1f}" for s in sizes) if dk else "-"
        big, small = results[sizes[-1]][key], results[sizes[0]][key]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {dcell} | {big[0] / small[0]:.1f}, {big[3] / small[3]:.1f} |")
    vb = [f"{results[s]['view_bytes'] / 1e6:.2f} MB" for s in sizes]
    lines.append("| view size | " + " | ".join(vb) + " | - | "
                 f"{results[sizes[-1]]['view_bytes'] / results[sizes[0]]['view_bytes']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000,4000000,10000000")
    ap.add_argument("--root", default="/tmp/scale-bench")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each command (the median is reported)")
    ap.add_argument("--skip", default="", help="measurements left out, e.g. verify_index (and its duckdb twin)")
    ap.add_argument("--json", help="also write every measurement here: {rows: {command: {wall_s, cpu_s, peak_mb, "
                                   "stdout}}}")
    args = ap.parse_args()

    def log(msg):
        print(msg, flush=True)

    log(f"machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), Python "
        f"{platform.python_version()}, load average at start {os.getloadavg()[0]:.1f}")
    results = {}
    for rows in (int(s) for s in args.sizes.split(",")):
        results[rows] = bench_size(os.path.join(args.root, f"{rows // 1_000_000}M" if rows >= 1e6 else str(rows)),
                                   rows, log, args.repeats, tuple(args.skip.split(",")))
    log(f"load average at end {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({rows: {k: dict(zip(("wall_s", "peak_mb", "stdout", "cpu_s"), v)) if isinstance(v, tuple) else v
                              for k, v in res.items()} for rows, res in results.items()}, f, indent=1)
    log(table(results))
    sizes = sorted(results)
    if len(sizes) > 1:
        big, small = results[sizes[-1]], results[sizes[0]]
        f = sizes[-1] / sizes[0]
        log(f"cost ratio {sizes[-1] / 1e6:g}M / {sizes[0] / 1e6:g}M (x{f:g} rows; <= {f:g} is linear or better), "
            "wall / CPU: " + ", ".join(f"{key} {big[key][0] / small[key][0]:.1f} / {big[key][3] / small[key][3]:.1f}"
                                       for _, key, _ in ROWS_OUT))
        fd = big["filter"][0] / big["duckdb_filter"][0]
        fc = big["filter"][3] / big["duckdb_filter"][3]
        log(f"targets at {sizes[-1] / 1e6:g}M: filter {big['filter'][0]:.1f} s = {fd:.2f}x duckdb's wall, "
            f"{fc:.2f}x its CPU (<= 2), "
            f"{big['filter'][1]:.0f} MB (<= 2048); info {big['info'][0]:.1f} s (< 5); first batch "
            f"{big['first_batch_stream'][0]:.1f} s stream, {big['first_batch_random'][0]:.1f} s random (< 10)")


if __name__ == "__main__":
    main()
