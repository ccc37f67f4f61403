"""Tampered manifests and shards, deep inputs, odd --where text: each refused in one line by every command
(verify, info, filter, trainers train), trainers before it allocates anything (issue 26, items 1-4 and 6)."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from factory import format as fmt
from factory.cli import main
from factory.views.predicate import MAX_LENGTH

pytestmark = pytest.mark.reliability

RES = 32


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "ds"
    r = CliRunner().invoke(main, ["generate", "--generator", "shapes", "--resolution", str(RES), "--n", "40",
                                  "--shard-size", "20", "--workers", "0", "--quiet", "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture()
def ds(clean, tmp_path) -> Path:
    out = tmp_path / "ds"
    shutil.copytree(clean, out)
    return out


def edit(ds: Path, fn) -> None:
    m = json.loads((ds / "manifest.json").read_text())
    fn(m)
    (ds / "manifest.json").write_text(json.dumps(m))


def factory(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r


def train(ds: Path, out: Path, *extra):
    from trainers.cli import main as tmain

    t0 = time.time()
    r = CliRunner().invoke(tmain, ["train", "--data", str(ds), "--out", str(out), "--steps", "2", "--batch-size", "4",
                                   "--width", "4", "--workers", "0", "--val-every", "0", "--holdout-permille", "0",
                                   "--device", "cpu", "--no-progress", *extra])
    return r, time.time() - t0


def one_line(r) -> str:
    """The one error line of a failed command (trainers train may have printed its start-up line first)."""
    assert r.exit_code == 1, r.output
    lines = [x for x in r.output.strip().splitlines() if x.strip() and not x.startswith("train: device")]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    return lines[0]


def _set(path: str, value):
    def fn(m):
        *head, last = path.split(".")
        d = m
        for k in head:
            d = d[int(k)] if isinstance(d, list) else d[k]
        if isinstance(d, list):
            d[int(last)] = value
        else:
            d[last] = value
    return fn


def _swap_first_rows(m):
    a, b = m["shards"]
    a["first_row"], b["first_row"] = b["first_row"], a["first_row"]


# Manifests edited in one field: refused by the schema for every reader (factory and trainers alike).
SCHEMA_CASES = {
    "resolution-200000": (_set("resolution", 200000), "resolution must be an integer in 1..4096"),
    "resolution-string": (_set("resolution", "32"), "resolution must be an integer"),
    "resolution-zero": (_set("resolution", 0), "resolution must be an integer in 1..4096"),
    "latents-path-outside": (_set("latents.path", "../../etc/passwd"), "latents.path is '../../etc/passwd'"),
    "latents-path-absolute": (_set("latents.path", "/tmp/x.zarr"), "latents.path is '/tmp/x.zarr'"),
    "spec-string": (_set("spec", "evil"), "spec must be an object, got str"),
    "spec-generator-list": (_set("spec.generator", [1]), "spec.generator must be an object"),
    "spec-mask-rule": (_set("spec.mask_rule", "rm -rf"), "spec.mask_rule 'rm -rf' is not one of"),
    "spec-shard-size": (_set("spec.shard_size", 0), "spec.shard_size must be >= 1"),
    "members-image": (_set("members.image", "gif"), "members.image '.gif' is not one of"),
    "members-mask-path": (_set("members.mask", "../x"), "members.mask must be a member extension"),
    "dim-z-huge": (_set("dim_z", 10**9), "dim_z must be an integer in 1..65536"),
    "first-row-2^70": (_set("shards.0.first_row", 2**70), "exceed the"),
    "samples-negative": (_set("shards.0.samples", -1), "must be >= 0"),
    "platforms-string": (_set("platforms", "x"), "platforms must be an object, got str"),
    "platforms-record-list": (lambda m: m.update(platforms={k: [1] for k in m["platforms"]}),
                              "must be an object of plain values"),
    "platforms-key": (lambda m: m.update(platforms={"../x": {}}), "platforms key '../x' is not a platform id"),
    "shard-platform": (_set("shards.0.platform", {"a": 1}), "platform is not a platform id"),
}


@pytest.mark.parametrize("case", sorted(SCHEMA_CASES))
def test_edited_manifest_field_refused_everywhere(ds, tmp_path, case):
    fn, message = SCHEMA_CASES[case]
    edit(ds, fn)
    for cmd in (["verify", ds], ["info", ds], ["filter", ds, "--max-fg", "0.5", "--out", tmp_path / "v.json"]):
        assert message in one_line(factory(*cmd)), cmd
    r, took = train(ds, tmp_path / "run")
    assert message in one_line(r)
    assert not (tmp_path / "run").exists() and took < 30  # refused before the run folder or any tensor


# Fields that agree with the schema but not with each other or the data: verify reports, trainers refuses.
CONSISTENCY_CASES = {
    "swap": (_swap_first_rows, "first_row 20, expected 0"),
    "dataset-id": (_set("dataset_id", "ds-" + "0" * 32), "is not the content hash of its shards"),
    "shard-sha256": (_set("shards.1.sha256", "0" * 64), "is not the content hash of its shards"),
    "latents-hash": (_set("latents.sha256_of_shard_hashes", "0" * 64), "latents.sha256_of_shard_hashes does not match"),
    "samples-in-bytes": (_set("shards.0.bytes", 100), "declares 20 samples in 100 bytes"),
    "platform-record": (lambda m: [r.update(device="gpu") for r in m["platforms"].values()],
                        "is not the content id of its record"),
    "platform-unlisted": (_set("shards.1.platform", "pf-000000000000"), "name platform(s) ['pf-000000000000']"),
}


@pytest.mark.parametrize("case", sorted(CONSISTENCY_CASES))
def test_inconsistent_manifest_reported_by_verify_refused_by_trainers(ds, tmp_path, case):
    fn, message = CONSISTENCY_CASES[case]
    edit(ds, fn)
    r = factory("verify", ds)
    assert r.exit_code == 1 and "Error: FAILED" in r.output and message in r.output, r.output
    r, took = train(ds, tmp_path / "run")
    line = one_line(r)
    assert message in line and "factory verify lists every problem" in line
    assert not (tmp_path / "run").exists()


def test_resolution_that_lies_about_the_images(ds, tmp_path):
    """In range but not the images' size: verify names it from the headers; trainers refuses the first
    image before decoding it (item 6)."""
    edit(ds, _set("resolution", 16))
    r = factory("verify", ds)
    assert r.exit_code == 1 and f"image header declares {RES}x{RES} pixels, the manifest's resolution is 16x16" \
        in r.output, r.output
    r, _ = train(ds, tmp_path / "run")
    assert f"declares {RES}x{RES} pixels, the manifest's resolution is 16x16 (not decoded)" in one_line(r)


def test_member_larger_than_resolution_refused_before_decoding(monkeypatch):
    import io

    from PIL import Image

    from trainers.data.stream import DataError, decode_sample

    def png(side):
        buf = io.BytesIO()
        Image.new("RGB" if side else "L", (side or 8, side or 8)).save(buf, format="PNG")
        return buf.getvalue()

    decoded = []
    real_convert = Image.Image.convert
    monkeypatch.setattr(Image.Image, "convert", lambda self, *a, **k: decoded.append(1) or real_convert(self, *a, **k))
    with pytest.raises(DataError, match="declares 64x64 pixels, the manifest's resolution is 8x8 .not decoded."):
        decode_sample({"png": png(64), "mask.png": png(0)}, "mask.png", "shard 0: key 0000000000", side=8)
    assert not decoded
    img, mask = decode_sample({"png": png(8), "mask.png": png(0)}, "mask.png", "k", side=8)
    assert img.shape == (3, 8, 8) and mask.shape == (1, 8, 8)


# ------------------------------------------------------------------ depth and size limits (item 3)

def test_deeply_nested_manifest_refused_in_one_line(ds, tmp_path):
    (ds / "manifest.json").write_bytes(b"[" * 200_000 + b"]" * 200_000)
    for cmd in (["verify", ds], ["info", ds], ["filter", ds, "--max-fg", "0.5", "--out", tmp_path / "v.json"]):
        assert "nests arrays/objects more than 64 deep" in one_line(factory(*cmd))
    r, _ = train(ds, tmp_path / "run")
    assert "nests arrays/objects more than 64 deep" in one_line(r)


def test_json_size_and_depth_limits(monkeypatch, tmp_path):
    from factory.format import schema

    assert schema.json_depth(b'{"a": "[[[[[[[[", "b": [[1]]}') == 3  # brackets inside strings do not count
    assert schema.json_depth(b'["\\"[[[[", [[]]]') == 3
    doc = {"a": [[[[1]]]]}
    assert fmt.loads_json(json.dumps(doc).encode(), "x") == doc
    p = tmp_path / "big.json"
    p.write_text(json.dumps({"kind": "factory-dataset", "pad": "x" * 5000}))
    monkeypatch.setattr(schema, "MAX_JSON_BYTES", 1000)
    monkeypatch.setattr(fmt, "MAX_JSON_BYTES", 1000)
    with pytest.raises(fmt.FormatError, match="over the 1,000 byte limit"):
        fmt.read_json(str(p), "manifest")


def test_view_nested_or_huge_numbers_refused(ds, tmp_path):
    v = tmp_path / "v.json"
    assert factory("filter", ds, "--max-fg", "0.5", "--out", v).exit_code == 0
    v.write_text(v.read_text().replace('"samples":', '"samples": ' + "9" * 5000 + ', "x":', 1))
    assert "is not valid JSON" in one_line(factory("info", v))
    v.write_text('{"kind": "factory-view", "x": ' + "{\"a\":" * 100 + "1" + "}" * 100 + "}")
    assert "more than 64 deep" in one_line(factory("verify", v))


# ------------------------------------------------------------------ --where (items 3 and 4)

WHERE_CASES = {
    "empty": ("", "--where: empty expression"),
    "blank": ("   ", "--where: empty expression"),
    "200-parens": ("(" * 200 + "fg_ratio < 0.5" + ")" * 200, "nested more than 64 deep"),
    "10000-nots": ("not " * 10_000 + "pass_area", "nested more than 64 deep"),
    "fullwidth-digit": ("fg_ratio < ０.５", "'０' at position 11 is not ASCII"),
    "arabic-indic-digit": ("n_components <= ٢", "'٢' at position 16 is not ASCII"),
    "fullwidth-name": ("ｆg_ratio < 0.5", "'ｆ' at position 0 is not ASCII"),
    "too-long": ("pass_area and " * (MAX_LENGTH // 14 + 1) + "pass_area", f"over the {MAX_LENGTH} character limit"),
}


@pytest.mark.parametrize("case", sorted(WHERE_CASES))
def test_where_refused_in_one_line(clean, tmp_path, case):
    text, message = WHERE_CASES[case]
    r = factory("filter", clean, "--where", text, "--out", tmp_path / "v.json")
    assert message in one_line(r)
    assert not (tmp_path / "v.json").exists()


def test_where_limits_leave_real_expressions_alone(clean, tmp_path):
    deep = "(" * 30 + "fg_ratio < 0.5" + ")" * 30
    for i, text in enumerate((deep, "not " * 30 + "pass_area", "fg_ratio < 0.5 and " * 200 + "pass_area",
                              "key in ('０', 'x')")):
        r = factory("filter", clean, "--where", text, "--out", tmp_path / f"v{i}.json")
        assert r.exit_code == 0, (text[:40], r.output)


# ------------------------------------------------------------------ shard sha256 while streaming (item 2)

def _flip_last_byte(path: Path) -> None:
    b = bytearray(path.read_bytes())
    b[-1] ^= 1  # the tar's end-of-archive padding: every member still reads, only the hash differs
    path.write_bytes(bytes(b))


@pytest.mark.parametrize("access", ["stream", "random"])
def test_changed_shard_refused_naming_it_and_no_verify_trains(ds, tmp_path, access):
    _flip_last_byte(ds / "shards" / "000001.tar")
    r, _ = train(ds, tmp_path / "run", "--steps", "10", "--access", access)
    line = one_line(r)
    assert "shards/000001.tar: sha256 differs from the manifest" in line, line
    r, _ = train(ds, tmp_path / "run2", "--steps", "10", "--no-verify", "--access", access)
    assert r.exit_code == 0, r.output


def test_random_access_hashes_each_shard_once_per_process(clean, monkeypatch):
    """Range reads cannot hash a shard as it streams past: random access hashes the whole shard once, before
    its first sample, and never again in that process."""
    import trainers.data.random_access as ra
    import trainers.data.reader as reader
    import trainers.data.stream as data

    checked = []

    class Counting(fmt.HashingReader):
        def __init__(self, f, **kw):
            checked.append(kw["where"])
            super().__init__(f, **kw)

    monkeypatch.setattr(fmt.tar, "HashingReader", Counting)  # the reading room's
    monkeypatch.setattr(reader, "VERIFIED_SHARDS", set())
    res = fmt.open_dataset(str(clean))
    idx = data.open_index(str(clean), split="all")
    stream = ra.RandomAccessStream(idx, res, batch_size=8)
    for epoch in range(2):
        stream.set_state(data.LoaderState(0, epoch, 0))
        assert sum(b["row"].shape[0] for b in stream.loader(num_workers=0)) == 40
    assert sorted(checked) == [f"shard {clean}/shards/00000{k}.tar" for k in (0, 1)]


def test_shard_swapped_for_another_datasets_refused(ds, tmp_path):
    other = tmp_path / "other"
    r = factory("generate", "--generator", "shapes", "--resolution", RES, "--n", "40", "--shard-size", "20",
                "--seed", "7", "--workers", "0", "--quiet", "--out", other)
    assert r.exit_code == 0, r.output
    shutil.copy(other / "shards" / "000000.tar", ds / "shards" / "000000.tar")  # same rows, other pixels
    r, _ = train(ds, tmp_path / "run")
    assert "shards/000000.tar: sha256 differs from the manifest" in one_line(r)


def test_each_shard_hashed_once_per_process_while_read(clean, monkeypatch):
    import trainers.data.reader as reader
    import trainers.data.stream as data

    opened = []

    class Counting(fmt.HashingReader):
        def __init__(self, f, **kw):
            opened.append(kw["where"])
            super().__init__(f, **kw)

    monkeypatch.setattr(fmt.tar, "HashingReader", Counting)  # the reading room's
    monkeypatch.setattr(reader, "VERIFIED_SHARDS", set())
    idx = data.open_index(str(clean), split="all")
    for _ in range(3):  # three epochs
        assert sum(b["row"].shape[0] for b in data.iter_batches(idx, 8)) == 40
    assert sorted(opened) == [f"shard {clean}/shards/00000{k}.tar" for k in (0, 1)]


def test_hashing_reader_streams_once(tmp_path):
    import hashlib
    import io

    data = bytes(range(256)) * 5000
    sha = hashlib.sha256(data).hexdigest()
    got = []
    r = fmt.HashingReader(io.BytesIO(data), sha256=sha, size=len(data), where="x", sink=got.append)
    assert r.read(10) == data[:10] and r.seek(5000) == 5000 and r.read(3) == data[5000:5003]
    with pytest.raises(fmt.FormatError, match="read out of order"):
        r.seek(0)
    assert r.finish() == sha and b"".join(got) == data
    with pytest.raises(fmt.FormatError, match="x: sha256 differs from the manifest"):
        fmt.HashingReader(io.BytesIO(data[:-1] + b"\0"), sha256=sha, where="x").finish()
    with pytest.raises(fmt.FormatError, match="x: 1279999 bytes, the manifest says 1280000"):
        fmt.HashingReader(io.BytesIO(data[:-1]), sha256=sha, size=len(data), where="x").finish()
