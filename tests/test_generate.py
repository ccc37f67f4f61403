"""End-to-end `factory generate` on the shapes world: contract, reproducibility, resume, bad input."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from helpers import run

from factory import format as fmt
from factory.cli import main

GEN = ["generate", "--generator", "shapes", "--quiet"]


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def shard_hashes(root: Path) -> dict[str, str]:
    return {p.name: sha(p) for p in sorted((root / "shards").glob("*.tar"))}


@pytest.fixture(scope="module")
def ds600(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "d600"
    run(GEN + ["--n", "600", "--shard-size", "200", "--seed", "7", "--workers", "0", "--out", str(out)])
    return out


def test_contract_600(ds600):
    import webdataset as wds
    import zarr

    man = json.loads((ds600 / "manifest.json").read_text())
    fmt.validate_manifest(man)
    assert man["samples"] == 600 and len(man["shards"]) == 3
    for s in man["shards"]:
        assert sha(ds600 / s["path"]) == s["sha256"]
        assert (ds600 / s["path"]).stat().st_size == s["bytes"]
        assert sha(ds600 / s["index"]) == s["index_sha256"]
    urls = [str(ds600 / s["path"]) for s in man["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert len(samples) == 600
    keys = [s["__key__"] for s in samples]
    assert keys == [fmt.sample_key(i) for i in range(600)]
    s0 = samples[0]
    assert s0["png"].size == (128, 128) and s0["png"].mode == "RGB"
    m = np.asarray(s0["mask.png"])
    assert set(np.unique(m)) <= {0, 255}
    assert s0["latent.npy"].shape == (120,) and s0["latent.npy"].dtype == np.float32

    import pyarrow as pa

    index = pa.concat_tables([pq.read_table(ds600 / s["index"]) for s in man["shards"]])
    assert index.num_rows == 600
    for col in fmt.INDEX_COLUMNS:
        assert col in index.column_names
    assert index.column("key").to_pylist() == keys
    assert index.column("row").to_pylist() == list(range(600))
    # fg_ratio matches the stored masks
    fg = np.array([(np.asarray(s["mask.png"]) > 0).mean() for s in samples], np.float32)
    np.testing.assert_allclose(index.column("fg_ratio").to_numpy(), fg, atol=1e-6)
    # latents.zarr equals tar latents
    z = zarr.open_array(str(ds600 / "latents.zarr"), mode="r")
    assert z.shape == (600, 120)
    np.testing.assert_array_equal(z[:], np.stack([s["latent.npy"] for s in samples]))
    # the json member agrees with the index
    assert samples[5]["json"]["fg_ratio"] == pytest.approx(float(index.column("fg_ratio")[5].as_py()))
    assert (ds600 / "README.md").exists()
    assert not list(ds600.rglob(".*.tmp-*")) and not (ds600 / ".lock").exists()


def test_tar_is_deterministic_metadata(ds600):
    with tarfile.open(ds600 / "shards" / "000000.tar") as tf:
        members = tf.getmembers()
    assert all(m.mtime == 0 and m.uid == 0 and m.isreg() for m in members)
    names = [m.name for m in members]
    assert names == sorted(names)


def test_rerun_rewrites_nothing_and_copies_are_identical(ds600, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in ds600.rglob("*") if p.is_file()}
    run(GEN + ["--n", "600", "--shard-size", "200", "--seed", "7", "--workers", "0", "--out", str(ds600)])
    after = {p: p.stat().st_mtime_ns for p in ds600.rglob("*") if p.is_file()}
    assert before == after
    other = tmp_path / "other"
    run(GEN + ["--n", "600", "--shard-size", "200", "--seed", "7", "--workers", "0", "--out", str(other)])
    assert shard_hashes(other) == shard_hashes(ds600)
    assert json.loads((other / "manifest.json").read_text())["dataset_id"] == json.loads(
        (ds600 / "manifest.json").read_text())["dataset_id"]


@pytest.mark.slow
def test_two_dask_workers_identical(ds600, tmp_path):
    out = tmp_path / "w2"
    run(GEN + ["--n", "600", "--shard-size", "200", "--seed", "7", "--workers", "2", "--out", str(out)])
    assert shard_hashes(out) == shard_hashes(ds600)


def test_dask_cluster_small(tmp_path):
    """A real LocalCluster with 2 worker processes gives the same bytes as in-process generation."""
    a, b = tmp_path / "a", tmp_path / "b"
    args = ["--n", "40", "--shard-size", "10", "--seed", "3", "--resolution", "64"]
    run(GEN + args + ["--workers", "0", "--out", str(a)])
    run(GEN + args + ["--workers", "2", "--out", str(b)])
    assert shard_hashes(a) == shard_hashes(b) and len(shard_hashes(a)) == 4


def test_resume_after_lost_shard(tmp_path):
    out = tmp_path / "r"
    args = GEN + ["--n", "30", "--shard-size", "10", "--resolution", "64", "--workers", "0", "--out", str(out)]
    run(args)
    ref = shard_hashes(out)
    # simulate a crash: one shard never committed, manifest not written
    (out / "done" / "000001.json").unlink()
    (out / "shards" / "000001.tar").unlink()
    (out / "manifest.json").unlink()
    keep = (out / "shards" / "000000.tar").stat().st_mtime_ns
    res = run(args)
    assert "resuming, 2 of 3" in res.output
    assert shard_hashes(out) == ref
    assert (out / "shards" / "000000.tar").stat().st_mtime_ns == keep


def test_other_spec_refused_then_overwrite(tmp_path):
    out = tmp_path / "s"
    base = GEN + ["--n", "10", "--shard-size", "10", "--resolution", "64", "--workers", "0", "--out", str(out)]
    run(base)
    res = run(base[:-2] + ["--seed", "9", "--out", str(out)], expect=1)
    assert "another spec" in res.output and "latents.seed: 0 -> 9" in res.output
    run(base[:-2] + ["--seed", "9", "--overwrite", "--out", str(out)])
    assert json.loads((out / "spec.json").read_text())["spec"]["latents"]["seed"] == 9


def test_damaged_spec_json_is_another_dataset(tmp_path):
    """The one DatasetWriter (generate and materialize): a damaged spec.json is refused with the
    differences, not a traceback; a folder with shards but no spec.json is refused; --overwrite replaces both."""
    out = tmp_path / "c"
    base = GEN + ["--n", "10", "--shard-size", "10", "--resolution", "64", "--workers", "0", "--out", str(out)]
    run(base)
    ref = shard_hashes(out)
    (out / "spec.json").write_text("{not json")
    res = run(base, expect=1)
    assert "another spec" in res.output and "cc_ratio: '<absent>' -> 0.2" in res.output
    (out / "spec.json").unlink()
    assert "already holds files of another dataset" in run(base, expect=1).output
    run(base + ["--overwrite"])
    assert shard_hashes(out) == ref and "spec_hash" in json.loads((out / "spec.json").read_text())


def test_writer_leaves_sidecars_as_they_are(tmp_path):
    from factory.dataset.writer import DatasetWriter

    w = DatasetWriter(str(tmp_path / "w"), spec={"n": 1}, spec_hash="h", samples=3, dim_z=2, shard_size=2,
                      other_spec="{root}: {diff}")
    done = {0: {"shard": 0, "spec_hash": "h"}, 1: {"shard": 1}}
    assert w.n_shards == 2 and w.shard_entries(done) == [{"shard": 0}, {"shard": 1}]
    assert done[0] == {"shard": 0, "spec_hash": "h"}


def test_latent_sources_are_per_sample():
    from factory.latents.sources import gaussian

    src = gaussian(16, seed=5)
    full = src.rows(0, 3000)
    np.testing.assert_array_equal(full[1500:1700], src.rows(1500, 1700))
    np.testing.assert_array_equal(full[1023:1025], src.rows(1023, 1025))
    assert not np.array_equal(full, gaussian(16, seed=6).rows(0, 3000))


def test_embeddings_source(tmp_path, monkeypatch):
    from factory.latents.sources import from_embeddings

    monkeypatch.setenv("FACTORY_HOME", str(tmp_path / "home"))
    E = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    np.save(tmp_path / "e.npy", E)
    run(["embeddings", "import", str(tmp_path / "e.npy"), "--name", "toy"])
    res = run(["embeddings", "list"])
    assert "toy" in res.output and "50 x 8" in res.output
    src = from_embeddings("toy", 8, seed=1, z_noise=0.0)
    rows = src.rows(0, 200)
    # every row is one of the embeddings (alpha = 0)
    d = ((rows[:, None, :] - E[None]) ** 2).sum(-1).min(1)
    assert d.max() < 1e-10
    noisy = from_embeddings("toy", 8, seed=1, z_noise=0.2).rows(0, 200)
    assert 0.01 < np.abs(noisy - rows).mean() < 0.5
    np.testing.assert_array_equal(from_embeddings(str(tmp_path / "e.npy"), 8, 1, 0.0).rows(0, 200), rows)


def test_embeddings_generate_and_latents_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTORY_HOME", str(tmp_path / "home"))
    E = np.random.default_rng(0).standard_normal((20, 120)).astype(np.float32)
    np.save(tmp_path / "e.npy", E)
    out = tmp_path / "emb"
    run(GEN + ["--n", "12", "--resolution", "64", "--workers", "0", "--embeddings", str(tmp_path / "e.npy"),
               "--z-noise", "0.1", "--out", str(out)])
    import zarr

    z = zarr.open_array(str(out / "latents.zarr"), mode="r")[:]
    # regenerate exactly these latents from a file: identical shards
    np.save(tmp_path / "z.npy", z)
    out2 = tmp_path / "fromfile"
    run(GEN + ["--n", "12", "--resolution", "64", "--workers", "0", "--latents", str(tmp_path / "z.npy"),
               "--out", str(out2)])
    a = list(tarfile.open(out / "shards" / "000000.tar").getmembers())
    b = list(tarfile.open(out2 / "shards" / "000000.tar").getmembers())
    assert [m.name for m in a] == [m.name for m in b]
    ta, tb = tarfile.open(out / "shards" / "000000.tar"), tarfile.open(out2 / "shards" / "000000.tar")
    for m in a:
        if m.name.endswith(".png"):
            assert ta.extractfile(m).read() == tb.extractfile(m.name).read()


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--n", "0"], "--n must be a positive"),
        (["--n", "-3"], "--n must be a positive"),
        (["--generator", "nope"], "unknown generator 'nope'"),
        (["--direction", "sideways"], "unknown direction 'sideways'"),
    ],
)
def test_bad_input_one_line(tmp_path, extra, needle):
    out = tmp_path / "bad"
    args = GEN + ["--n", "5", "--resolution", "64", "--workers", "0", "--out", str(out)] + extra
    if "--generator" in extra:
        args = [a for a in args if a != "shapes"]
        args.remove("--generator")
    res = run(args, expect=1)
    assert needle in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (out / "manifest.json").exists() and not (out / "shards").exists()


def test_bad_latent_files(tmp_path):
    out = tmp_path / "bad"
    cases = {
        "wide.npy": (np.zeros((4, 7), np.float32), "width 7 but the generator's dim_z is 120"),
        "nan.npy": (np.full((4, 120), np.nan, np.float32), "NaN or inf"),
        "int.npy": (np.zeros((4, 120), np.int64), "dtype int64"),
        "obj.npy": (np.array([{"a": 1}] * 4, dtype=object), "object"),
    }
    for name, (arr, needle) in cases.items():
        np.save(tmp_path / name, arr, allow_pickle=True)
        res = run(GEN + ["--n", "4", "--resolution", "64", "--workers", "0", "--latents", str(tmp_path / name),
                         "--out", str(out)], expect=1)
        assert needle in res.output, (name, res.output)
    good = np.zeros((4, 120), np.float32)
    np.save(tmp_path / "trunc.npy", good)
    data = (tmp_path / "trunc.npy").read_bytes()
    (tmp_path / "trunc.npy").write_bytes(data[: len(data) // 2])
    res = run(GEN + ["--n", "4", "--resolution", "64", "--workers", "0", "--latents", str(tmp_path / "trunc.npy"),
                     "--out", str(out)], expect=1)
    assert "truncated" in res.output or "not a valid" in res.output
    res = run(GEN + ["--n", "4", "--resolution", "64", "--workers", "0", "--latents", str(tmp_path / "missing.npy"),
                     "--out", str(out)], expect=1)
    assert "not found" in res.output
    res = run(GEN + ["--n", "5", "--resolution", "64", "--workers", "0", "--latents", str(tmp_path / "wide.npy"),
                     "--out", str(out)], expect=1)
    assert not out.exists() or not (out / "shards").exists()


def test_unwritable_out(tmp_path):
    if os.geteuid() == 0:
        target = "/proc/factory-cannot-write-here"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = str(ro / "x")
    res = run(GEN + ["--n", "4", "--resolution", "64", "--workers", "0", "--out", target], expect=1)
    assert "not writable" in res.output


def test_unknown_embeddings_name(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTORY_HOME", str(tmp_path / "home"))
    res = run(GEN + ["--n", "4", "--resolution", "64", "--workers", "0", "--embeddings", "imagenet",
                     "--out", str(tmp_path / "x")], expect=1)
    assert "unknown embeddings 'imagenet'" in res.output and "BigBiGAN_ImageNet_z.npy" in res.output


def test_lock_refuses_second_writer(tmp_path):
    from factory.dataset.writer import DatasetLock
    from factory.format import FactoryError

    out = tmp_path / "l"
    out.mkdir()
    with DatasetLock(str(out)):
        with pytest.raises(FactoryError, match="being written by another factory process"):
            with DatasetLock(str(out)):
                pass
    # a stale lock of a dead process is taken over
    (out / ".lock").write_text(f"{os.uname().nodename} 999999999")
    with DatasetLock(str(out)):
        pass


def test_recipe_with_override(tmp_path):
    out = tmp_path / "rec"
    recipe = Path(__file__).resolve().parent.parent / "manifests" / "shapes-demo.toml"
    run(GEN + ["--recipe", str(recipe), "--n", "8", "--resolution", "64", "--workers", "0", "--out", str(out)])
    man = json.loads((out / "manifest.json").read_text())
    assert man["samples"] == 8 and man["recipe"].endswith("shapes-demo.toml")
    assert man["spec"]["shard_size"] == 500  # from the recipe


def test_bench_cpu_json():
    res = run(["bench", "--generator", "shapes", "--resolution", "64", "--n", "32", "--batch-size", "16", "--json"])
    obj = json.loads(res.output)
    assert obj["candidates_per_s"] > 0 and obj["generator_images_per_s"] > 0
    for k in ("generator", "masks_stats", "transfer", "write"):
        assert k in obj["stage_seconds"]
    assert obj["batch_size"] == 16 and obj["device"] == "cpu"
    assert obj["trace"] is None and obj["cc_iterations"] == "host-checked" and obj["cc_redo_batches"] == 0


def test_bench_trace(tmp_path):
    import gzip

    res = run(["bench", "--generator", "shapes", "--resolution", "64", "--n", "32", "--batch-size", "16",
               "--trace", str(tmp_path / "tr"), "--json"])
    t = json.loads(res.output)["trace"]
    trace = json.loads(gzip.open(tmp_path / "tr" / "trace.json.gz").read())
    assert any(e.get("name") == "aten::bincount" for e in trace["traceEvents"])  # the statistics ran under it
    assert t["kernels"] == 0 and t["gpu_busy_share"] is None and t["span_s"] > 0  # CPU: no kernels
    assert "Self CPU" in (tmp_path / "tr" / "ops.txt").read_text()


def test_busy_share_is_the_union_of_kernel_intervals():
    from factory.generate.bench import busy_share

    ev = [{"ph": "X", "cat": "cpu_op", "ts": 0, "dur": 100},
          {"ph": "X", "cat": "kernel", "ts": 10, "dur": 20}, {"ph": "X", "cat": "kernel", "ts": 20, "dur": 20},
          {"ph": "X", "cat": "kernel", "ts": 60, "dur": 10}, {"ph": "i", "cat": "kernel", "ts": 90}]
    got = busy_share({"traceEvents": ev})
    assert got == {"span_s": 1e-4, "kernel_busy_s": 4e-5, "gpu_busy_share": 0.4, "kernels": 3}


def test_encoder_process_pool_gives_the_same_records():
    """The GPU path encodes in processes (GIL stays with the GPU thread); bytes equal the thread path."""
    from factory.generate.encode import encode_chunk, encode_pool

    rng = np.random.default_rng(0)
    args = ([fmt.sample_key(i) for i in range(3)], rng.integers(0, 255, (3, 16, 16, 3), dtype=np.uint8),
            rng.random((3, 16, 16)) > 0.5, None, rng.standard_normal((3, 120)).astype(np.float32),
            [{"key": fmt.sample_key(i), "row": i} for i in range(3)], {"image": "png", "png_level": 1})
    direct = encode_chunk(args)
    assert encode_pool(2, processes=True).submit(encode_chunk, args).result() == direct
    assert encode_pool(2, processes=False).submit(encode_chunk, args).result() == direct
    names = [m.name for m in tarfile.open(fileobj=io.BytesIO(fmt_tar(direct))).getmembers()]
    assert names[:4] == sorted(names[:4]) and len(names) == 12


def fmt_tar(records: bytes) -> bytes:
    from factory.format import tar_join

    return tar_join([records])


def test_process_encoder_inside_dask_workers(tmp_path, monkeypatch):
    """The GPU workers' encoder (a process pool inside each dask worker) gives the same bytes."""
    a, b = tmp_path / "a", tmp_path / "b"
    args = ["--n", "40", "--shard-size", "10", "--seed", "3", "--resolution", "64"]
    run(GEN + args + ["--workers", "0", "--out", str(a)])
    monkeypatch.setenv("FACTORY_ENCODER", "processes")
    run(GEN + args + ["--workers", "2", "--out", str(b)])
    assert shard_hashes(a) == shard_hashes(b) and len(shard_hashes(a)) == 4


def test_sync_free_labelling_gives_the_same_dataset(tmp_path, monkeypatch):
    """GPU workers label without host checks (FACTORY_CC_ITERATIONS) and redo unconverged batches
    exactly: the shards and the index are the same bytes/values as with host-checked labelling."""
    from factory.generate.compute import counters

    args = ["--n", "96", "--shard-size", "48", "--batch-size", "16", "--seed", "3", "--resolution", "64",
            "--workers", "0"]
    run(GEN + args + ["--out", str(tmp_path / "a")])
    redone = {}
    for k in ("1", "16"):
        monkeypatch.setenv("FACTORY_CC_ITERATIONS", k)
        before = counters.get("cc_redo_batches", 0)
        run(GEN + args + ["--out", str(tmp_path / k)])
        redone[k] = counters.get("cc_redo_batches", 0) - before
        assert shard_hashes(tmp_path / k) == shard_hashes(tmp_path / "a")
        assert pq.read_table(tmp_path / k / "index").equals(pq.read_table(tmp_path / "a" / "index"))
    assert redone["1"] > 0 and redone["16"] == 0  # one update is too few for some masks; 16 is plenty
    monkeypatch.setenv("FACTORY_CC_ITERATIONS", "many")
    res = CliRunner().invoke(main, GEN + args + ["--out", str(tmp_path / "bad")])
    assert res.exit_code != 0 and "FACTORY_CC_ITERATIONS" in res.output


def test_encoder_processes_share_the_host(monkeypatch):
    from factory.format import FactoryError
    from factory.generate.encode import encoder_processes

    monkeypatch.delenv("FACTORY_ENCODER_PROCESSES", raising=False)
    assert encoder_processes(16, 1) == 14
    assert encoder_processes(96, 8) == 10
    assert encoder_processes(8, 8) == 2  # never fewer than two
    assert encoder_processes(4, 0) == 2
    monkeypatch.setenv("FACTORY_ENCODER_PROCESSES", "5")
    assert encoder_processes(96, 8) == 5
    monkeypatch.setenv("FACTORY_ENCODER_PROCESSES", "-1")
    with pytest.raises(FactoryError, match="FACTORY_ENCODER_PROCESSES"):
        encoder_processes(16, 1)


@pytest.mark.gpu
def test_cuda_worker_labelling_modes_give_the_same_shards(tmp_path, monkeypatch):
    """On a GPU worker (process encoder, pinned copies, sync-free labelling by default), host-checked
    labelling and a forced redo of every batch write the same bytes."""
    from factory.generate.compute import counters

    args = GEN + ["--n", "64", "--shard-size", "32", "--batch-size", "16", "--seed", "2", "--device", "cuda",
                  "--workers", "0"]
    hashes = {}
    for k in ("auto", "0", "1"):
        monkeypatch.setenv("FACTORY_CC_ITERATIONS", k)
        before = counters.get("cc_redo_batches", 0)
        run(args + ["--out", str(tmp_path / k)])
        hashes[k] = (shard_hashes(tmp_path / k), pq.read_table(tmp_path / k / "index"))
        if k == "1":
            assert counters.get("cc_redo_batches", 0) > before
    for k in ("0", "1"):
        assert hashes[k][0] == hashes["auto"][0] and hashes[k][1].equals(hashes["auto"][1])


def test_bigbigan_recipes_encode_lossless_webp():
    """The BigBiGAN recipes default to lossless WebP images (the codec that can reach the GPU
    target's encoding budget); the shapes recipe keeps PNG."""
    import tomllib

    root = Path(__file__).resolve().parent.parent / "manifests"
    recipes = sorted(p for p in root.glob("*.toml") if "bigbigan" in p.name)
    assert len(recipes) == 4
    for p in recipes:
        assert tomllib.loads(p.read_text())["generate"]["image_codec"] == "webp", p.name
    assert "image_codec" not in tomllib.loads((root / "shapes-demo.toml").read_text()).get("generate", {})
