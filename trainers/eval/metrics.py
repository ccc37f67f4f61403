"""Segmentation metrics: the paper's protocol, plus pysodmetrics' measures under their own names.

The paper's protocol (Voynov, Morozov & Babenko 2021; shared/reference/benchmarks.md)
  - maxFβ, β² = 0.3: thresholds ``p > k/255`` for k = 0..254. For each image and
    threshold, precision P = TP / (TP + FP) (P = 1 when nothing is predicted),
    recall R = TP / |gt| (R = 1 when the gt is empty: nothing to find),
    F = (1 + β²) P R / (β² P + R), and F = 0 where undefined (P + R = 0).
    Per threshold the mean over images of the per-image F; report the max over
    thresholds (and the threshold index k that attains it).
  - IoU and accuracy: prediction ``p >= 0.5`` (the authors' ``>=``), per image,
    averaged over images.
  - The one convention that differs from the authors' metrics.py: an image whose
    binarised prediction AND ground truth are both empty has IoU 1 here (the
    prediction is perfect); theirs is 0/0 = NaN. ``compute()`` reports both:
    ``IoU`` (ours, every image counts) and ``IoU_authors`` (the mean over the
    images whose authors' IoU is defined, i.e. their NaN images left out), with
    ``n_both_empty`` the number of such images; the two agree when it is 0.
    Their 13 golden cases (shared/reference/unet-authors) are reproduced exactly
    otherwise (tests/test_authors_unet.py).
  - MAE: mean |p - gt| per image, averaged over images.

The thresholds are the float64 values k/255. The authors' ``np.arange(0, 1, 1/255)``
differs from them in the last bit for 24 of the 255 values; no float32 number
lies between the two, so on model outputs (float32) and on 8-bit maps the
comparisons are identical.

Implementation: each image is reduced to two 256-bin histograms of its
"threshold level" (the number of thresholds k/255 a pixel exceeds): one over
all pixels and one over gt pixels. Reverse cumulative sums give predicted
positives and true positives at all 255 thresholds at once, so an image costs a
few passes over its pixels regardless of the number of thresholds. Levels of a
float map are found with ``searchsorted`` against the float64 thresholds
``k/255``, so ``p > k/255`` is evaluated exactly as written; a uint8 map v is
read as p = v/255, whose level is v itself.

pysodmetrics (optional dependency) min-max normalises each prediction, uses
256 thresholds and binarises the gt at ``> 128``: its numbers are NOT the
paper's and are reported only under ``pysod_*`` names: pysod_maxF, pysod_meanF,
pysod_adpF (β² = 0.3), pysod_Smeasure, pysod_maxE, pysod_meanE, pysod_adpE,
pysod_MAE. They are computed by calling pysodmetrics on the uint8 prediction
(round(255 p)) and a uint8 gt (the raw mask when the caller has it, else the
binary gt as 0/255).
"""
from __future__ import annotations

import warnings

import numpy as np

from trainers.errors import TrainersError

BETA_SQ = 0.3
N_THRESHOLDS = 255
THRESHOLDS = np.arange(N_THRESHOLDS, dtype=np.float64) / 255.0  # k/255, k = 0..254
IOU_THRESHOLD = 0.5  # p >= 0.5 is foreground for IoU and accuracy
METRIC_PROTOCOL = ("IoU, accuracy at p >= 0.5; maxF over p > k/255, k = 0..254, beta^2 = 0.3; "
                   "pysod_* = pysodmetrics' own conventions, not the paper's")

# What the two families measure, for output beside the numbers (trainers eval, trainers benchmark).
PAPER_LEGEND = "the paper's protocol, on the probabilities as they are; MAE = mean |p - gt| per image"
PYSOD_LEGEND = ("pysodmetrics' own normalisation, not the paper's: each map min-max stretched to [0, 1] per image, "
                "gt > 128, 256 thresholds")
MAE_NOTE = ("MAE is the paper's (the probabilities as the model gives them); pysod_MAE first stretches each map to "
            "[0, 1], so the two differ, most on low-contrast maps; --no-pysod leaves the pysod_* measures out")


class MissingDependency(TrainersError, ImportError):
    """An optional package that was asked for is not installed (one-line CLI error)."""


def pysod_available() -> bool:
    try:
        import py_sod_metrics  # noqa: F401
    except ImportError:
        return False
    return True


def threshold_levels(prob: np.ndarray) -> np.ndarray:
    """Per pixel, how many thresholds k/255 (k = 0..254) the value strictly exceeds (0..255)."""
    if prob.dtype == np.uint8:
        return prob
    return np.searchsorted(THRESHOLDS, prob, side="left").astype(np.uint8)


def _check(prob: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prob = np.asarray(prob)
    gt = np.asarray(gt)
    if prob.ndim != 2:
        raise ValueError(f"prediction must be 2-D [H, W], got shape {prob.shape}")
    if prob.shape != gt.shape:
        raise ValueError(f"prediction {prob.shape} and ground truth {gt.shape} differ in shape")
    if gt.dtype != bool:
        raise ValueError(f"ground truth must be a bool array, got {gt.dtype}")
    if prob.dtype == np.uint8:
        return prob, gt
    if prob.dtype.kind != "f":
        raise ValueError(f"prediction must be float in [0, 1] (or uint8 = 255 p), got {prob.dtype}")
    if prob.size and not (np.isfinite(prob).all() and prob.min() >= 0.0 and prob.max() <= 1.0):
        raise ValueError("prediction must hold finite probabilities in [0, 1]")
    return prob, gt


def image_curves(prob: np.ndarray, gt: np.ndarray) -> dict:
    """Per-image quantities of the paper's protocol (precision/recall/F at 255 thresholds, IoU, acc, MAE)."""
    prob, gt = _check(prob, gt)
    levels = threshold_levels(prob)
    hist_all = np.bincount(levels.ravel(), minlength=256)
    hist_fg = np.bincount(levels[gt], minlength=256)
    # pixels with level > k are predicted positive at threshold k
    pred_pos = np.cumsum(hist_all[::-1])[::-1][1:].astype(np.float64)  # k = 0..254
    tp = np.cumsum(hist_fg[::-1])[::-1][1:].astype(np.float64)
    n_gt = float(hist_fg.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(pred_pos > 0, tp / np.maximum(pred_pos, 1), 1.0)
        recall = tp / n_gt if n_gt > 0 else np.ones_like(tp)
        denom = BETA_SQ * precision + recall
        f = np.where(denom > 0, (1 + BETA_SQ) * precision * recall / np.where(denom > 0, denom, 1), 0.0)

    if prob.dtype == np.uint8:
        binary = prob >= 128  # v/255 >= 0.5  <=>  v >= 128
        mae = float(np.abs(prob.astype(np.float64) / 255.0 - gt).mean()) if prob.size else 0.0
    else:
        binary = prob >= IOU_THRESHOLD
        mae = float(np.abs(prob.astype(np.float64) - gt).mean()) if prob.size else 0.0
    inter = np.count_nonzero(binary & gt)
    union = np.count_nonzero(binary | gt)
    acc = float(np.count_nonzero(binary == gt)) / binary.size if binary.size else 1.0
    return {"precision": precision, "recall": recall, "F": f, "IoU": inter / union if union else 1.0,
            "IoU_authors": inter / union if union else float("nan"), "accuracy": acc, "MAE": mae}


def _to_uint8(prob: np.ndarray) -> np.ndarray:
    if prob.dtype == np.uint8:
        return prob
    return np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8)


class _Pysod:
    """pysodmetrics evaluators fed uint8 maps, as that toolkit expects."""

    def __init__(self):
        import py_sod_metrics as psm

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.fm = psm.FmeasureV2(metric_handlers={
                "fm": psm.FmeasureHandler(with_dynamic=True, with_adaptive=True, beta=BETA_SQ)})
            self.sm = psm.Smeasure()
            self.em = psm.Emeasure()
            self.mae = psm.MAE()

    def step(self, pred_u8: np.ndarray, gt_u8: np.ndarray) -> None:
        self.fm.step(pred=pred_u8, gt=gt_u8)
        self.sm.step(pred=pred_u8, gt=gt_u8)
        self.em.step(pred=pred_u8, gt=gt_u8)
        self.mae.step(pred=pred_u8, gt=gt_u8)

    def results(self) -> dict:
        fm = self.fm.get_results()["fm"]
        em = self.em.get_results()["em"]
        return {
            "pysod_maxF": float(np.max(fm["dynamic"])),
            "pysod_meanF": float(np.mean(fm["dynamic"])),
            "pysod_adpF": float(fm["adaptive"]),
            "pysod_Smeasure": float(self.sm.get_results()["sm"]),
            "pysod_maxE": float(np.max(em["curve"])),
            "pysod_meanE": float(np.mean(em["curve"])),
            "pysod_adpE": float(em["adp"]),
            "pysod_MAE": float(self.mae.get_results()["mae"]),
        }


class SegmentationMetrics:
    """Accumulates per-image metrics; ``compute()`` returns the dataset means.

    >>> m = SegmentationMetrics(pysod=False)
    >>> m.update(np.array([[0.9, 0.1]]), np.array([[True, False]]))
    >>> round(m.compute()["maxF"], 6)
    1.0

    ``pysod``: True computes the pysodmetrics measures (error if the package is
    missing), False skips them, None (default) computes them when installed.
    """

    def __init__(self, pysod: bool | None = None):
        if pysod is None:
            pysod = pysod_available()
        if pysod and not pysod_available():
            raise MissingDependency("pysodmetrics is not installed (pip install pysodmetrics); "
                              "or evaluate without the pysod_* measures")
        self._pysod = _Pysod() if pysod else None
        self.reset_counts()

    def reset_counts(self) -> None:
        self.n = 0
        self._f_sum = np.zeros(N_THRESHOLDS, dtype=np.float64)
        self._sums = {"IoU": 0.0, "accuracy": 0.0, "MAE": 0.0}
        self._iou_authors_sum = 0.0
        self.n_both_empty = 0

    def update(self, prob: np.ndarray, gt: np.ndarray, *, gt_uint8: np.ndarray | None = None) -> None:
        """Add one image: ``prob`` float [H, W] in [0, 1] (or uint8 holding 255 p), ``gt`` bool [H, W].

        ``gt_uint8``: the raw 8-bit mask, given only to pysodmetrics (which
        binarises it at > 128 itself); defaults to ``gt`` as 0/255.
        """
        c = image_curves(prob, gt)
        self._f_sum += c["F"]
        for k in self._sums:
            self._sums[k] += c[k]
        if np.isnan(c["IoU_authors"]):
            self.n_both_empty += 1
        else:
            self._iou_authors_sum += c["IoU_authors"]
        self.n += 1
        if self._pysod is not None:
            if gt_uint8 is None:
                gt_uint8 = np.where(gt, 255, 0).astype(np.uint8)
            elif gt_uint8.shape != gt.shape or gt_uint8.dtype != np.uint8:
                raise ValueError(f"gt_uint8 must be uint8 {gt.shape}, got {gt_uint8.dtype} {gt_uint8.shape}")
            self._pysod.step(_to_uint8(np.asarray(prob)), gt_uint8)

    def compute(self) -> dict:
        """Dataset metrics: maxF, maxF_threshold (k of p > k/255), IoU, accuracy, MAE, n_images, IoU_authors,
        n_both_empty, pysod_*."""
        if self.n == 0:
            raise ValueError("no images were evaluated")
        mean_f = self._f_sum / self.n
        k = int(np.argmax(mean_f))
        out = {
            "maxF": float(mean_f[k]),
            "maxF_threshold": k,
            "IoU": self._sums["IoU"] / self.n,
            "accuracy": self._sums["accuracy"] / self.n,
            "MAE": self._sums["MAE"] / self.n,
            "n_images": self.n,
            "IoU_authors": (self._iou_authors_sum / (self.n - self.n_both_empty)
                            if self.n > self.n_both_empty else None),  # None: every image both-empty
            "n_both_empty": self.n_both_empty,
        }
        if self._pysod is not None:
            out.update(self._pysod.results())
        return out
