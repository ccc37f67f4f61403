"""Tars hold exactly the members the index names (issue 38, item 5): an extra member (KEY.sh, KEY.cls) or a
second KEY.png, with every hash, offset and id recomputed as the writer does, is refused by every reader
(verify, the dataset reader, browse, trainers' stream and random access) in one line naming the shard and
the key."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import cli, reseal

from factory import format as fmt

KEY = "0000000025"  # a sample of shard 1 (rows 20..39)
SHARD = "shards/000001.tar"
FORGERIES = {
    "extra-sh": [(f"{KEY}.sh", b"#!/bin/sh\necho hi\n")],
    "extra-cls": [(f"{KEY}.cls", b"7")],
    "second-png": [(f"{KEY}.png", None)],  # None: an all-black image of the dataset's size
}


def black_png(side: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def add_members(root: Path, extra: list[tuple[str, bytes | None]]) -> None:
    """Shard 1 with `extra` members right after KEY's (its members stay consecutive), its index offsets
    rewritten, then every hash and id recomputed (`reseal`): only the members betray the forgery."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from factory.dataset.shards import index_table, parquet_bytes, table_rows, with_offsets

    extra = [(n, black_png(32) if b is None else b) for n, b in extra]
    members = fmt.safe_tar_members((root / SHARD).read_bytes(), SHARD)
    last = max(i for i, (n, _) in enumerate(members) if fmt.split_member(n)[0] == KEY)
    tar = fmt.tar_bytes(members[:last + 1] + extra + members[last + 1:])
    (root / SHARD).write_bytes(tar)
    idx = root / "index" / "000001.parquet"
    rows = with_offsets(table_rows(pq.ParquetFile(pa.BufferReader(idx.read_bytes())).read()), tar, SHARD)
    idx.write_bytes(parquet_bytes(index_table(rows)))
    reseal(root)


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("members") / "ds"
    r = cli("generate", "--generator", "shapes", "--resolution", "32", "--n", "40", "--shard-size", "20",
            "--workers", "0", "--quiet", "--out", out)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(params=sorted(FORGERIES))
def forged(request, clean, tmp_path) -> Path:
    ds = tmp_path / "ds"
    shutil.copytree(clean, ds)
    add_members(ds, FORGERIES[request.param])
    return ds


def names_shard_and_key(text: str) -> None:
    lines = [ln for ln in text.strip().splitlines() if SHARD in ln and f"key {KEY}" in ln]
    assert lines, text
    assert any(w in lines[0] for w in ("does not name", "twice")), lines[0]


def test_the_forgery_is_self_consistent(clean, tmp_path):
    """Every hash, offset and id is recomputed: without the member rule the forged dataset would pass."""
    ds = tmp_path / "ds"
    shutil.copytree(clean, ds)
    add_members(ds, FORGERIES["extra-sh"])
    res = fmt.open_dataset(str(ds))
    assert fmt.manifest_problems(res.manifest) == []
    ref = fmt.shard_ref(res.root, res.manifest, res.manifest["shards"][1])
    data, digest = fmt.read_whole(ref)  # size and sha256 match the manifest
    assert len(fmt.safe_tar_members(data)) == 20 * 4 + 1
    with pytest.raises(fmt.FormatError, match=f"key {KEY} has member {KEY}.sh, which the manifest does not name"):
        fmt.shard_samples(data, ref)


def test_verify_refuses_extra_or_duplicated_members(forged):
    r = cli("verify", forged)
    assert r.exit_code == 1 and "FAILED" in r.output and "1 of 2 shards bad" in r.output, r.output
    names_shard_and_key(r.output)
    assert "shard 0 " not in r.output  # the clean shard is not blamed


def test_dataset_reader_refuses_them(forged):
    from factory.dataset.reader import read_sample, read_shard_samples

    with pytest.raises(fmt.FormatError) as e:
        read_sample(str(forged), KEY)  # one range read (format 2)
    assert "\n" not in str(e.value)
    names_shard_and_key(str(e.value))
    res = fmt.open_dataset(str(forged))
    with pytest.raises(fmt.FormatError) as e:
        read_shard_samples(res, res.manifest["shards"][1])  # the whole shard, through the hashing reader
    names_shard_and_key(str(e.value))
    assert read_sample(str(forged), "0000000024")["png"]  # a neighbour in the same shard still reads


def test_browse_sample_refuses_them(forged):
    from factory.browse.api import Browser

    with pytest.raises(fmt.FormatError) as e:
        Browser(str(forged)).sample(KEY)
    names_shard_and_key(str(e.value))


@pytest.mark.parametrize("access", ["stream", "random"])
def test_trainers_train_refuses_them(forged, tmp_path, access):
    from trainers.cli import main as tmain

    r = CliRunner().invoke(tmain, ["train", "--data", str(forged), "--out", str(tmp_path / "run"), "--steps", "10",
                                   "--batch-size", "4", "--width", "4", "--workers", "0", "--val-every", "0",
                                   "--holdout-permille", "0", "--device", "cpu", "--no-progress",
                                   "--access", access])
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) >= 1
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, r.output
    names_shard_and_key(errors[0])


def test_trainers_readers_refuse_them(forged):
    """The streamed pass (every header checked, data of others skipped) and the map-style reader by key."""
    from trainers.data.random_access import RandomAccessDataset
    from trainers.data.reader import read_shard
    from trainers.data.stream import open_index
    from trainers.errors import DataError

    idx = open_index(str(forged), split="all")
    with pytest.raises(DataError) as e:
        read_shard(idx.shard_info[1], {20}, ("png",))  # KEY is not even wanted: its header is still checked
    names_shard_and_key(str(e.value))
    ds = RandomAccessDataset(idx, fmt.open_dataset(str(forged)))
    with pytest.raises(DataError) as e:
        ds.members(int(np.searchsorted(idx.rows, fmt.key_row(KEY))))
    names_shard_and_key(str(e.value))
    assert set(ds.members(int(np.searchsorted(idx.rows, 24)))) == {"png", "mask.png", "latent.npy", "json"}


def test_regenerated_records_hold_one_sample_once():
    rec = fmt.tar_records([(f"{KEY}.png", b"a"), (f"{KEY}.json", b"{}")])
    assert fmt.record_members(rec) == {"png": b"a", "json": b"{}"}
    with pytest.raises(fmt.FormatError, match="twice"):
        fmt.record_members(fmt.tar_records([(f"{KEY}.png", b"a"), (f"{KEY}.png", b"b")]))
