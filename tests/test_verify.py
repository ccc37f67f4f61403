"""factory verify, safe tar reading, untrusted manifests and bad input: one-line errors naming the file."""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile

import numpy as np
import pytest
from helpers import cli
from test_filter import build_dataset

from factory import format as fmt


@pytest.fixture(scope="session")
def clean(tmp_path_factory) -> str:
    return build_dataset(tmp_path_factory)


@pytest.fixture
def ds(clean, tmp_path) -> str:
    """A private copy that a test may damage."""
    dst = str(tmp_path / "ds")
    shutil.copytree(clean, dst)
    return dst


def flip_byte(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def manifest(root):
    return json.load(open(os.path.join(root, "manifest.json")))


def write_manifest(root, m):
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(m, f)


# ---------------------------------------------------------------- verify

def test_clean_dataset_verifies(clean):
    r = cli("verify", clean)
    assert r.exit_code == 0, r.output
    assert r.output.startswith("OK ") and "1,000 samples in 4 shards" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_one_flipped_byte_names_that_shard(ds):
    flip_byte(os.path.join(ds, "shards", "000002.tar"), 20_000)
    r = cli("verify", ds)
    assert r.exit_code == 1
    bad = [line for line in r.output.splitlines() if line.startswith("shard ")]
    assert len(bad) == 1 and "shards/000002.tar" in bad[0] and "sha256" in bad[0]
    assert "000000.tar" not in r.output and "000001.tar" not in r.output and "000003.tar" not in r.output
    assert "1 of 4 shards bad" in r.output


def test_every_bad_shard_is_named_once(ds):
    flip_byte(os.path.join(ds, "shards", "000000.tar"), 700)  # inside member data of the first sample
    with open(os.path.join(ds, "shards", "000001.tar"), "r+b") as f:  # truncated tar
        f.truncate(100_000)
    os.unlink(os.path.join(ds, "shards", "000003.tar"))  # listed but absent
    r = cli("verify", ds)
    assert r.exit_code == 1
    lines = [line for line in r.output.splitlines() if line.startswith("shard ")]
    assert [line.split()[1] for line in lines] == ["0", "1", "3"]
    assert "bytes, manifest says" in lines[1]
    assert "missing" in lines[2] and "000003.tar" in lines[2]
    assert "3 of 4 shards bad" in r.output


def test_index_and_latents_must_agree(ds):
    import zarr

    z = zarr.open_array(os.path.join(ds, "latents.zarr"), mode="r+")
    row = z[260]
    z[260] = row + 1
    flip_byte(os.path.join(ds, "index", "000003.parquet"), 10)
    r = cli("verify", ds)
    assert r.exit_code == 1
    lines = {line.split()[1]: line for line in r.output.splitlines() if line.startswith("shard ")}
    assert set(lines) == {"1", "3"}
    assert "latents.zarr" in lines["1"] and "0000000260" in lines["1"]
    assert "index fragment index/000003.parquet" in lines["3"]


def test_incomplete_shard_ids(ds):
    m = manifest(ds)
    m["shards"] = m["shards"][:2] + m["shards"][3:]
    m["samples"] -= 250
    write_manifest(ds, m)
    r = cli("verify", ds)  # the spec still claims the dropped shard's samples: refused before the shard ids
    assert r.exit_code == 1 and "spec.n is 1000 but the shards hold 750 samples" in r.output
    m["spec"]["n"] = 750  # a forger who also edits the spec: the shard ids still give the gap away
    write_manifest(ds, m)
    r = cli("verify", ds)
    assert r.exit_code == 1 and "shard ids are not 0..2: missing [2]" in r.output, r.output


def test_verify_a_view(clean, tmp_path):
    v = tmp_path / "v.json"
    assert cli("filter", clean, "--max-fg", "0.5", "--out", v).exit_code == 0
    r = cli("verify", v)
    assert r.exit_code == 0 and "view view-" in r.output
    doc = json.loads(v.read_text())
    acc = fmt.AcceptedRows(doc["accepted"], doc["format_version"])
    doc["accepted"]["0"] = fmt.encode_rows(np.append(acc[0][1:], acc[1][0]))  # same count, wrong rows
    v2 = tmp_path / "v2.json"
    v2.write_text(json.dumps(doc))
    r = cli("verify", v2)
    assert r.exit_code == 1 and "view_id" in r.output


# ---------------------------------------------------------------- untrusted manifests

@pytest.mark.parametrize("path, message", [
    ("../outside.tar", "'../outside.tar' leaves the dataset folder"),
    ("/etc/passwd", "'/etc/passwd' is absolute"),
    ("shards/../../x.tar", "leaves the dataset folder"),
    ("s3://other-bucket/x.tar", "is a remote URL; pass --allow-remote-shards"),
])
@pytest.mark.parametrize("command", ["verify", "info", "filter", "preview"])
def test_manifest_naming_a_shard_outside_is_refused(ds, tmp_path, path, message, command):
    m = manifest(ds)
    m["shards"][1]["path"] = path
    write_manifest(ds, m)
    extra = {"filter": ["--max-fg", "0.5", "--out", tmp_path / "v.json"], "preview": ["--out", tmp_path / "p.png"]}
    r = cli(command, ds, *extra.get(command, []))
    assert r.exit_code == 1
    assert message in r.output and "manifest.json: shards[1]" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_remote_shard_url_needs_the_flag(ds):
    m = manifest(ds)
    m["shards"][0]["path"] = "file://" + os.path.join(ds, "shards", "000000.tar")
    m["dataset_id"] = fmt.dataset_id(m["shards"], m["latents"]["sha256_of_shard_hashes"])  # the id hashes paths
    write_manifest(ds, m)
    assert cli("verify", ds).exit_code == 1
    r = cli("verify", ds, "--allow-remote-shards")
    assert r.exit_code == 0, r.output


# ---------------------------------------------------------------- bad input

def test_missing_manifest(tmp_path):
    for cmd in ("verify", "info"):
        r = cli(cmd, tmp_path / "nothing")
        assert r.exit_code == 1
        assert r.output.strip() == f"Error: manifest not found: {tmp_path / 'nothing' / 'manifest.json'}"


def test_malformed_manifest(ds):
    p = os.path.join(ds, "manifest.json")
    open(p, "w").write("{not json")
    r = cli("verify", ds)
    assert r.exit_code == 1 and f"manifest {p} is not valid JSON" in r.output
    write_manifest(ds, {"kind": "factory-dataset", "format_version": 1, "dataset_id": "x", "samples": 1, "dim_z": 2})
    r = cli("info", ds)
    assert r.exit_code == 1 and f"{p}: missing field 'shards'" in r.output
    write_manifest(ds, {"kind": "factory-dataset", "format_version": 99})
    r = cli("filter", ds, "--max-fg", "0.5", "--out", os.path.join(ds, "..", "v.json"))
    assert r.exit_code == 1 and "format_version 99 is not supported" in r.output


def test_view_whose_parent_is_gone_or_changed(ds, tmp_path):
    v = tmp_path / "v.json"
    assert cli("filter", ds, "--max-fg", "0.5", "--out", v).exit_code == 0
    m = manifest(ds)
    m["dataset_id"] = "ds-" + "0" * 32
    write_manifest(ds, m)
    for cmd in ("info", "verify", "filter", "preview"):
        extra = {"filter": ["--out", tmp_path / "v2.json"], "preview": ["--out", tmp_path / "p.png"]}.get(cmd, [])
        r = cli(cmd, v, *extra)
        assert r.exit_code == 1, cmd
        assert "(parent changed)" in r.output and str(v) in r.output, r.output
    shutil.rmtree(ds)
    r = cli("info", v)
    assert r.exit_code == 1
    assert r.output.strip() == f"Error: manifest not found: {os.path.join(ds, 'manifest.json')}"


def test_truncated_and_absent_shards_in_filter_materialize_and_preview(ds, tmp_path):
    with open(os.path.join(ds, "shards", "000000.tar"), "r+b") as f:
        f.truncate(5000)
    r = cli("preview", ds, "--out", tmp_path / "p.png")
    assert r.exit_code == 1 and "000000.tar" in r.output and len(r.output.strip().splitlines()) == 1
    r = cli("filter", ds, "--max-fg", "0.5", "--materialize", "--out", tmp_path / "m")
    assert r.exit_code == 1 and "000000.tar" in r.output
    os.unlink(os.path.join(ds, "shards", "000000.tar"))
    r = cli("preview", ds, "--out", tmp_path / "p.png")
    assert r.exit_code == 1 and r.output.strip() == f"Error: shard missing: {os.path.join(ds, 'shards', '000000.tar')}"
    # filtering reads only the index, so it still works
    assert cli("filter", ds, "--max-fg", "0.5", "--out", tmp_path / "v.json").exit_code == 0
    os.unlink(os.path.join(ds, "index", "000002.parquet"))
    r = cli("filter", ds, "--max-fg", "0.5", "--out", tmp_path / "v2.json")
    assert r.exit_code == 1 and "index fragment missing" in r.output and "000002.parquet" in r.output


# ---------------------------------------------------------------- safe tar reading

def _tar(add) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        add(tf)
    return buf.getvalue()


def _file(tf, name, data=b"x"):
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    tf.addfile(ti, io.BytesIO(data))


@pytest.mark.parametrize("build, message", [
    (lambda tf: _file(tf, "../evil.png"), "leaves the archive folder"),
    (lambda tf: _file(tf, "/abs.png"), "absolute path"),
    (lambda tf: tf.addfile(_sym("k.png", "/etc/passwd")), "is a link"),
    (lambda tf: tf.addfile(_hard("k.png", "other")), "is a link"),
    (lambda tf: tf.addfile(_dir("d")), "not a regular file"),
])
def test_safe_tar_rejects(build, message):
    with pytest.raises(fmt.FormatError, match=message):
        fmt.safe_tar_members(_tar(build), "shards/000000.tar")


def _sym(name, target):
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = tarfile.SYMTYPE, target
    return ti


def _hard(name, target):
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = tarfile.LNKTYPE, target
    return ti


def _dir(name):
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE
    return ti


def test_safe_tar_truncated_and_ok():
    data = _tar(lambda tf: [_file(tf, f"{i:010d}.png", b"a" * 3000) for i in range(3)])
    assert [n for n, _ in fmt.safe_tar_members(data)] == [f"{i:010d}.png" for i in range(3)]
    with pytest.raises(fmt.FormatError, match="shards/000007.tar"):
        fmt.safe_tar_members(data[:2000], "shards/000007.tar")
    assert fmt.split_member("0000000001.mask.png") == ("0000000001", "mask.png")


def test_verify_reports_unsafe_member(ds):
    """A shard whose tar holds a '..' member (and the manifest updated to match) is named as bad."""
    k = 2
    p = os.path.join(ds, "shards", f"{k:06d}.tar")
    data = _tar(lambda tf: _file(tf, "../escape.png"))
    open(p, "wb").write(data)
    m = manifest(ds)
    m["shards"][k]["sha256"] = fmt.sha256_bytes(data)
    m["shards"][k]["bytes"] = len(data)
    write_manifest(ds, m)
    r = cli("verify", ds)
    assert r.exit_code == 1
    lines = [line for line in r.output.splitlines() if line.startswith("shard ")]
    assert len(lines) == 1 and "'../escape.png' leaves the archive folder" in lines[0]
    assert not os.path.exists(os.path.join(ds, "escape.png"))
