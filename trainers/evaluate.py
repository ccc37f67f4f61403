"""The evaluation protocol: predict, resize back, score; prediction folders; the benchmark table.

Protocol of the paper (shared/reference/benchmarks.md):
  - the image is resized (bilinear) so its shorter side is 128, aspect kept
    (400x300 -> 171x128), normalised to [-1, 1] and fed to the U-Net;
  - sigmoid(logit) is upsampled bilinearly (align_corners=False) to the ground
    truth's size and scored there with trainers.metrics;
  - CUB and Flowers arrive already centre-cropped to 128x128 (benchmarks.py).
Consecutive samples with the same network input size are batched together;
BatchNorm runs in eval mode, so batching never changes a prediction.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from trainers._io import atomic_write as _atomic_write
from trainers import TrainersError
from trainers.benchmarks import (DISPLAY, Benchmark, BenchmarkError, Sample, _files_by_stem, discover,
                                 open_benchmark)
from trainers.metrics import SegmentationMetrics

SHORT_SIDE = 128

# Published acc / IoU / maxFβ (shared/reference/benchmarks.md, Tables 1, 2 and 4 of the paper and
# later work); None = not reported.
PAPER_DATASETS = ("ECSSD", "DUTS-TE", "DUT-OMRON", "CUB", "Flowers")
PUBLISHED: list[dict] = [
    {"method": "BigBiGAN, z ~ N(0,I) (paper)",
     "scores": {"ECSSD": (.899, .672, .782), "DUTS-TE": (.878, .498, .608), "DUT-OMRON": (.856, .453, .549),
                "CUB": (.930, .683, .794), "Flowers": (.765, .540, .760)}},
    {"method": "E-BigBiGAN (paper)",
     "scores": {"ECSSD": (.906, .684, .797), "DUTS-TE": (.882, .511, .624), "DUT-OMRON": (.860, .464, .563),
                "CUB": (.940, .710, .834), "Flowers": (.904, .804, .878)}},
    {"method": "Paper Table 4: Base", "scores": {"ECSSD": (.859, .626, .737)}},
    {"method": "Paper Table 4: +ImageNet embeddings", "scores": {"ECSSD": (.874, .657, .773)}},
    {"method": "Paper Table 4: +size filter", "scores": {"ECSSD": (.900, .670, .781)}},
    {"method": "Paper Table 4: +histogram filter", "scores": {"ECSSD": (.900, .670, .779)}},
    {"method": "Paper Table 4: +CC filter", "scores": {"ECSSD": (.906, .684, .797)}},
    {"method": "Melas-Kyriazi et al. ICLR'22 (BigBiGAN, optimised direction)",
     "scores": {"ECSSD": (.915, .713, None), "DUTS-TE": (.893, .528, None), "DUT-OMRON": (.883, .509, None),
                "CUB": (.921, .664, .783), "Flowers": (.796, .541, .723)}},
    {"method": "TokenCut (DINO ViT-S/16)",
     "scores": {"ECSSD": (.918, .712, .803), "DUTS-TE": (.903, .576, .672), "DUT-OMRON": (.880, .533, .600)}},
    {"method": "FOUND (DINO ViT-S/8)",
     "scores": {"ECSSD": (.949, .807, None), "DUTS-TE": (.938, .645, None), "DUT-OMRON": (.912, .578, None)}},
]


def network_input_size(width: int, height: int, short: int = SHORT_SIDE) -> tuple[int, int]:
    """(w, h) with the shorter side = ``short`` and the aspect kept (rounded)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"empty image {width}x{height}")
    if width <= height:
        return short, max(1, round(height * short / width))
    return max(1, round(width * short / height)), short


def image_to_input(image: Image.Image, short: int = SHORT_SIDE) -> torch.Tensor:
    """PIL image -> float tensor [3, h, w] in [-1, 1] at shorter side ``short`` (bilinear)."""
    image = image.convert("RGB")
    size = network_input_size(*image.size, short=short)
    if size != image.size:
        image = image.resize(size, Image.BILINEAR)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)
    return x / 127.5 - 1.0


@torch.inference_mode()
def predict_batch(model: torch.nn.Module, inputs: torch.Tensor, out_sizes: list[tuple[int, int]],
                  device: torch.device) -> list[np.ndarray]:
    """Inputs [B, 3, h, w] -> probability maps resized (bilinear) to each (H, W) in ``out_sizes``."""
    logits = model(inputs.to(device))
    if logits.shape[1] != 1:
        raise ValueError(f"the model must output 1 logit channel, got {logits.shape[1]}")
    probs = torch.sigmoid(logits.float())
    out = []
    for i, (h, w) in enumerate(out_sizes):
        p = probs[i:i + 1]
        if p.shape[-2:] != (h, w):
            p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
        out.append(p[0, 0].clamp_(0.0, 1.0).to("cpu", torch.float64).numpy())
    return out


def _batches(samples: Iterable, batch_size: int, to_image):
    """Group consecutive items whose network input has the same size."""
    buf, key = [], None
    for item in samples:
        x = image_to_input(to_image(item))
        if buf and (x.shape != key or len(buf) >= batch_size):
            yield buf
            buf = []
        buf.append((item, x))
        key = x.shape
    if buf:
        yield buf


def _resolve_device(device) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class _EvalMode:
    def __init__(self, model, device):
        self.model, self.device = model, device

    def __enter__(self):
        self.was_training = self.model.training
        self.model.to(self.device).eval()
        return self.model

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def evaluate_model(model: torch.nn.Module, dataset: Benchmark | Iterable[Sample], device="auto",
                   batch_size: int = 16, pysod: bool | None = None, limit: int | None = None,
                   progress: bool = False) -> dict:
    """Score ``model`` on a benchmark with the paper's protocol; returns SegmentationMetrics.compute()."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = _resolve_device(device)
    metrics = SegmentationMetrics(pysod=pysod)
    samples = iter(dataset)
    if limit is not None:
        samples = (s for i, s in zip(range(limit), samples))
    bar = None
    if progress:
        from tqdm import tqdm

        total = len(dataset) if hasattr(dataset, "__len__") else None
        bar = tqdm(total=min(total, limit) if (total and limit) else (total or limit), unit="img",
                   desc=getattr(dataset, "name", "eval"))
    with _EvalMode(model, device):
        for batch in _batches(samples, batch_size, lambda s: s.image):
            xs = torch.stack([x for _, x in batch])
            probs = predict_batch(model, xs, [s.gt.shape for s, _ in batch], device)
            for (s, _), p in zip(batch, probs):
                metrics.update(p, s.gt)
            if bar is not None:
                bar.update(len(batch))
    if bar is not None:
        bar.close()
    return metrics.compute()




def write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON atomically (temp file + os.replace)."""
    path = Path(path)
    if path.parent and not path.parent.is_dir():
        raise TrainersError(f"cannot write {path}: folder {str(path.parent)!r} does not exist")
    _atomic_write(path, (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode())


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def predict_folder(model: torch.nn.Module, images_dir: str | os.PathLike, out_dir: str | os.PathLike,
                   device="auto", batch_size: int = 16, progress: bool = False) -> list[Path]:
    """Write ``out_dir/<stem>.png``: 8-bit probability maps (v = round(255 p)) at each input's size."""
    images = _files_by_stem(Path(images_dir), "images")
    if not images:
        raise BenchmarkError(f"no images in {str(images_dir)!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = _resolve_device(device)

    def load(item):
        stem, path = item
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (OSError, SyntaxError) as e:
            raise BenchmarkError(f"cannot read image {path}: {e}") from None

    written = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(images), unit="img", desc="predict")
    with _EvalMode(model, device):
        cache: dict[str, tuple[int, int]] = {}

        def to_image(item):
            im = load(item)
            cache[item[0]] = (im.size[1], im.size[0])
            return im

        for batch in _batches(sorted(images.items()), batch_size, to_image):
            xs = torch.stack([x for _, x in batch])
            probs = predict_batch(model, xs, [cache[stem] for (stem, _), _ in batch], device)
            for ((stem, _), _), p in zip(batch, probs):
                buf = io.BytesIO()
                Image.fromarray(np.rint(p * 255.0).astype(np.uint8), mode="L").save(buf, format="PNG")
                target = out / f"{stem}.png"
                _atomic_write(target, buf.getvalue())
                written.append(target)
                del cache[stem]
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
    masks = _files_by_stem(Path(mask_dir), "masks")
    preds = _files_by_stem(Path(pred_dir), "predictions")
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


# ----------------------------------------------------------------------------- benchmark table


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.3f}".lstrip("0") if v < 1 else f"{v:.3f}"


def _cell(scores) -> str:
    if scores is None:
        return ""
    return " / ".join(_fmt(v) for v in scores)


def benchmark_markdown(results: list[dict], label: str = "Ours") -> str:
    """Markdown: paper rows and ours (acc / IoU / maxFβ), then our full metrics per dataset."""
    names = list(PAPER_DATASETS) + [r["name"] for r in results if r["name"] not in PAPER_DATASETS]
    ours = {r["name"]: (r["accuracy"], r["IoU"], r["maxF"]) for r in results}
    lines = ["acc / IoU / maxFβ (β² = 0.3), paper protocol; published rows from shared/reference/benchmarks.md",
             "", "| Method | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for row in PUBLISHED:
        lines.append(f"| {row['method']} | " + " | ".join(_cell(row["scores"].get(n)) for n in names) + " |")
    lines.append(f"| **{label}** | " + " | ".join(_cell(ours.get(n)) if n in ours else "not run"
                                                   for n in names) + " |")
    lines += ["", "| Dataset | images | acc | IoU | maxFβ | MAE | pysod_maxF | pysod_Smeasure | pysod_maxE "
              "| pysod_MAE |", "|---" * 10 + "|"]
    for r in results:
        vals = [r.get(k) for k in ("accuracy", "IoU", "maxF", "MAE", "pysod_maxF", "pysod_Smeasure",
                                   "pysod_maxE", "pysod_MAE")]
        lines.append(f"| {r['name']} | {r['n_images']} | " + " | ".join(_fmt(v) for v in vals) + " |")
    return "\n".join(lines) + "\n"


def benchmark(model: torch.nn.Module, root: str | os.PathLike, device="auto", batch_size: int = 16,
              pysod: bool | None = None, label: str = "Ours", progress: bool = False,
              limit: int | None = None) -> dict:
    """Evaluate on every benchmark discovered under ``root``; returns {datasets, published, markdown}."""
    found = discover(root)
    if not found:
        raise BenchmarkError(f"no benchmark found under {str(root)!r}; expected the layouts of "
                             f"{', '.join(DISPLAY)} (see shared/reference/benchmarks.md)")
    results, used = [], set()
    for kind, path in found:
        ds = open_benchmark(kind, path)
        name = ds.name
        if name in used:
            name = f"{name} ({path})"
        used.add(name)
        m = evaluate_model(model, ds, device=device, batch_size=batch_size, pysod=pysod, progress=progress,
                           limit=limit)
        results.append({"name": name, "kind": kind, "path": str(path), **m})
    return {"root": str(root), "label": label, "datasets": results,
            "published": [{"method": r["method"], "scores": {k: dict(zip(("accuracy", "IoU", "maxF"), v))
                                                             for k, v in r["scores"].items()}}
                          for r in PUBLISHED],
            "markdown": benchmark_markdown(results, label)}
