"""Per-candidate filter statistics, batched on the images' device.

One row of the dataset index per generated candidate carries everything the
paper's filters need (names = ``factory.format.INDEX_COLUMNS``), so filters
can be re-tuned later without touching a pixel:

========================  =========  ==============================================
column                    dtype      meaning
========================  =========  ==============================================
fg_ratio_raw              float32    foreground fraction of the raw mask
fg_ratio                  float32    foreground fraction after CC cleanup
n_components_raw          int32      8-connected components of the raw mask
n_components              int32      components kept by the cleanup
hist                      float32x12 authors' smoothed RGB histogram (box sums)
hist_maxima               int32      authors' local-maxima count (end bins eligible)
hist_gray_maxima_inner    int32      paper-text count: gray histogram, inner bins
pass_area                 bool       ``fg_ratio < max_fg`` (strict, default 0.5)
pass_hist_reference       bool       ``hist_maxima >= 2`` (authors' code)
pass_hist_paper           bool       ``hist_gray_maxima_inner >= 2`` (paper text)
========================  =========  ==============================================

Histogram semantics (authors' code): ``torch.histc(x, 12, -1, 1)`` over all RGB
values of the shifted image -- bin ``int((x + 1) * 12 / 2)`` computed in fp32,
the right edge ``x == 1`` (and anything that rounds to bin 12) goes to the last
bin, values outside ``[-1, 1]`` (and NaN) are ignored. The histogram is smoothed
by a zero-padded width-3 box SUM ``s[i] = h[i-1] + h[i] + h[i+1]`` and bin ``i``
is a local maximum if ``s[i] >= s[i-1]`` and ``s[i] >= s[i+1]``, with zeros
outside (so the end bins are eligible). Counts are exact integers in fp32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from factory.format import HIST_BINS
from factory.masks import MaskRule, check_images, gray, make_masks

__all__ = [
    "STAT_COLUMNS",
    "histogram_batched",
    "smooth_and_count_maxima",
    "histogram_reference",
    "histogram_paper",
    "candidate_stats",
    "process_batch",
    "count_maxima",
    "fg_ratio",
]

_LANES = 32
STAT_COLUMNS = (
    "fg_ratio_raw",
    "fg_ratio",
    "n_components_raw",
    "n_components",
    "hist",
    "hist_maxima",
    "hist_gray_maxima_inner",
    "pass_area",
    "pass_hist_reference",
    "pass_hist_paper",
)


def histogram_batched(x: torch.Tensor, bins: int = HIST_BINS, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    """``torch.histc(x[b], bins, lo, hi)`` for every row ``b`` of ``x`` ([B, ...]) at once -> float32 [B, bins].

    Same bin rule as torch.histc bit for bit: ``int((x - lo) * bins / (hi - lo))``
    in fp32, the last bin closed on the right, values outside ``[lo, hi]`` ignored.
    """
    B = x.shape[0]
    x = x.reshape(B, -1).float()
    cpu = x.device.type == "cpu"
    pos = ((x - lo) * bins / (hi - lo)).to(torch.int32 if cpu else torch.int64)  # trunc toward zero, like the C cast
    pos = pos.clamp_(max=bins - 1)
    inside = (x >= lo) & (x <= hi)  # False for NaN
    pos = torch.where(inside, pos, bins)  # bin `bins` collects what histc ignores
    if cpu:  # one bincount over per-image offsets: half the time of the scatter below on a CPU
        pos += (torch.arange(B, dtype=torch.int32) * (bins + 1)).view(B, 1)
        counts = torch.bincount(pos.view(-1), minlength=B * (bins + 1)).view(B, bins + 1)
        return counts[:, :bins].to(torch.float32)
    # Spread each bin over _LANES counters (pixel index mod _LANES) so that the
    # scatter's atomic adds do not all hit the same 13 addresses of an image.
    lane = torch.arange(x.shape[1], device=x.device, dtype=torch.int64) % _LANES
    counts = torch.zeros(B, (bins + 1) * _LANES, dtype=torch.int32, device=x.device)
    counts.scatter_add_(1, pos * _LANES + lane, torch.ones_like(pos, dtype=torch.int32))
    return counts.view(B, bins + 1, _LANES).sum(dim=2)[:, :bins].to(torch.float32)


def smooth_and_count_maxima(hist: torch.Tensor, *, inner_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded width-3 box sum and the count of local maxima (``>=`` both neighbours).

    ``inner_only=False``: the authors' rule, end bins eligible (compared with the
    zero padding). ``inner_only=True``: only bins 1..bins-2 are counted.
    """
    p = F.pad(hist, (1, 1))
    s = p[:, :-2] + p[:, 1:-1] + p[:, 2:]
    return s, count_maxima(s, inner_only=inner_only)


def count_maxima(smoothed: torch.Tensor, *, inner_only: bool = False) -> torch.Tensor:
    """Local maxima (``>=`` both neighbours, zeros outside) of smoothed histograms [B, bins] -> int32 [B]:
    what ``hist_maxima`` holds for the index's ``hist`` (`factory verify` recounts it)."""
    q = F.pad(smoothed, (1, 1))
    is_max = (smoothed >= q[:, :-2]) & (smoothed >= q[:, 2:])
    if inner_only:
        is_max = is_max[:, 1:-1]
    return is_max.sum(dim=1, dtype=torch.int32)


def fg_ratio(mask: torch.Tensor) -> torch.Tensor:
    """Foreground fraction of bool masks [B, H, W] -> float32 [B]: an exact integer count, then one fp32
    division (the value of fp32 ``mask.mean()``), as the index's ``fg_ratio`` columns hold it."""
    B = mask.shape[0]
    return mask.reshape(B, -1).sum(dim=1, dtype=torch.int32).to(torch.float32) / (mask.shape[1] * mask.shape[2])


def histogram_reference(img_shifted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Authors' histogram filter inputs: ``(hist [B,12], smoothed [B,12], n_maxima int32 [B])``.

    ``hist`` = torch.histc over ALL RGB values of each shifted image, 12 bins on
    [-1, 1]; ``smoothed`` = zero-padded width-3 box sum; ``n_maxima`` counts bins
    with ``s[i] >= s[i-1]`` and ``s[i] >= s[i+1]`` (end bins eligible). The
    authors keep a candidate when ``n_maxima >= 2``.
    """
    img_shifted = check_images(img_shifted, "img_shifted")
    hist = histogram_batched(img_shifted)
    smoothed, n_max = smooth_and_count_maxima(hist)
    return hist, smoothed, n_max


def histogram_paper(img_shifted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paper-text histogram rule: ``(hist [B,12], smoothed [B,12], n_inner_maxima int32 [B])``.

    Interpretation of the paper's sentence ("we compute the histogram of the
    grayscale shifted image, smooth it, and filter out samples with less than two
    local maxima; local maxima at the first/last buckets are filtered out"):

    - histogram of ``gray(img_shifted)`` (same weights as the mask rule), same
      12 bins on [-1, 1] with torch.histc semantics;
    - same zero-padded width-3 box-sum smoothing and ``>=`` local-maximum test
      as the authors' code;
    - maxima are only COUNTED at the inner bins 1..10: a maximum at bin 0 or 11
      (typically a saturated black/white background) does not count;
    - the candidate passes when at least 2 inner maxima remain.
    """
    g = gray(img_shifted)
    hist = histogram_batched(g)
    smoothed, n_max = smooth_and_count_maxima(hist, inner_only=True)
    return hist, smoothed, n_max


def candidate_stats(
    img: torch.Tensor,
    img_shifted: torch.Tensor,
    *,
    raw: torch.Tensor,
    clean: torch.Tensor,
    n_raw: torch.Tensor,
    n_clean: torch.Tensor,
    max_fg: float = 0.5,
) -> dict[str, torch.Tensor]:
    """Index statistics of a batch of candidates, keys = ``STAT_COLUMNS`` (all on the input device).

    ``hist`` holds the authors' 12 SMOOTHED values (box sums of histc counts,
    float32) -- the quantity their local-maximum test reads; the raw counts are
    recoverable only up to the smoothing, so re-tuning the maxima rule works on
    these values. ``pass_area`` is ``fg_ratio < max_fg`` (strict) on the cleaned
    mask, as the authors' area filter.
    """
    check_images(img, "img")
    if raw.shape != clean.shape or raw.dim() != 3 or raw.shape[0] != img.shape[0]:
        raise ValueError(f"raw {list(raw.shape)} and clean {list(clean.shape)} must both be [B,H,W] with B={img.shape[0]}")
    if not 0.0 < float(max_fg) <= 1.0:
        raise ValueError(f"max_fg must be in (0, 1], got {max_fg!r}")
    fg_raw, fg = fg_ratio(raw), fg_ratio(clean)
    _, smoothed, n_max = histogram_reference(img_shifted)
    _, _, n_inner = histogram_paper(img_shifted)
    return {
        "fg_ratio_raw": fg_raw,
        "fg_ratio": fg,
        "n_components_raw": n_raw.to(torch.int32),
        "n_components": n_clean.to(torch.int32),
        "hist": smoothed.to(torch.float32),
        "hist_maxima": n_max,
        "hist_gray_maxima_inner": n_inner,
        "pass_area": fg < max_fg,
        "pass_hist_reference": n_max >= 2,
        "pass_hist_paper": n_inner >= 2,
    }


def process_batch(
    img: torch.Tensor,
    img_shifted: torch.Tensor,
    *,
    rule: MaskRule = "luminance",
    max_fg: float = 0.5,
    ratio: float = 0.2,
    cc_iterations: int | None = None,
    operators: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Masks, CC cleanup and statistics of a batch: ``(raw_mask, clean_mask, stats)``.

    ``cc_iterations=K`` queues everything without a host synchronisation and adds
    ``stats["cc_converged"]`` (bool [B], not an index column): rows where it is
    False are not exact and must be recomputed with ``cc_iterations=None``.
    """
    out = make_masks(img, img_shifted, rule=rule, ratio=ratio, operators=operators, cc_iterations=cc_iterations)
    raw, clean, n_raw, n_clean = out[:4]
    stats = candidate_stats(img, img_shifted, raw=raw, clean=clean, n_raw=n_raw, n_clean=n_clean, max_fg=max_fg)
    if cc_iterations is not None:
        stats["cc_converged"] = out[4]
    return out[0], out[1], stats
