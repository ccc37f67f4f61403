"""The shard cache on a remote store: epoch 1 vs epoch 2 time and bytes fetched per epoch, with the cache
and without, 2 ranks on one machine (torchrun), moto S3 behind a proxy on 127.0.0.1 that counts the bytes
and can add a delay per request and a bandwidth cap (tests/store_proxy.py).

Each epoch is one `torchrun --nproc-per-node 2` launch of this file's rank part, which reads its rank's
batches of that epoch (TrainStream: decode included, no model) and reports its time; the proxy's log
between launches gives the bytes. Prints a Markdown table.

    python benchmarks/cache_bench.py --samples 240 --delay-ms 50 --mbps 1
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rank_part(url: str, cache_dir: str, epoch: int, batch_size: int) -> None:
    from trainers.data.cache import open_cache
    from trainers.data.stream import LoaderState, TrainStream, open_index

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    t0 = time.perf_counter()
    index = open_index(url, split="all")
    index = open_cache(index, cache_dir=cache_dir or None, enabled=bool(cache_dir))
    n = 0
    for batch in TrainStream(index, batch_size=batch_size, world_size=world, rank=rank, seed=0,
                             shuffle_window=1, state=LoaderState(0, epoch, 0)):
        n += batch["image"].shape[0]
    print(json.dumps({"rank": rank, "seconds": time.perf_counter() - t0, "samples": n}), flush=True)


def make_dataset(out: Path, samples: int, shard_size: int) -> Path:
    from factory.generate.config import GenerateConfig
    from factory.generate.engine import generate

    generate(GenerateConfig(n=samples, out=str(out), generator="shapes", generator_options={"resolution": 64},
                            shard_size=shard_size, workers=0, progress=False))
    return out


def one_epoch(url: str, cache_dir: str, epoch: int, env: dict, batch_size: int) -> float:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           __file__, "--rank-part", url, cache_dir, str(epoch), str(batch_size)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    ranks = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return max(r["seconds"] for r in ranks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=240)
    ap.add_argument("--shard-size", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--delay-ms", type=float, default=50.0, help="added to every request (throttled rows)")
    ap.add_argument("--mbps", type=float, default=1.0, help="bandwidth cap per connection, MB/s (throttled rows)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    import logging

    from moto.server import ThreadedMotoServer
    from store_proxy import StoreProxy

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    work = Path(tempfile.mkdtemp(prefix="cache-bench-"))
    ds = make_dataset(work / "ds", args.samples, args.shard_size)
    total = sum(s["bytes"] for s in json.loads((ds / "manifest.json").read_text())["shards"])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    port = server._server.server_port
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                           "AWS_ENDPOINT_URL")})
    import fsspec

    fs = fsspec.filesystem("s3")
    fs.mkdir("bench")
    fs.put(str(ds), "bench/ds", recursive=True)
    url = "s3://bench/ds"
    print(f"{args.samples} samples of 64 px in {args.samples // args.shard_size} shards, {total / 1e6:.2f} MB; "
          f"2 ranks x batch {args.batch_size}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| store | cache | epoch 1 s | epoch 2 s | epoch 1 MB fetched | epoch 2 MB fetched |")
    print("|---|---|---|---|---|---|")
    for name, delay, cap in (("moto S3", 0.0, None),
                             (f"moto S3 + {args.delay_ms:.0f} ms/request, {args.mbps:g} MB/s", args.delay_ms / 1e3,
                              args.mbps * 1e6)):
        for cached in (False, True):
            with StoreProxy(env["AWS_ENDPOINT_URL"], delay_s=delay, bytes_per_s=cap) as proxy:
                e = {**env, "AWS_ENDPOINT_URL": proxy.url}
                cache_dir = str(Path(tempfile.mkdtemp(dir=work))) if cached else ""
                row = []
                for epoch in (0, 1):
                    proxy.clear()
                    secs = one_epoch(url, cache_dir, epoch, e, args.batch_size)
                    row.append((secs, sum(n for _, _, n in proxy.gets(".tar")) / 1e6))
            print(f"| {name} | {'yes' if cached else 'no'} | {row[0][0]:.2f} | {row[1][0]:.2f} | "
                  f"{row[0][1]:.2f} | {row[1][1]:.2f} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    server.stop()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--rank-part":
        rank_part(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        main()
