"""The evaluation protocol: predict, resize back, score; prediction folders.

Default protocol = the paper authors' (their ``SegmentationInference(resize_to=128)`` and
``metrics.py``; shared/reference/unet-authors/README.md, shared/reference/benchmarks.md):
  - the image is resized (bilinear) so its shorter side is 128, the longer one
    ``128 * long // short`` (integer division: 400x300 -> 170x128), normalised
    to [-1, 1] and fed to the U-Net;
  - the foreground probability (sigmoid of our 1-logit head, softmax channel 1
    of the authors' 2-logit head) is resized bilinearly (align_corners=False)
    to the ground truth's size and scored there with trainers.eval.metrics
    (IoU / accuracy at p >= 0.5, maxF over p > k/255);
  - CUB and Flowers arrive already centre-cropped to 128x128 (layouts.py).
``short_side`` (``--short-side``) changes the 128: a U-Net trained on 64-px images is fed at 64, the scale it
learned. Fed at twice that scale, such a net keeps what it learned in pixels, e.g. "background within 10 px
of the left and right border", which then marks half as much of the image (docs/real-gan.md, section 4).
Consecutive samples with the same network input size are batched together;
BatchNorm runs in eval mode, so batching never changes a prediction.

``--model`` anywhere means a run folder or an authors' ``.pth`` (trainers.model.checkpoint.open_model);
the functions here take a loaded module or such a path.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from trainers.device import resolve_device
from trainers.errors import TrainersError
from trainers.eval.layouts import (
    Benchmark,
    BenchmarkError,
    Sample,
    files_by_stem,
    open_benchmark,
)
from trainers.eval.metrics import METRIC_PROTOCOL, SegmentationMetrics
from trainers.fileio import atomic_write
from trainers.model.checkpoint import open_model
from trainers.model.unet import ModelConfig, foreground_probability, pixels_to_input
from trainers.progress import count_bar

SHORT_SIDE = 128
PROTOCOL = ("the authors' (shorter side 128 = their SegmentationInference(resize_to=128), probability "
            "resized back to the mask; " + METRIC_PROTOCOL + ")")


def network_input_size(width: int, height: int, short: int = SHORT_SIDE) -> tuple[int, int]:
    """(w, h) with the shorter side = ``short`` and the longer ``short * long // short_side`` (the authors')."""
    if width <= 0 or height <= 0:
        raise ValueError(f"empty image {width}x{height}")
    if width <= height:
        return short, max(1, short * height // width)
    return max(1, short * width // height), short


def check_short_side(short: int) -> None:
    if isinstance(short, bool) or not isinstance(short, int) or short < 1:
        raise TrainersError(f"--short-side must be a positive number of pixels (the authors' 128), got {short!r}")


def image_to_input(image: Image.Image, short: int = SHORT_SIDE) -> torch.Tensor:
    """PIL image -> float tensor [3, h, w] in [-1, 1] at shorter side ``short`` (bilinear)."""
    image = image.convert("RGB")
    size = network_input_size(*image.size, short=short)
    if size != image.size:
        image = image.resize(size, Image.BILINEAR)
    return torch.from_numpy(pixels_to_input(image)).permute(2, 0, 1)


@torch.inference_mode()
def predict_batch(model: torch.nn.Module, inputs: torch.Tensor, out_sizes: list[tuple[int, int]],
                  device: torch.device) -> list[np.ndarray]:
    """Inputs [B, 3, h, w] -> foreground probability maps resized (bilinear) to each (H, W) in ``out_sizes``.

    The head is the model's ``config.head``; a module without a config must give 1 logit (sigmoid).
    """
    config = getattr(model, "config", None)
    config = config if isinstance(config, ModelConfig) else ModelConfig()
    logits = model(inputs.to(device))
    if logits.shape[1] != config.out_channels:
        raise ValueError(f"the model must output {config.out_channels} logit channel(s), got {logits.shape[1]}")
    probs = foreground_probability(logits, config)
    out = []
    for i, (h, w) in enumerate(out_sizes):
        p = probs[i:i + 1]
        if p.shape[-2:] != (h, w):
            p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
        out.append(p[0, 0].clamp_(0.0, 1.0).to("cpu", torch.float64).numpy())
    return out


def _batches(samples: Iterable, batch_size: int, to_image, short: int = SHORT_SIDE):
    """Group consecutive items whose network input (shorter side ``short``) has the same size."""
    buf, key = [], None
    for item in samples:
        x = image_to_input(to_image(item), short=short)
        if buf and (x.shape != key or len(buf) >= batch_size):
            yield buf
            buf = []
        buf.append((item, x))
        key = x.shape
    if buf:
        yield buf


def model_on(model: torch.nn.Module | str | os.PathLike, device) -> tuple[torch.nn.Module, torch.device]:
    """(module, device) from a loaded module or a ``--model`` path, and a ``--device`` value."""
    dev = resolve_device(device)
    if isinstance(model, (str, os.PathLike)):
        model = open_model(model, dev)
    return model, dev


class _EvalMode:
    def __init__(self, model, device):
        self.model, self.device = model, device

    def __enter__(self):
        self.was_training = self.model.training
        self.model.to(self.device).eval()
        return self.model

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def _progress(total, desc):
    return count_bar(total, what=desc, unit="img")


def evaluate_model(model: torch.nn.Module | str | os.PathLike, dataset: Benchmark | Iterable[Sample], *,
                   device="auto", batch_size: int = 16, pysod: bool | None = None, limit: int | None = None,
                   progress: bool = False, short_side: int = SHORT_SIDE) -> dict:
    """Score ``model`` on a benchmark with the authors' protocol (network input at shorter side ``short_side``);
    returns SegmentationMetrics.compute()."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_short_side(short_side)
    model, device = model_on(model, device)
    metrics = SegmentationMetrics(pysod=pysod)
    samples = iter(dataset)
    if limit is not None:
        samples = (s for i, s in zip(range(limit), samples))
    bar = None
    if progress:
        total = len(dataset) if hasattr(dataset, "__len__") else None
        bar = _progress(min(total, limit) if (total and limit) else (total or limit),
                        getattr(dataset, "name", "eval"))
    with _EvalMode(model, device):
        for batch in _batches(samples, batch_size, lambda s: s.image, short_side):
            xs = torch.stack([x for _, x in batch])
            probs = predict_batch(model, xs, [s.gt.shape for s, _ in batch], device)
            for (s, _), p in zip(batch, probs):
                metrics.update(p, s.gt)
            if bar is not None:
                bar.update(len(batch))
    if bar is not None:
        bar.close()
    return metrics.compute()


def evaluate_datasets(model: str | os.PathLike, datasets: list[tuple[str, Path]], *, device="auto",
                      batch_size: int = 16, pysod: bool | None = None,
                      limit: int | None = None, short_side: int = SHORT_SIDE) -> Iterator[tuple[str, dict]]:
    """``trainers eval --model``: yields (name, {kind, path, protocol, metrics...}) per (kind, path).

    Every benchmark is opened before the model is loaded (layout errors first); a name used twice
    gets its path added.
    """
    check_short_side(short_side)
    opened = [open_benchmark(kind, path) for kind, path in datasets]
    net, dev = model_on(model, device)
    used: set[str] = set()
    for ds in opened:
        name = ds.name if ds.name not in used else f"{ds.name} ({ds.root})"
        used.add(name)
        yield name, {"kind": ds.kind, "path": str(ds.root), "protocol": "authors", "short_side": short_side,
                     **evaluate_model(net, ds, device=dev, batch_size=batch_size, pysod=pysod, limit=limit,
                                      short_side=short_side)}


def write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON atomically (temp file + os.replace)."""
    path = Path(path)
    if path.parent and not path.parent.is_dir():
        raise TrainersError(f"cannot write {path}: folder {str(path.parent)!r} does not exist")
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode())


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _load_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, SyntaxError) as e:
        raise BenchmarkError(f"cannot read image {path}: {e}") from None


def predict_folder(model: torch.nn.Module | str | os.PathLike, images_dir: str | os.PathLike,
                   out_dir: str | os.PathLike, *, device="auto", batch_size: int = 16,
                   progress: bool = False, short_side: int = SHORT_SIDE) -> list[Path]:
    """Write ``out_dir/<stem>.png``: 8-bit probability maps (v = round(255 p)) at each input's size; the
    network sees the image at shorter side ``short_side``."""
    check_short_side(short_side)
    model, device = model_on(model, device)  # a bad --model is reported before a bad --images
    images = files_by_stem(Path(images_dir), "images")
    if not images:
        raise BenchmarkError(f"no images in {str(images_dir)!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    bar = _progress(len(images), "predict") if progress else None
    sizes: dict[str, tuple[int, int]] = {}

    def to_image(item):
        im = _load_rgb(item[1])
        sizes[item[0]] = (im.size[1], im.size[0])
        return im

    with _EvalMode(model, device):
        for batch in _batches(sorted(images.items()), batch_size, to_image, short_side):
            xs = torch.stack([x for _, x in batch])
            probs = predict_batch(model, xs, [sizes[stem] for (stem, _), _ in batch], device)
            for ((stem, _), _), p in zip(batch, probs):
                buf = io.BytesIO()
                Image.fromarray(np.rint(p * 255.0).astype(np.uint8), mode="L").save(buf, format="PNG")
                target = out / f"{stem}.png"
                atomic_write(target, buf.getvalue())
                written.append(target)
                del sizes[stem]
            if bar is not None:
                bar.update(len(batch))
    if bar is not None:
        bar.close()
    return written


def _read_prediction(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            mode = im.mode
            arr = np.asarray(im)
    except (OSError, SyntaxError) as e:
        raise BenchmarkError(f"cannot read prediction {path}: {e}") from None
    if mode == "L":
        return arr
    if mode == "RGB" and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all():
        return np.ascontiguousarray(arr[..., 0])
    raise BenchmarkError(f"prediction {path.name} is a {mode!r} image; expected an 8-bit gray PNG "
                         f"holding p = value/255")


def evaluate_predictions(pred_dir: str | os.PathLike, mask_dir: str | os.PathLike,
                         pysod: bool | None = None) -> dict:
    """Score saved probability maps (8-bit gray PNG, p = v/255) against masks matched by stem.

    Every mask needs a prediction of the same stem and size; masks are
    binarised at >= 128 (pysodmetrics receives the raw mask and applies its own > 128).
    """
    masks = files_by_stem(Path(mask_dir), "masks")
    preds = files_by_stem(Path(pred_dir), "predictions")
    if not masks:
        raise BenchmarkError(f"no masks in {str(mask_dir)!r}")
    missing = [s for s in masks if s not in preds]
    if missing:
        raise BenchmarkError(f"no prediction for mask {masks[missing[0]].name!r} in {str(pred_dir)!r}"
                             + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    metrics = SegmentationMetrics(pysod=pysod)
    for stem, mpath in masks.items():
        try:
            with Image.open(mpath) as mk:
                raw = np.asarray(mk.convert("L"))
        except (OSError, SyntaxError) as e:
            raise BenchmarkError(f"cannot read mask {mpath}: {e}") from None
        pred = _read_prediction(preds[stem])
        if pred.shape != raw.shape:
            raise BenchmarkError(f"prediction {preds[stem].name} is {pred.shape[1]}x{pred.shape[0]} but mask "
                                 f"{mpath.name} is {raw.shape[1]}x{raw.shape[0]}; save predictions at the "
                                 f"mask's size")
        metrics.update(pred, raw >= 128, gt_uint8=raw)
    out = metrics.compute()
    out["unmatched_predictions"] = len(set(preds) - set(masks))
    return out
