"""The paper authors' released U-Net checkpoints and metrics, against their golden vectors.

Reference: shared/reference/unet-authors/ (README.md there: architecture, checkpoint format, inference
protocol, the closed-form weight recipe, logits of the authors' code, 13 metric cases). The files are
read in place (conftest's ``shared`` fixture: $FACTORY_SHARED or ../shared); skipped when absent.
"""
from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from trainers.cli import main
from trainers.eval.metrics import SegmentationMetrics, image_curves
from trainers.model.authors import AUTHORS_CONFIG, expected_state, load_authors_model
from trainers.model.checkpoint import load_model
from trainers.model.unet import foreground_probability


@pytest.fixture(scope="module")
def ref(shared):
    d = shared / "reference" / "unet-authors"
    if not (d / "README.md").is_file():
        pytest.skip(f"the authors' U-Net golden vectors are absent at {d}")
    return d


def golden_state(ref) -> dict[str, torch.Tensor]:
    """The README's closed-form weights, in the authors' key order and names."""
    spec = json.loads((ref / "unet_state_dict_spec.json").read_text())
    out = {}
    for i, key in enumerate(spec["order"]):
        shape, dtype = spec["state_dict"][key]["shape"], getattr(torch, spec["state_dict"][key]["dtype"])
        n = math.prod(shape)
        j = np.arange(n, dtype=np.float64)
        leaf = key.rsplit(".", 1)[1]
        if leaf == "num_batches_tracked":
            v = np.full(n, 7.0)
        elif leaf == "running_var":
            v = 1 + 0.5 * np.sin(0.37 * j + i)
        elif leaf == "running_mean":
            v = 0.1 * np.cos(0.23 * j + i)
        elif leaf == "bias":
            v = 0.05 * np.sin(0.19 * j + 3 * i)
        elif len(shape) == 1:
            v = 1 + 0.2 * np.sin(0.11 * j + 2 * i)
        else:
            v = math.sqrt(2 / (n / shape[0])) * 1.2 * np.sin(1.618 * j + 0.5 * i)
        out[key] = torch.from_numpy(v.reshape(shape)).to(dtype)
    return out


@pytest.fixture(scope="module")
def pth(ref, tmp_path_factory):
    """The golden weights saved as the authors save theirs: torch.save(model.state_dict())."""
    state = golden_state(ref)
    finger = json.loads((ref / "weights_fingerprint.json").read_text())
    for k, (s, m) in finger.items():
        t = state[k].double()
        assert float(t.sum()) == pytest.approx(s, rel=1e-6, abs=1e-6) and float(t.abs().max()) == pytest.approx(m), k
    path = tmp_path_factory.mktemp("authors") / "u_net_golden.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def model(pth):
    return load_authors_model(pth)


def test_architecture_is_our_unet_configured(ref):
    spec = json.loads((ref / "unet_state_dict_spec.json").read_text())
    want = expected_state()
    assert list(want) == spec["order"]
    assert {k: list(s) for k, (s, _, _) in want.items()} == {k: v["shape"] for k, v in spec["state_dict"].items()}
    assert sum(math.prod(s) for k, (s, _, _) in want.items()
               if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))) == spec["params"]


@pytest.mark.parametrize("name", ["128", "128x171"])
def test_golden_logits(ref, model, name):
    x = torch.from_numpy(np.load(ref / f"input_{name}.npy"))
    with torch.no_grad():
        logits = model(x)
    np.testing.assert_allclose(logits.numpy(), np.load(ref / f"logits_{name}.npy"), rtol=0, atol=1e-5)
    if name == "128":
        fg = foreground_probability(logits, AUTHORS_CONFIG)[:, 0]
        np.testing.assert_allclose(fg.numpy(), np.load(ref / "foreground_128.npy"), rtol=0, atol=1e-5)


def test_the_13_metric_cases(ref):
    preds, masks = np.load(ref / "metric_predictions.npy"), np.load(ref / "metric_masks.npy")
    want = json.loads((ref / "metrics_expected.json").read_text())
    m = SegmentationMetrics(pysod=False)
    for i, (p, g) in enumerate(zip(preds, masks)):
        c = image_curves(p, g)
        m.update(p, g)
        e = want["per_image"][i]
        assert c["accuracy"] == pytest.approx(e["accuracy"], abs=1e-6), i
        if e["iou"] is None:  # both empty (case 12): theirs NaN, ours 1
            assert math.isnan(c["IoU_authors"]) and c["IoU"] == 1.0 and not p.any() and not g.any()
        else:
            assert c["IoU"] == c["IoU_authors"] == pytest.approx(e["iou"], abs=1e-6), i
    got = m.compute()
    assert got["maxF"] == pytest.approx(want["F_max"], abs=1e-6)
    assert got["n_both_empty"] == 1
    defined = [e["iou"] for e in want["per_image"] if e["iou"] is not None]
    assert got["IoU_authors"] == pytest.approx(np.mean(defined), abs=1e-6)
    assert got["IoU"] == pytest.approx((sum(defined) + 1.0) / 13, abs=1e-6)


def _images(folder, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(sizes):
        arr = np.random.default_rng(i).integers(0, 256, (h, w, 3)).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"im{i}.png")


def test_convert_then_predict_equals_the_pth(pth, tmp_path):
    _images(tmp_path / "images", [(24, 16), (16, 16)])  # network inputs 192x128 and 128x128
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["convert", str(pth), "--out", str(run)])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and "sha256" in res.output
    info = json.loads((run / "model.json").read_text())
    assert info["extra"]["source"]["sha256"] == hashlib.sha256(pth.read_bytes()).hexdigest()
    assert info["config"] == AUTHORS_CONFIG.to_dict()
    assert load_model(run).config == AUTHORS_CONFIG
    for name, m in (("pth", pth), ("run", run)):
        res = CliRunner().invoke(main, ["predict", "--model", str(m), "--images", str(tmp_path / "images"),
                                        "--out", str(tmp_path / name), "--device", "cpu"])
        assert res.exit_code == 0, res.output
    for i in range(2):
        assert (tmp_path / "pth" / f"im{i}.png").read_bytes() == (tmp_path / "run" / f"im{i}.png").read_bytes()
    again = CliRunner().invoke(main, ["convert", str(pth), "--out", str(run)])
    assert again.exit_code == 1 and "already holds a model" in again.output


def test_eval_and_benchmark_accept_the_pth(pth, tmp_path):
    root = tmp_path / "data" / "ECSSD"
    _images(root / "images", [(16, 16)])
    (root / "ground_truth_mask").mkdir()
    Image.fromarray(np.tri(16, dtype=np.uint8) * 255).save(root / "ground_truth_mask" / "im0.png")
    res = CliRunner().invoke(main, ["eval", "--model", str(pth), "--dataset", f"ecssd={root}", "--device", "cpu",
                                    "--no-pysod"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("protocol: the authors'") and "ECSSD: n_images=1" in res.output
    res = CliRunner().invoke(main, ["benchmark", "--model", str(pth), "--root", str(tmp_path / "data"),
                                    "--device", "cpu", "--no-pysod"])
    assert res.exit_code == 0, res.output
    assert "| **u_net_golden** |" in res.output
    assert "| ECSSD | " in res.output and "| .899 / .672 / .782 | .906 / .684 / .797 |" in res.output


def _broken(pth, tmp_path, change):
    state = torch.load(pth, weights_only=True)
    change(state)
    out = tmp_path / "broken.pth"
    torch.save(state, out)
    return out


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("up2.conv.double_conv.3.bias"), "missing key 'up2.conv.double_conv.3.bias'"),
    (lambda s: s.update(extra=torch.zeros(1)), "unexpected key 'extra'"),
    (lambda s: s.update({"outc.conv.weight": torch.zeros(1, 64, 1, 1)}),
     "tensor 'outc.conv.weight' is torch.float32 (1, 64, 1, 1), the authors' U-Net expects torch.float32 (2, 64, 1, 1)"),
])
def test_wrong_key_or_shape_is_one_line(pth, tmp_path, change, message):
    bad = _broken(pth, tmp_path, change)
    res = CliRunner().invoke(main, ["convert", str(bad), "--out", str(tmp_path / "run")])
    assert res.exit_code == 1 and res.output.startswith("Error: ") and message in res.output, res.output
    assert res.output.count("\n") == 1 and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()


def test_dataparallel_prefix_and_pickles(pth, model, tmp_path):
    dp = _broken(pth, tmp_path, lambda s: [s.update({f"module.{k}": s.pop(k)}) for k in list(s)])
    a, b = load_authors_model(dp).state_dict(), model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    evil = tmp_path / "evil.pth"
    torch.save({"inc.double_conv.0.weight": torch.zeros(1), "x": object()}, evil)  # not weights_only-loadable
    res = CliRunner().invoke(main, ["predict", "--model", str(evil), "--images", str(tmp_path), "--out",
                                    str(tmp_path / "o")])
    assert res.exit_code == 1 and "weights_only=True" in res.output and res.output.count("\n") == 1, res.output
