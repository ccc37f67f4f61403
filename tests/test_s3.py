"""Sharing over S3: generate -> filter -> verify -> read the view's samples, all on a moto S3 server.

Only the standard AWS variables are used (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION), as a user would set them for MinIO
or any S3-compatible store.
"""
from __future__ import annotations

import io
import json

import pytest
from helpers import cli

from factory import format as fmt

pytestmark = pytest.mark.s3

BUCKET = "factory-test"


@pytest.fixture(scope="module")
def s3(s3_server):
    """The session's moto S3 server (tests/conftest.py); its bucket is BUCKET."""
    assert s3_server["bucket"] == BUCKET
    return s3_server["fs"]


def test_generate_filter_verify_read_on_s3(s3, tmp_path):
    from PIL import Image

    root = f"s3://{BUCKET}/shapes-v1"
    r = cli("generate", "--generator", "shapes", "--n", "60", "--shard-size", "20", "--resolution", "64",
            "--workers", "0", "--quiet", "--out", root)
    assert r.exit_code == 0, r.output
    assert s3.exists(f"{BUCKET}/shapes-v1/manifest.json") and s3.exists(f"{BUCKET}/shapes-v1/preview.png")
    manifest = json.loads(s3.cat(f"{BUCKET}/shapes-v1/manifest.json"))
    assert manifest["samples"] == 60 and len(manifest["shards"]) == 3

    # a view on S3 next to the dataset (parent URL absolute), and one on local disk
    view_url = f"s3://{BUCKET}/views/small.json"
    r = cli("filter", root, "--max-fg", "0.5", "--out", view_url)
    assert r.exit_code == 0, r.output
    view = json.loads(s3.cat(f"{BUCKET}/views/small.json"))
    assert view["parent"]["url"] == root
    local_view = tmp_path / "v.json"
    assert cli("filter", root, "--max-fg", "0.5", "--out", local_view).exit_code == 0
    assert json.loads(local_view.read_text())["accepted"] == view["accepted"]

    r = cli("verify", root)
    assert r.exit_code == 0 and r.output.startswith("OK "), r.output
    r = cli("verify", view_url)
    assert r.exit_code == 0, r.output
    info = json.loads(cli("info", view_url, "--json").output)
    assert info["samples"] == view["samples"] and info["view_id"] == view["view_id"]

    # read the accepted samples with stock webdataset streaming from S3 (fsspec open, no factory code)
    import fsspec

    accepted = {f"{r:010d}" for r in fmt.AcceptedRows(view["accepted"], view["format_version"]).all_rows().tolist()}
    got = []
    for s in manifest["shards"]:
        with fsspec.open(f"{root}/{s['path']}", "rb") as f:
            got += [x for x in _iter_wds(f) if x["__key__"] in accepted]
    assert sorted(x["__key__"] for x in got) == sorted(accepted)
    assert all(x["png"].shape == (64, 64, 3) for x in got)

    # training data read through the S3 view by trainers holds exactly those keys
    from trainers.data.stream import iter_batches, open_index

    idx = open_index(view_url, split="all")
    rows = [r for b in iter_batches(idx, batch_size=16) for r in b["row"].tolist()]
    assert sorted(f"{r:010d}" for r in rows) == sorted(accepted)

    # a damaged object on S3 is named by verify
    key = f"{BUCKET}/shapes-v1/shards/000001.tar"
    data = bytearray(s3.cat(key))
    data[3000] ^= 0xFF
    s3.pipe(key, bytes(data))
    r = cli("verify", root)
    assert r.exit_code == 1 and f"{root}/shards/000001.tar" in r.output and "000000.tar" not in r.output
    # preview and materialize work against S3 too (materialize refuses the damaged shard by name)
    r = cli("preview", view_url, "--out", f"s3://{BUCKET}/views/small.png", "--n", "8")
    assert r.exit_code == 0, r.output
    with Image.open(io.BytesIO(s3.cat(f"{BUCKET}/views/small.png"))) as im:
        assert im.width > 100
    r = cli("filter", view_url, "--materialize", "--out", f"s3://{BUCKET}/small-mat")
    assert r.exit_code == 1 and "000001.tar" in r.output


def _iter_wds(stream):
    """Stock webdataset stages over a stream opened with fsspec on S3."""
    import webdataset as wds

    src = [{"url": "s3-object", "stream": stream}]
    from webdataset.tariterators import group_by_keys, tar_file_expander

    samples = group_by_keys(tar_file_expander(iter(src)))
    return wds.decode("rgb8")(samples)


def test_untrusted_remote_manifest_is_refused(s3):
    root = f"s3://{BUCKET}/evil"
    m = {"kind": "factory-dataset", "format_version": 1, "dataset_id": "ds-x", "samples": 1, "dim_z": 2,
         "shards": [{"shard": 0, "path": "../shapes-v1/shards/000000.tar", "index": "index/000000.parquet",
                     "sha256": "0" * 64, "index_sha256": "0" * 64, "samples": 1, "bytes": 1, "first_row": 0}]}
    s3.pipe(f"{BUCKET}/evil/manifest.json", json.dumps(m).encode())
    for cmd in ("verify", "info"):
        r = cli(cmd, root)
        assert r.exit_code == 1 and "'../shapes-v1/shards/000000.tar' leaves the dataset folder" in r.output
