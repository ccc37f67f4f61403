"""`factory generate --generator bigbigan` end to end on the golden model: what the pipeline writes
(cleaned masks, filter decisions, latents) equals the authors' stored outputs."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
from click.testing import CliRunner

from factory.cli import main


def test_generate_golden_matches_authors_pipeline(golden, tmp_path):
    import webdataset as wds

    out = tmp_path / "gold"
    args = ["generate", "--generator", "bigbigan", "--weights", str(golden / "state_dict.safetensors"),
            "--generator-config", str(golden / "config.json"), "--latents", str(golden / "z.npy"),
            "--direction", str(golden / "shift_direction.npy"), "--shift-r", "5", "--n", "4",
            "--workers", "0", "--quiet", "--out", str(out)]
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["spec"]["generator"]["name"] == "bigbigan" and man["dim_z"] == 24
    samples = list(wds.WebDataset([str(out / man["shards"][0]["path"])], shardshuffle=False).decode("pil"))
    assert len(samples) == 4
    img = np.load(golden / "image.npy")
    shifted = np.load(golden / "image_shifted.npy")
    gray = lambda x: 0.2989 * x[:, 0] + 0.5870 * x[:, 1] + 0.1140 * x[:, 2]  # noqa: E731
    reliable = np.abs(gray(img) - gray(shifted)) >= 1e-5
    mask_cc = np.load(golden / "mask_cc.npy").astype(bool)
    for i, s in enumerate(samples):
        m = np.asarray(s["mask.png"])  # stock "pil" decoding gives RGB
        written = (m[..., 0] if m.ndim == 3 else m) > 0
        assert (written == mask_cc[i])[reliable[i]].all(), f"sample {i}"
        np.testing.assert_array_equal(s["latent.npy"], np.load(golden / "z.npy")[i])
        expected = np.round((img[i].transpose(1, 2, 0) + 1) * 127.5).clip(0, 255)
        assert np.abs(np.asarray(s["png"]).astype(np.int16) - expected).max() <= 1
    index = pq.read_table(out / man["shards"][0]["index"])
    np.testing.assert_array_equal(index.column("pass_area").to_numpy(), np.load(golden / "area_pass.npy"))
    np.testing.assert_array_equal(index.column("pass_hist_reference").to_numpy(), np.load(golden / "maxes_pass.npy"))
    keep = index.column("pass_area").to_numpy() & index.column("pass_hist_reference").to_numpy()
    np.testing.assert_array_equal(keep, np.load(golden / "keep.npy"))
    np.testing.assert_allclose(index.column("fg_ratio").to_numpy(), mask_cc.reshape(4, -1).mean(1), atol=1e-6)
