"""U-Net shapes, safetensors save/load round trip, refusal of tampered or pickled weights."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from trainers.cli import main
from trainers.model.checkpoint import (
    INFO_FILE,
    WEIGHTS_FILE,
    ModelFileError,
    load_model,
    save_model,
)
from trainers.model.unet import ModelConfig, UNet, pixels_to_input

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    m = UNet(ModelConfig(width=4))
    # non-trivial BatchNorm statistics, so the round trip covers buffers too
    m.train()
    with torch.no_grad():
        m(torch.randn(2, 3, 32, 32))
    return m.eval()


@pytest.mark.parametrize("hw", [(16, 16), (37, 53), (128, 171), (1, 1), (33, 16)])
def test_output_shape_any_size(small, hw):
    x = torch.rand(2, 3, *hw) * 2 - 1
    with torch.no_grad():
        y = small(x)
    assert y.shape == (2, 1, *hw)
    assert torch.isfinite(y).all()


def test_default_architecture():
    cfg = ModelConfig()
    assert cfg.width == 64 and cfg.out_channels == 1 and cfg.in_channels == 3
    m = UNet(cfg)
    assert m.inc[0].weight.shape == (64, 3, 3, 3)
    assert m.downs[-1][1][0].weight.shape == (1024, 512, 3, 3)  # 4 downs: 64 -> 1024
    assert len(m.downs) == 4 and len(m.ups) == 4
    assert m.ups[0].up.weight.shape == (1024, 512, 2, 2)  # transposed 2x2 up-convolution
    assert m.head.weight.shape == (1, 64, 1, 1)
    assert 31_000_000 < sum(p.numel() for p in m.parameters()) < 31_100_000


def test_padding_does_not_leak_between_crops(small):
    # a 128x171 input is padded to 128x176 internally; the crop is per image, batch-independent
    x = torch.rand(1, 3, 128, 171) * 2 - 1
    with torch.no_grad():
        y = small(x)
        y2 = small(torch.cat([x, x]))
    torch.testing.assert_close(y[0], y2[1], rtol=1e-4, atol=1e-5)


def test_rejects_bad_input(small):
    with pytest.raises(ValueError, match="expects"):
        small(torch.zeros(1, 4, 16, 16))


def test_pixels_to_input_is_the_one_scaling():
    """Train (data/stream), eval and relabel feed the U-Net through pixels_to_input: v / 127.5 - 1 in float32."""
    from trainers.eval.evaluate import image_to_input

    v = np.arange(256, dtype=np.uint8)
    x = pixels_to_input(v)
    assert x.dtype == np.float32 and x[0] == -1.0 and x[255] == 1.0 and x[128] > 0 > x[127]
    assert np.array_equal(x, (torch.arange(256, dtype=torch.float32) / 127.5 - 1.0).numpy())
    rgb = np.stack([v.reshape(16, 16), v[::-1].reshape(16, 16), np.full((16, 16), 7, np.uint8)], axis=-1)
    got = image_to_input(Image.fromarray(rgb), short=16)
    assert torch.equal(got, torch.from_numpy(x[rgb].transpose(2, 0, 1).copy()))


def test_config_validation():
    with pytest.raises(ValueError, match="width"):
        ModelConfig(width=0)
    with pytest.raises(ValueError, match="unknown model config key"):
        ModelConfig.from_dict({"width": 8, "depth": 5})
    assert ModelConfig.from_dict(ModelConfig(width=8).to_dict()) == ModelConfig(width=8)


def test_save_load_round_trip_bit_exact(small, tmp_path):
    run = save_model(tmp_path / "run", small, small.config, extra={"step": 12, "dataset": "abc"})
    assert sorted(p.name for p in run.iterdir()) == [INFO_FILE, WEIGHTS_FILE]  # no temp files left
    info = json.loads((run / INFO_FILE).read_text())
    assert info["config"] == {"width": 4, "in_channels": 3, "out_channels": 1, "upsampling": "transposed",
                              "input_range": "[-1,1]", "conv_bias": False, "head": "sigmoid"}
    assert info["extra"] == {"step": 12, "dataset": "abc"}
    loaded = load_model(run, "cpu")
    assert not loaded.training and loaded.config == small.config and loaded.extra["step"] == 12
    a, b = small.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    x = torch.rand(2, 3, 40, 24) * 2 - 1
    with torch.no_grad():
        assert torch.equal(small(x), loaded(x))
    # saving again overwrites atomically
    save_model(run, loaded, extra={"step": 13})
    assert load_model(run).extra == {"step": 13}


def test_tampered_weights_refused(small, tmp_path):
    run = save_model(tmp_path / "run", small)
    blob = bytearray((run / WEIGHTS_FILE).read_bytes())
    blob[-3] ^= 0xFF
    (run / WEIGHTS_FILE).write_bytes(bytes(blob))
    with pytest.raises(ModelFileError, match="does not match model.json"):
        load_model(run)


def test_pickle_file_refused(small, tmp_path):
    import hashlib

    run = save_model(tmp_path / "run", small)
    torch.save(small.state_dict(), run / WEIGHTS_FILE)  # a pickle under the safetensors name
    info = json.loads((run / INFO_FILE).read_text())
    info["weights_sha256"] = hashlib.sha256((run / WEIGHTS_FILE).read_bytes()).hexdigest()
    (run / INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(ModelFileError, match="not a safetensors file"):
        load_model(run)


def test_wrong_shapes_and_missing_files_refused(small, tmp_path):
    run = save_model(tmp_path / "run", small)
    info = json.loads((run / INFO_FILE).read_text())
    info["config"]["width"] = 8
    (run / INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(ModelFileError, match="the model expects"):
        load_model(run)
    info["config"]["width"] = 4
    info["config"]["bogus"] = 1
    (run / INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(ModelFileError, match="unknown model config key"):
        load_model(run)
    (run / WEIGHTS_FILE).unlink()
    with pytest.raises(ModelFileError, match="missing"):
        load_model(tmp_path / "run")
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_cli_reports_bad_model_as_one_line(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "imgs").mkdir()
    res = CliRunner().invoke(main, ["predict", "--model", str(tmp_path / "run"), "--images",
                                    str(tmp_path / "imgs"), "--out", str(tmp_path / "out")])
    assert res.exit_code == 1
    assert res.output.startswith("Error: ") and "model.json is missing" in res.output
    assert "Traceback" not in res.output and res.output.count("\n") == 1
