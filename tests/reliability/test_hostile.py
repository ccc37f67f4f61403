"""Hostile and broken inputs: each is a clean one-line error, never a traceback, never a write outside."""
from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factory import format as fmt
from factory.cli import main

pytestmark = pytest.mark.reliability

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=25,
)
HEX = "a" * 64


def shard_entries():
    path = st.sampled_from(["shards/000000.tar", "../x.tar", "/etc/passwd", "s3://b/x.tar", "a/../../b", "", "ok.tar"])
    return st.lists(
        st.fixed_dictionaries({
            "shard": st.integers(-1, 3), "path": path, "index": path,
            "sha256": st.sampled_from([HEX, "zz", 5]), "index_sha256": st.just(HEX),
            "samples": st.integers(-1, 3), "bytes": st.integers(0, 10), "first_row": st.integers(-1, 3),
        }),
        max_size=3,
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, st.fixed_dictionaries({
    "kind": st.sampled_from([fmt.DATASET_KIND, "x"]), "format_version": st.sampled_from([1, 2, "1"]),
    "dataset_id": st.text(max_size=5), "samples": st.integers(-1, 9), "dim_z": st.integers(0, 3),
    "shards": shard_entries(),
})))
def test_fuzz_manifest_parser_only_raises_format_error(obj):
    try:
        out = fmt.validate_manifest(obj)
    except fmt.FormatError as e:
        assert "\n" not in str(e)
        return
    # anything accepted is safe to use: relative paths inside the dataset, consistent totals
    for s in out["shards"]:
        for p in (s["path"], s["index"]):
            assert not p.startswith("/") and ".." not in p.split("/") and "://" not in p
    assert sum(s["samples"] for s in out["shards"]) == out["samples"]


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_fuzz_view_parser_only_raises_format_error(obj):
    try:
        fmt.validate_view(obj)
    except fmt.FormatError:
        pass


def _png_with_size(w: int, h: int) -> bytes:
    """A small real PNG whose IHDR then claims w x h pixels (CRC fixed, so only the size lies)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, length+type
    data[ihdr:ihdr + 8] = struct.pack(">II", w, h)
    crc = zlib.crc32(bytes(data[12:ihdr + 13]))
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def test_decompression_bomb_refused_before_decoding():
    from trainers.data.stream import DataError, decode_sample

    with pytest.raises(fmt.FormatError, match="declares 10000x10000 pixels"):
        fmt.open_image_checked(_png_with_size(10_000, 10_000), "shard 0: key 0000000000.png")
    bomb = _png_with_size(200_000, 200_000)  # PIL itself refuses this one; still one FormatError
    with pytest.raises(fmt.FormatError, match="(?i)decompression bomb"):
        fmt.open_image_checked(bomb, "shard 0: key 0000000000.png")
    members = {"png": bomb, "mask.png": bomb}
    with pytest.raises(DataError, match="decompression bomb"):
        decode_sample(members, "mask.png", "shard x key 0000000000")


def test_oversized_member_refused(monkeypatch):
    from factory.format import tar

    monkeypatch.setattr(tar, "MAX_MEMBER_BYTES", 1000)  # the limit lives with the tar reading
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        ti = tarfile.TarInfo("0000000000.png")
        ti.size = 5000
        tf.addfile(ti, io.BytesIO(b"x" * 5000))
    with pytest.raises(fmt.FormatError, match="declares 5000 bytes, over the 1000 byte limit"):
        fmt.safe_tar_members(buf.getvalue(), "shards/000000.tar")


def _lying_safetensors(path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4_000_000]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)


def test_safetensors_header_lying_about_sizes(tmp_path):
    from factory.format import FactoryError
    from factory.generators import load_generator

    f = tmp_path / "weights.safetensors"
    _lying_safetensors(f)
    with pytest.raises(FactoryError) as e:
        load_generator("bigbigan", weights=str(f))
    assert str(f) in str(e.value) and "\n" not in str(e.value)


def test_model_safetensors_lying_about_sizes(tmp_path):
    from trainers.model.checkpoint import load_model, save_model
    from trainers.model.unet import ModelConfig, UNet

    run = tmp_path / "run"
    save_model(run, UNet(ModelConfig(width=4)), ModelConfig(width=4), {})
    _lying_safetensors(run / "model.safetensors")
    with pytest.raises(Exception) as e:
        load_model(run, "cpu")
    assert type(e.value).__name__ != "SafetensorError" and "\n" not in str(e.value)


@pytest.mark.parametrize("opt", ["--latents", "--embeddings"])
def test_zero_row_latents_and_embeddings(tmp_path, opt):
    np.save(tmp_path / "empty.npy", np.zeros((0, 120), np.float32))
    res = CliRunner().invoke(main, ["generate", "--generator", "shapes", "--resolution", "64", "--n", "4",
                                    "--workers", "0", opt, str(tmp_path / "empty.npy"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "zero rows" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o" / "shards").exists()


def test_torch_pickle_direction_refused_without_running_code(tmp_path):
    import torch

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"h": Evil()}, tmp_path / "bg_direction.pth")
    res = CliRunner().invoke(main, ["generate", "--generator", "shapes", "--resolution", "64", "--n", "4",
                                    "--workers", "0", "--direction", str(tmp_path / "bg_direction.pth"),
                                    "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert not marker.exists()


def test_manifest_path_outside_dataset_refused_by_info_and_verify(tmp_path):
    out = tmp_path / "ds"
    res = CliRunner().invoke(main, ["generate", "--generator", "shapes", "--resolution", "64", "--n", "4",
                                    "--workers", "0", "--quiet", "--out", str(out)])
    assert res.exit_code == 0, res.output
    man = json.loads((out / "manifest.json").read_text())
    man["shards"][0]["path"] = "../../etc/passwd"
    (out / "manifest.json").write_text(json.dumps(man))
    for cmd in ("info", "verify"):
        res = CliRunner().invoke(main, [cmd, str(out)])
        assert res.exit_code != 0 and "../../etc/passwd" in res.output and "Traceback" not in res.output
