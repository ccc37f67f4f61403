"""trainers.eval.metrics against an independent, straightforward per-image per-threshold loop."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from trainers.cli import main
from trainers.eval.metrics import SegmentationMetrics, image_curves

BETA_SQ = 0.3


def naive_metrics(preds: list[np.ndarray], gts: list[np.ndarray]) -> dict:
    """The paper's protocol written as plainly as possible (float64 probabilities, bool gts)."""
    n = len(preds)
    f_per_threshold = []
    for k in range(255):
        thr = k / 255
        fs = []
        for p, g in zip(preds, gts):
            pred = p > thr
            tp = int(np.logical_and(pred, g).sum())
            n_pred = int(pred.sum())
            n_gt = int(g.sum())
            precision = tp / n_pred if n_pred > 0 else 1.0
            recall = tp / n_gt if n_gt > 0 else 1.0
            denom = BETA_SQ * precision + recall
            fs.append((1 + BETA_SQ) * precision * recall / denom if denom > 0 else 0.0)
        f_per_threshold.append(sum(fs) / n)
    ious, accs, maes = [], [], []
    for p, g in zip(preds, gts):
        b = p >= 0.5
        inter = int(np.logical_and(b, g).sum())
        union = int(np.logical_or(b, g).sum())
        ious.append(inter / union if union > 0 else 1.0)
        accs.append(float((b == g).mean()))
        maes.append(float(np.abs(p - g.astype(np.float64)).mean()))
    best = int(np.argmax(f_per_threshold))
    return {"maxF": max(f_per_threshold), "maxF_threshold": best, "IoU": sum(ious) / n,
            "accuracy": sum(accs) / n, "MAE": sum(maes) / n}


def _make_pairs(rng) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(stem, uint8 prediction, uint8 graded mask) with varied sizes and edge cases."""
    out = []
    sizes = [(1, 1), (5, 7), (17, 31), (40, 23), (64, 48), (33, 33), (12, 90), (50, 50), (9, 4), (30, 41)]
    for i, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[:h, :w]
        blob = ((yy - h / 2) ** 2 + (xx - w / 3) ** 2) < (min(h, w) / 3) ** 2
        mask = np.where(blob, 255, 0).astype(np.uint8)
        if i % 3 == 1:  # graded mask, including the values 127 and 128 around the cut
            mask = rng.choice(np.array([0, 60, 127, 128, 200, 255], dtype=np.uint8), size=(h, w))
        pred = np.clip(blob * 170 + rng.normal(0, 60, (h, w)), 0, 255).astype(np.uint8)  # graded
        out.append((f"s{i:02d}", pred, mask))
    # edge cases
    square = np.zeros((20, 30), np.uint8)
    square[7:13, 5:11] = 255
    out.append(("empty_pred", np.zeros((20, 30), np.uint8), square))
    out.append(("empty_gt", rng.integers(0, 256, (25, 19)).astype(np.uint8), np.zeros((25, 19), np.uint8)))
    out.append(("both_empty", np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)))
    out.append(("full_pred", np.full((10, 13), 255, np.uint8), rng.choice(np.array([0, 255], np.uint8), (10, 13))))
    out.append(("full_gt", rng.integers(0, 256, (16, 16)).astype(np.uint8), np.full((16, 16), 255, np.uint8)))
    out.append(("exact_levels", np.arange(256, dtype=np.uint8).reshape(16, 16), np.tri(16, dtype=np.uint8) * 255))
    return out


@pytest.fixture(scope="module")
def pred_mask_dirs(tmp_path_factory):
    rng = np.random.default_rng(1234)
    root = tmp_path_factory.mktemp("predeval")
    (root / "preds").mkdir()
    (root / "masks").mkdir()
    pairs = _make_pairs(rng)
    for stem, pred, mask in reversed(pairs):  # creation order must not matter
        Image.fromarray(pred, mode="L").save(root / "preds" / f"{stem}.png")
        Image.fromarray(mask, mode="L").save(root / "masks" / f"{stem}.png")
    return root, pairs


def test_eval_predictions_cli_matches_naive_loop(pred_mask_dirs):
    root, pairs = pred_mask_dirs
    out = root / "metrics.json"
    res = CliRunner().invoke(main, ["eval", "--predictions", str(root / "preds"), "--masks", str(root / "masks"),
                                    "--json", str(out)])
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())["predictions"]
    preds = [p.astype(np.float64) / 255 for _, p, _ in pairs]
    gts = [m >= 128 for _, _, m in pairs]
    want = naive_metrics(preds, gts)
    assert got["n_images"] == len(pairs)
    for k in ("maxF", "IoU", "accuracy", "MAE"):
        assert got[k] == pytest.approx(want[k], abs=1e-6), k
    assert got["maxF_threshold"] == want["maxF_threshold"]
    # pysodmetrics' own numbers, reported under their names; its E-measure exceeds 1 on
    # degenerate images (1x1, all-foreground gt), so only presence and finiteness are checked.
    for k in ("pysod_maxF", "pysod_meanF", "pysod_adpF", "pysod_Smeasure", "pysod_maxE", "pysod_meanE",
              "pysod_adpE", "pysod_MAE"):
        assert np.isfinite(got[k]), k
    assert 0.0 <= got["pysod_MAE"] <= 1.0 and 0.0 <= got["pysod_maxF"] <= 1.0


def test_mae_agrees_with_pysodmetrics(pred_mask_dirs):
    psm = pytest.importorskip("py_sod_metrics")
    _, pairs = pred_mask_dirs
    ours = SegmentationMetrics(pysod=False)
    theirs = psm.MAE()
    for _, pred, mask in pairs:
        ours.update(pred.astype(np.float64) / 255, mask >= 128)
        theirs.step(pred.astype(np.float64) / 255, mask >= 128, normalize=False)
    assert ours.compute()["MAE"] == pytest.approx(float(theirs.get_results()["mae"]), abs=1e-9)


def test_float_probabilities_on_exact_thresholds_match_naive_loop():
    rng = np.random.default_rng(7)
    preds, gts, levels = [], [], []
    for h, w in [(13, 11), (20, 20), (7, 29)]:
        v = rng.integers(0, 256, (h, w)).astype(np.uint8)
        levels.append(v)
        preds.append(v / 255.0)  # exactly on the thresholds k/255
        gts.append(rng.random((h, w)) > 0.6)
    preds[0][0, 0], preds[0][-1, -1] = 0.5, np.nextafter(0.5, 1.0)  # both sides of the 0.5 cut
    levels[0][0, 0], levels[0][-1, -1] = 127, 128
    preds.append(rng.random((15, 15)))
    gts.append(rng.random((15, 15)) > 0.3)
    m = SegmentationMetrics(pysod=False)
    m_u8 = SegmentationMetrics(pysod=False)
    for p, g in zip(preds, gts):
        m.update(p, g)
    for v, g in zip(levels, gts[:3]):
        m_u8.update(v, g)
    want = naive_metrics(preds, gts)
    got = m.compute()
    for k in ("maxF", "IoU", "accuracy", "MAE"):
        assert got[k] == pytest.approx(want[k], abs=1e-9), k
    # uint8 input v is read as p = v/255
    want3 = naive_metrics([v / 255.0 for v in levels], gts[:3])
    got3 = m_u8.compute()
    for k in ("maxF", "accuracy", "MAE"):
        assert got3[k] == pytest.approx(want3[k], abs=1e-9), k


def test_edge_case_conventions():
    c = image_curves(np.zeros((4, 4)), np.zeros((4, 4), bool))  # nothing predicted, nothing to find
    assert np.all(c["precision"] == 1) and np.all(c["recall"] == 1) and np.all(c["F"] == 1)
    assert c["IoU"] == 1.0 and c["accuracy"] == 1.0 and c["MAE"] == 0.0
    gt = np.zeros((4, 4), bool)
    gt[0, 0] = True
    c = image_curves(np.zeros((4, 4)), gt)  # nothing predicted: P = 1, R = 0 -> F = 0
    assert np.all(c["precision"] == 1) and np.all(c["F"] == 0) and c["IoU"] == 0.0
    c = image_curves(np.ones((4, 4)), np.zeros((4, 4), bool))  # P = 0, R = 1 -> F = 0
    assert np.all(c["F"] == 0)


def test_update_validates_inputs():
    m = SegmentationMetrics(pysod=False)
    with pytest.raises(ValueError, match="differ in shape"):
        m.update(np.zeros((3, 4)), np.zeros((4, 3), bool))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.update(np.full((2, 2), 1.5), np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="bool"):
        m.update(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="no images"):
        m.compute()


def test_eval_predictions_missing_prediction_is_one_line_error(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "m").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "m" / "a.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "m" / "b.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "p" / "a.png")
    res = CliRunner().invoke(main, ["eval", "--predictions", str(tmp_path / "p"), "--masks", str(tmp_path / "m")])
    assert res.exit_code == 1
    assert "Error: no prediction for mask 'b.png'" in res.output
    assert "Traceback" not in res.output
    Image.fromarray(np.zeros((5, 4), np.uint8)).save(tmp_path / "p" / "b.png")
    res = CliRunner().invoke(main, ["eval", "--predictions", str(tmp_path / "p"), "--masks", str(tmp_path / "m")])
    assert res.exit_code == 1 and "save predictions at the mask's size" in res.output
