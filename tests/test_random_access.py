"""Random access by key (index tar offsets, format version 2), `factory upgrade` of a version-1 dataset,
and compact views (bitmaps per shard) next to version-1 views."""
from __future__ import annotations

import base64
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from helpers import downgrade

from factory import format as fmt
from factory.cli import main
from factory.dataset.reader import read_sample, read_samples, read_shard_samples
from factory.dataset.shards import parquet_bytes

N, SHARD = 60, 25


def cli(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in r.output, r.output
    return r


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("ra") / "shapes")
    r = cli("generate", "--generator", "shapes", "--n", N, "--shard-size", SHARD, "--resolution", 32,
            "--workers", 0, "--quiet", "--out", root)
    assert r.exit_code == 0, r.output
    return root


def scanned(root: str) -> dict[str, dict[str, bytes]]:
    """Every sample of a dataset by a full scan of its tars (the reference)."""
    res = fmt.open_dataset(root)
    out = {}
    for e in res.manifest["shards"]:
        out.update(read_shard_samples(res, e))
    return out


# ---------------------------------------------------------------- offsets

def test_every_sample_read_by_key_equals_the_tar_scan(ds):
    m = json.load(open(os.path.join(ds, fmt.MANIFEST)))
    assert m["format_version"] == fmt.FORMAT_VERSION == 2
    t = pq.read_table(os.path.join(ds, "index"))
    assert t.schema.field("tar_offset").type == pa.int64() and t.schema.field("tar_size").type == pa.int64()
    ref = scanned(ds)
    assert len(ref) == N
    for key, members in ref.items():
        assert read_sample(ds, key) == members, key
    assert set(ref["0000000007"]) == {"png", "mask.png", "latent.npy", "json"}
    # the byte range is exactly the sample's records: the contract parses it alone
    row = t.filter(pa.compute.equal(t.column("key"), "0000000031")).to_pylist()[0]
    tar = open(os.path.join(ds, fmt.shard_name(row["shard"])), "rb").read()
    blob = tar[row["tar_offset"]: row["tar_offset"] + row["tar_size"]]
    assert fmt.sample_members(blob, "0000000031") == ref["0000000031"]
    with pytest.raises(fmt.FormatError, match="not a member of sample"):
        fmt.sample_members(blob, "0000000032")
    with pytest.raises(fmt.FormatError, match="no sample with row"):
        read_sample(ds, fmt.sample_key(N + 3))


def test_verify_checks_the_offsets(ds, tmp_path):
    bad = str(tmp_path / "bad")
    shutil.copytree(ds, bad)
    p = os.path.join(bad, fmt.index_name(1))
    t = pq.read_table(p)
    off = t.column("tar_offset").to_numpy().copy()
    off[3] += 512
    t = t.set_column(t.schema.get_field_index("tar_offset"), "tar_offset", pa.array(off))
    data = parquet_bytes(t)
    open(p, "wb").write(data)
    m = json.load(open(os.path.join(bad, fmt.MANIFEST)))
    m["shards"][1]["index_sha256"] = fmt.sha256_bytes(data)
    m["dataset_id"] = fmt.dataset_id(m["shards"], m["latents"]["sha256_of_shard_hashes"])
    open(os.path.join(bad, fmt.MANIFEST), "w").write(json.dumps(m))
    r = cli("verify", bad)
    assert r.exit_code == 1 and "tar_offset/tar_size of 1 sample(s) differ" in r.output, r.output
    assert cli("verify", ds).exit_code == 0


def test_read_by_key_on_s3(ds, s3_server):
    fs, bucket = s3_server["fs"], s3_server["bucket"]
    url = f"s3://{bucket}/random-access"
    fs.put(ds + "/", f"{bucket}/random-access", recursive=True)
    ref = scanned(ds)
    res = fmt.open_dataset(url)
    got = read_samples(res, range(N))
    assert {fmt.sample_key(r): v for r, v in got.items()} == ref
    assert read_sample(url, "0000000042") == ref["0000000042"]


# ---------------------------------------------------------------- upgrade

def test_upgrade_of_a_version_1_dataset(ds, tmp_path):
    old = str(tmp_path / "old")
    shutil.copytree(ds, old)
    downgrade(old)
    tars = {p: open(os.path.join(old, fmt.SHARD_DIR, p), "rb").read() for p in os.listdir(os.path.join(old, fmt.SHARD_DIR))}
    v1 = json.load(open(os.path.join(old, fmt.MANIFEST)))
    assert cli("verify", old).exit_code == 0  # the previous version still reads and verifies
    ref = scanned(ds)
    assert read_sample(old, "0000000003") == ref["0000000003"]  # falls back to scanning the shard
    view = tmp_path / "v1view.json"
    assert cli("filter", old, "--max-fg", "0.5", "--out", view).exit_code == 0
    preview = tmp_path / "p.png"
    assert cli("preview", view, "--out", preview, "--n", 8).exit_code == 0 and preview.stat().st_size > 0

    r = cli("upgrade", old)
    assert r.exit_code == 0, r.output
    assert v1["dataset_id"] in r.output and "tars untouched" in r.output
    m = json.load(open(os.path.join(old, fmt.MANIFEST)))
    original = json.load(open(os.path.join(ds, fmt.MANIFEST)))
    assert m["format_version"] == 2 and m["upgraded_from"] == {"dataset_id": v1["dataset_id"], "format_version": 1}
    # the fragments are byte for byte what the current writer writes: the id is the freshly written one's
    assert m["dataset_id"] == original["dataset_id"] != v1["dataset_id"]
    assert all(open(os.path.join(old, fmt.SHARD_DIR, p), "rb").read() == b for p, b in tars.items())
    r = cli("verify", old)
    assert r.exit_code == 0 and r.output.startswith("OK"), r.output
    assert cli("verify", view).exit_code == 0  # a view made before the upgrade still opens and verifies
    assert read_sample(old, "0000000055") == ref["0000000055"]
    assert "nothing to do" in cli("upgrade", old).output


def test_a_killed_upgrade_resumes(ds, tmp_path, monkeypatch):
    from factory.dataset import upgrade as up

    old = str(tmp_path / "old")
    shutil.copytree(ds, old)
    downgrade(old)
    real = up.upgrade_shard
    calls = []

    def dies_on_the_second(root, entry):
        calls.append(entry["shard"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(root, entry)

    monkeypatch.setattr(up, "upgrade_shard", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        up.upgrade(old, log=lambda msg: None)
    monkeypatch.setattr(up, "upgrade_shard", real)
    assert up.upgrade(old, log=lambda msg: None).previous_id is not None
    assert cli("verify", old).exit_code == 0


# ---------------------------------------------------------------- compact views

def test_compact_rows_form_is_canonical_and_pinned():
    assert fmt.encode_rows(np.array([8, 5, 7, 5])) == {"first": 5, "n": 4, "bits": "DQ=="}  # bits 1011 -> 0x0d
    assert fmt.encode_rows(np.zeros(0)) == {"first": 0, "n": 0, "bits": ""}
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(np.arange(1000, 2000), 613, replace=False))
    np.testing.assert_array_equal(fmt.decode_rows(fmt.encode_rows(rows)), rows)
    with pytest.raises(fmt.FormatError, match="canonical"):
        fmt.decode_rows({"first": 4, "n": 5, "bits": base64.b64encode(bytes([0b00010])).decode()})
    # a 10M-row view of random acceptance stays a few MB
    acc = fmt.encode_accepted({k: k * 1000 + np.flatnonzero(rng.random(1000) < 0.65) for k in range(10_000)})
    assert len(fmt.canonical_json(acc)) < 3_000_000


def test_view_id_is_over_the_compact_form_and_rows_equal_the_list_form(ds, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert cli("filter", ds, "--max-fg", "0.4", "--out", a).exit_code == 0
    assert cli("filter", ds, "--where", "fg_ratio < 0.4", "--out", b).exit_code == 0
    va, vb = json.loads(a.read_text()), json.loads(b.read_text())
    assert va["view_id"] == vb["view_id"] and va["format_version"] == 2
    assert va["view_id"] == fmt.view_id(va["parent"]["dataset_id"], va["predicate"], fmt.accepted_sha256(va["accepted"]))
    t = pq.read_table(os.path.join(ds, "index"), columns=["row", "shard", "fg_ratio"])
    want = t.column("row").to_numpy()[t.column("fg_ratio").to_numpy() < 0.4]
    acc = fmt.AcceptedRows(va["accepted"], 2)
    np.testing.assert_array_equal(acc.all_rows(), want)
    # the same rows in the version-1 form (lists) read the same and give the same counts downstream
    lists = {k: acc[int(k)].tolist() for k in va["accepted"]}
    old = dict(va, format_version=1, accepted=lists, accepted_sha256=fmt.accepted_sha256(lists))
    old["view_id"] = fmt.view_id(old["parent"]["dataset_id"], old["predicate"], old["accepted_sha256"])
    (tmp_path / "old.json").write_text(json.dumps(old))
    np.testing.assert_array_equal(fmt.AcceptedRows(lists, 1).all_rows(), want)
    for v in (a, tmp_path / "old.json"):
        info = json.loads(cli("info", v, "--json").output)
        assert info["samples"] == len(want)
        assert cli("verify", v).exit_code == 0
        nested = tmp_path / f"nested-{v.name}"
        assert cli("filter", v, "--max-fg", "0.2", "--out", nested).exit_code == 0
        assert json.loads(nested.read_text())["samples"] == int((t.column("fg_ratio").to_numpy() < 0.2).sum())
    m = tmp_path / "mat"
    assert cli("filter", tmp_path / "old.json", "--max-fg", "0.4", "--materialize", "--out", m).exit_code == 0
    got = scanned(str(m))
    ref = scanned(ds)
    assert [json.loads(s["json"])["parent_key"] for _, s in sorted(got.items())] == [fmt.sample_key(r) for r in want]
    assert all(s["png"] == ref[json.loads(s["json"])["parent_key"]]["png"] for s in got.values())


def test_verify_index_only_reads_no_tar(ds, tmp_path):
    cut = str(tmp_path / "notars")
    shutil.copytree(ds, cut)
    shutil.rmtree(os.path.join(cut, fmt.SHARD_DIR))
    r = cli("verify", cut, "--index-only")
    assert r.exit_code == 0 and "index fragments only" in r.output, r.output
    assert cli("verify", cut).exit_code == 1
    open(os.path.join(cut, fmt.index_name(2)), "ab").write(b"x")
    r = cli("verify", cut, "--index-only")
    assert r.exit_code == 1 and "000002.parquet sha256 differs" in r.output


def test_info_reads_the_recorded_statistics_equal_to_computed_ones(ds, tmp_path):
    from factory.dataset.info import describe

    v = tmp_path / "v.json"
    assert cli("filter", ds, "--max-fg", "0.5", "--out", v).exit_code == 0
    doc = json.loads(v.read_text())
    m = json.load(open(os.path.join(ds, fmt.MANIFEST)))
    assert "index_stats" in m and "accepted_stats" in doc
    plain = tmp_path / "plain"
    shutil.copytree(ds, plain)
    del m["index_stats"]
    (plain / fmt.MANIFEST).write_text(json.dumps(m))
    del doc["accepted_stats"]
    doc["parent"]["url"] = str(plain)
    (tmp_path / "plain.json").write_text(json.dumps(doc))
    cached, computed = describe(str(v)), describe(str(tmp_path / "plain.json"))
    assert cached["filter_stats"] == computed["filter_stats"] and cached["filter_stats"]["samples"] == N
    assert cached["filter_stats_accepted"] == computed["filter_stats_accepted"]
    assert cached["filter_stats_accepted"]["samples"] == doc["samples"]


def test_upgrade_on_a_cluster_writes_what_one_process_writes(ds, tmp_path):
    """`upgrade --cluster`: the fragments upgraded as shard-range tasks; manifest, fragments and sidecars are
    byte for byte those of the upgrade in one process."""
    from distributed import Client, LocalCluster

    roots = {}
    for how in ("one", "many", "local"):
        roots[how] = str(tmp_path / how)
        shutil.copytree(ds, roots[how])
        downgrade(roots[how])
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as lc, \
            Client(lc) as client:
        r = cli("upgrade", roots["many"], "--cluster", client.scheduler.address)
    assert r.exit_code == 0 and "tars untouched" in r.output, r.output
    assert cli("upgrade", roots["one"]).exit_code == 0
    assert cli("upgrade", roots["local"], "--workers", "2").exit_code == 0  # a local cluster of 2 processes

    def files(root):
        return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
                for d, _, fs in os.walk(root) for f in fs if not f.endswith(".lock")}

    one, many, local = files(roots["one"]), files(roots["many"]), files(roots["local"])
    # the card names the dataset's folder
    assert one.pop("README.md").replace(roots["one"].encode(), b"R") == many.pop("README.md").replace(
        roots["many"].encode(), b"R") == local.pop("README.md").replace(roots["local"].encode(), b"R")
    assert one == many == local and len([p for p in one if p.startswith("index")]) == 3
    assert json.loads(many[fmt.MANIFEST])["dataset_id"] == json.load(open(os.path.join(ds, fmt.MANIFEST)))["dataset_id"]
