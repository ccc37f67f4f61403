"""Image codecs of `factory generate --image-codec` and the mask encoding: what readers get back."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import run
from PIL import Image

from factory import format as fmt
from factory.cli import main
from factory.dataset.reader import read_shard_samples
from factory.generate.encode import encode_image, encode_mask_png, encode_png

GEN = ["generate", "--generator", "shapes", "--quiet", "--n", "24", "--shard-size", "12", "--seed", "5",
       "--resolution", "64", "--workers", "0"]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("codecs")
    out = {}
    for codec in ("png", "webp", "jpeg"):
        out[codec] = root / codec
        run(GEN + ["--image-codec", codec, "--out", str(out[codec])])
    return out


def _samples(ds: Path) -> dict[str, dict[str, bytes]]:
    res = fmt.open_dataset(str(ds))
    out = {}
    for s in res.manifest["shards"]:
        out.update(read_shard_samples(res, s))
    return out


def _pixels(data: bytes, mode: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert(mode)).astype(np.int16)


def test_webp_is_lossless_and_jpeg_close(datasets):
    ref = _samples(datasets["png"])
    for codec, ext, fmt_name in (("webp", "webp", "WEBP"), ("jpeg", "jpg", "JPEG")):
        man = json.loads((datasets[codec] / "manifest.json").read_text())
        assert man["members"]["image"] == ext and fmt.image_member(man) == ext
        assert man["spec"]["image_codec"]["image"] == codec
        got = _samples(datasets[codec])
        assert got.keys() == ref.keys()
        for key, parts in got.items():
            assert sorted(parts) == sorted(p if p != "png" else ext for p in ref[key])
            assert Image.open(io.BytesIO(parts[ext])).format == fmt_name
            assert parts["mask.png"] == ref[key]["mask.png"]  # masks: same lossless bytes whatever the image codec
            a, b = _pixels(parts[ext], "RGB"), _pixels(ref[key]["png"], "RGB")
            if codec == "webp":
                np.testing.assert_array_equal(a, b)
            else:
                assert np.abs(a - b).mean() < 3.0 and np.abs(a - b).max() > 0  # lossy, but close at quality 95
        # the index does not depend on the codec, but for where each sample's bytes lie in its tar
        import pyarrow.parquet as pq

        def stats(d):
            return pq.read_table(d / "index").drop_columns(list(fmt.OFFSET_COLUMNS))

        assert stats(datasets[codec]).equals(stats(datasets["png"]))


def test_codec_datasets_verify_card_and_stock_webdataset(datasets):
    import webdataset as wds

    for codec, ext in (("webp", "webp"), ("jpeg", "jpg")):
        ds = datasets[codec]
        res = CliRunner().invoke(main, ["verify", str(ds)])
        assert res.exit_code == 0, res.output
        assert f's["{ext}"]' in (ds / "README.md").read_text()
        assert f'"image": "{codec}"' in (ds / "README.md").read_text()
        info = CliRunner().invoke(main, ["info", str(ds)])
        line = [ln for ln in info.output.splitlines() if ln.startswith("  members")]
        assert info.exit_code == 0 and len(line) == 1 and f"image {codec}   " in line[0] and "mask png" in line[0], info.output
        man = json.loads((ds / "manifest.json").read_text())
        s0 = next(iter(wds.WebDataset([str(ds / man["shards"][0]["path"])], shardshuffle=False).decode("pil")))
        assert s0[ext].size == (64, 64) and s0[ext].mode == "RGB"


def test_trainers_read_every_codec(datasets):
    from trainers.data.stream import iter_batches, open_index

    got = {c: next(iter_batches(open_index(str(d), split="all"), batch_size=24)) for c, d in datasets.items()}
    assert open_index(str(datasets["jpeg"]), split="all").image_member == "jpg"
    np.testing.assert_array_equal(got["webp"]["image"].numpy(), got["png"]["image"].numpy())
    np.testing.assert_array_equal(got["jpeg"]["mask"].numpy(), got["png"]["mask"].numpy())
    assert float((got["jpeg"]["image"] - got["png"]["image"]).abs().mean()) < 0.03


def test_codec_is_part_of_the_spec_and_png_spec_is_unchanged(datasets, tmp_path):
    specs = {c: json.loads((d / "manifest.json").read_text())["spec"] for c, d in datasets.items()}
    # The PNG entry is exactly what format 1 always wrote, so existing datasets keep their spec hash.
    assert specs["png"]["image_codec"] == {"image": "png", "mask": "png", "png_level": 1}
    assert len({fmt.sha256_bytes(fmt.canonical_json(s)) for s in specs.values()}) == 3
    # resuming a PNG dataset with another codec is refused (no mixed shards)
    res = CliRunner().invoke(main, GEN + ["--image-codec", "webp", "--out", str(datasets["png"])])
    assert res.exit_code != 0 and "image_codec" in res.output
    for bad, needle in ((["--image-codec", "gif"], "--image-codec"),
                        (["--image-codec", "jpeg", "--jpeg-quality", "0"], "--jpeg-quality"),
                        (["--image-codec", "webp", "--png-level", "6"], "only applies to --image-codec png"),
                        (["--jpeg-quality", "80"], "only applies to --image-codec jpeg")):
        res = CliRunner().invoke(main, GEN + bad + ["--out", str(tmp_path / "bad")])
        assert res.exit_code != 0 and needle in res.output


def test_encodings_are_deterministic_and_masks_lossless():
    rng = np.random.default_rng(0)
    img = (rng.random((40, 56, 3)) * 255).astype(np.uint8)
    for codec in ({"image": "png", "png_level": 1}, {"image": "webp", "method": 0, "effort": 0},
                  {"image": "jpeg", "quality": 90}):
        assert encode_image(img, codec) == encode_image(img.copy(), codec)
    from scipy import ndimage

    mask = ndimage.uniform_filter(rng.random((128, 128)), 9) > 0.5  # ragged edges, many runs
    data = encode_mask_png(mask)
    im = Image.open(io.BytesIO(data))
    assert im.format == "PNG" and im.mode == "L"
    np.testing.assert_array_equal(np.asarray(im), mask.astype(np.uint8) * 255)
    assert len(data) < 2 * len(encode_png(mask, 9))  # run-length deflate stays compact


def test_materialized_view_keeps_the_codec(datasets, tmp_path):
    from trainers.data.stream import iter_batches, open_index

    out = tmp_path / "mat"
    run(["filter", str(datasets["webp"]), "--max-fg", "0.5", "--materialize", "--out", str(out)])
    man = json.loads((out / "manifest.json").read_text())
    assert fmt.image_member(man) == "webp" and man["samples"] > 0
    assert all(set(p) >= {"webp", "mask.png"} for p in _samples(out).values())
    res = CliRunner().invoke(main, ["verify", str(out)])
    assert res.exit_code == 0, res.output
    batch = next(iter_batches(open_index(str(out), split="all"), batch_size=man["samples"]))
    assert batch["image"].shape[0] == man["samples"]
