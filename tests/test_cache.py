"""The node's shard cache (trainers.data.cache): remote shards fetched once per node, checked, evicted LRU
within the limit, shared by two processes; every shard read on the store is counted through a proxy."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from store_proxy import StoreProxy

from trainers.data.cache import CacheError, cached_bytes, open_cache, parse_size
from trainers.data.stream import LoaderState, TrainStream, iter_batches, open_index

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def remote(s3_server, small_dataset):
    """The small dataset on moto S3, read through a counting proxy: {url, proxy, manifest}."""
    import s3fs

    fs, bucket = s3_server["fs"], s3_server["bucket"]
    fs.put(str(small_dataset), f"{bucket}/cache/ds", recursive=True)
    mp = pytest.MonkeyPatch()
    with StoreProxy(s3_server["env"]["AWS_ENDPOINT_URL"]) as proxy:
        mp.setenv("AWS_ENDPOINT_URL", proxy.url)
        s3fs.S3FileSystem.clear_instance_cache()
        yield {"url": f"s3://{bucket}/cache/ds", "proxy": proxy, "env": {**s3_server["env"], "AWS_ENDPOINT_URL": proxy.url},
               "manifest": json.loads((small_dataset / "manifest.json").read_text())}
        mp.undo()
    s3fs.S3FileSystem.clear_instance_cache()


def shard_bytes_read(proxy: StoreProxy) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, path, n in proxy.gets(".tar"):
        out[path.split("?")[0]] = out.get(path.split("?")[0], 0) + n
    return out


def read_all(url: str, cache_dir: Path, **kw) -> tuple[list, object]:
    index = open_cache(open_index(url, split="all"), cache_dir=str(cache_dir), **kw)
    return [b["image"].numpy() for b in iter_batches(index, 8)], index.cache


def test_second_run_reads_no_shard_and_matches_local(remote, small_dataset, tmp_path):
    proxy, sizes = remote["proxy"], {s["path"]: s["bytes"] for s in remote["manifest"]["shards"]}
    proxy.clear()
    first, cache = read_all(remote["url"], tmp_path)
    read = shard_bytes_read(proxy)
    assert len(read) == 3 and sorted(read.values()) == sorted(sizes.values())  # each shard once, whole
    assert cache.stats.fetched_shards == 3 and cache.stats.fetched_bytes == sum(sizes.values())
    assert sorted(p.name for p in cache.folder.glob("*.tar")) == sorted(f"{s['sha256']}.tar"
                                                                      for s in remote["manifest"]["shards"])
    assert cache.folder.name == remote["manifest"]["dataset_id"]
    proxy.clear()
    second, cache2 = read_all(remote["url"], tmp_path)
    assert shard_bytes_read(proxy) == {} and cache2.stats.fetched_shards == 0
    local = [b["image"].numpy() for b in iter_batches(open_index(str(small_dataset), split="all"), 8)]
    for a, b, c in zip(first, second, local, strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, c)
    assert open_cache(open_index(str(small_dataset)), cache_dir=str(tmp_path)).cache is None  # local: no copy
    assert open_cache(open_index(remote["url"]), cache_dir=str(tmp_path), enabled=False).cache is None


def test_corrupted_cache_file_is_fetched_again_with_one_line(remote, tmp_path):
    _, cache = read_all(remote["url"], tmp_path)
    victim = sorted(cache.folder.glob("*.tar"))[1]
    data = bytearray(victim.read_bytes())
    data[700] ^= 0xFF
    victim.write_bytes(bytes(data))
    remote["proxy"].clear()
    lines: list[str] = []
    index = open_cache(open_index(remote["url"], split="all"), cache_dir=str(tmp_path))
    index.cache.log = lines.append
    assert sum(b["image"].shape[0] for b in iter_batches(index, 8)) == 60
    assert len(lines) == 1 and victim.name in lines[0] and "fetching" in lines[0]
    read = shard_bytes_read(remote["proxy"])
    assert len(read) == 1 and list(read.values())[0] == victim.stat().st_size
    assert victim.read_bytes() != bytes(data) and index.cache.stats.refetched == 1


def test_limit_holds_under_eviction(remote, tmp_path):
    largest = max(s["bytes"] for s in remote["manifest"]["shards"])
    limit = 2 * largest
    index = open_cache(open_index(remote["url"], split="all"), cache_dir=str(tmp_path), cache_limit=limit)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = index.cache.folder / f".{'0' * 64}.{limit}.{int(dead.stdout)}.1.part"
    stale.write_bytes(b"x" * 10)
    seen = []
    rows = []
    for epoch in (0, 1):
        stream = TrainStream(index, batch_size=4, seed=3, shuffle_window=1, state=LoaderState(3, epoch, 0))
        for batch in stream:
            seen.append(cached_bytes(tmp_path))
            rows += batch["row"].tolist()
    assert max(seen) <= limit and sorted(rows) == sorted(list(range(60)) * 2)
    assert not stale.exists()  # a killed fetch's reservation does not hold the limit
    assert len(list(index.cache.folder.glob("*.tar"))) <= 2
    assert index.cache.stats.fetched_shards > 3  # epoch 2 fetched again what the limit evicted


def test_two_processes_fetch_each_shard_once(remote, tmp_path):
    script = ("import sys; from trainers.data.cache import open_cache; "
              "from trainers.data.stream import open_index, iter_batches; "
              "ix = open_cache(open_index(sys.argv[1], split='all'), cache_dir=sys.argv[2]); "
              "print(sum(b['image'].shape[0] for b in iter_batches(ix, 8)))")
    env = {**os.environ, **remote["env"], "PYTHONPATH": str(ROOT)}
    remote["proxy"].clear()
    procs = [subprocess.Popen([sys.executable, "-c", script, remote["url"], str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o[0].strip() for o in outs] == ["60", "60"]
    sizes = sorted(s["bytes"] for s in remote["manifest"]["shards"])
    assert sorted(shard_bytes_read(remote["proxy"]).values()) == sizes  # each shard fetched once on the node
    assert not list(Path(tmp_path).glob("*/.*.part"))


def test_limit_smaller_than_one_shard_is_one_line(remote, tmp_path):
    from trainers.cli import main

    res = CliRunner().invoke(main, ["train", "--data", remote["url"], "--out", str(tmp_path / "run"), "--steps", "1",
                                    "--cache-dir", str(tmp_path / "c"), "--cache-limit", "1K"])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "smaller than one shard" in lines[0] and "--cache-limit" in lines[0], res.output
    assert parse_size("1.5G") == 3 << 29 and parse_size("20GB") == 20 << 30 and parse_size(4096) == 4096
    with pytest.raises(CacheError, match="not a size"):
        parse_size("lots")


def test_random_access_reads_the_cached_copy(remote, small_dataset, tmp_path):
    from factory import format as fmt
    from trainers.data.random_access import RandomAccessDataset

    index = open_cache(open_index(remote["url"], split="all"), cache_dir=str(tmp_path))
    local = open_index(str(small_dataset), split="all")
    cached = RandomAccessDataset(index, fmt.open_dataset(remote["url"]))
    direct = RandomAccessDataset(local, fmt.open_dataset(str(small_dataset)))
    remote["proxy"].clear()
    for pos in (5, 59, 0, 31):
        assert cached.members(pos) == direct.members(pos)
    assert len(shard_bytes_read(remote["proxy"])) == 3 and index.cache.stats.fetched_shards == 3
    remote["proxy"].clear()
    assert cached.members(17) == direct.members(17) and shard_bytes_read(remote["proxy"]) == {}


def test_train_cli_from_s3_through_the_cache(remote, tmp_path):
    from trainers.cli import main

    args = ["train", "--data", remote["url"], "--steps", "2", "--batch-size", "4", "--width", "4", "--workers", "1",
            "--holdout-permille", "100", "--device", "cpu", "--no-progress", "--cache-dir", str(tmp_path / "c")]
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    announced = [line for line in res.output.splitlines() if line.startswith("shard cache: ")]
    assert len(announced) == 1 and str(tmp_path / "c") in announced[0] and "limit" in announced[0]
    assert list((tmp_path / "c" / remote["manifest"]["dataset_id"]).glob("*.tar"))
    remote["proxy"].clear()
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert shard_bytes_read(remote["proxy"]) == {}  # the second run reads every shard from the cache
