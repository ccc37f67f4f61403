"""Encoding cost per candidate: how many CPU cores a GPU's output rate needs, per image codec.

    python benchmarks/encode_bench.py                      # shapes-world images + real photos if ../shared exists
    python benchmarks/encode_bench.py --photos DIR --rate 6000 --json out.json

One candidate's tar records are what the engine's encoder pool makes
(``encode_chunk``): the image in the chosen codec, the clean mask as PNG,
the latent .npy, the meta JSON and the tar headers. Inputs, all 128x128:

- ``shapes``: the shapes world's images and luminance masks;
- ``photos``: real photographs resized to 128 px (``--photos``, default
  ``../shared/data/pascal-s-120/images``) -- natural-image entropy, the case
  BigBiGAN's outputs resemble -- with ragged masks (a smoothed random field
  thresholded: many runs, a few blobs and speckle, like raw BigBiGAN masks).

For each (input, codec) it times chunks of 32 candidates on one core, repeats,
and prints the median ms per candidate, the bytes per sample, and the cores the
encoder pool needs to keep up with ``--rate`` candidates/s. It also times the
mask alone with the former encoding (zlib level 9, default strategy) to show
what the run-length strategy saves.
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from factory import format as fmt  # noqa: E402
from factory.generate.bench import cpu_name
from factory.generate.encode import encode_chunk, encode_mask_png
from factory.generate.plan import resolve_direction
from factory.generators import to_uint8

CODECS = {
    "png (level 0)": {"image": "png", "mask": "png", "png_level": 0},
    "png (level 1)": {"image": "png", "mask": "png", "png_level": 1},
    "png (level 6)": {"image": "png", "mask": "png", "png_level": 6},
    "webp lossless": {"image": "webp", "mask": "png", "lossless": True, "method": 0, "effort": 0},
    "jpeg q95 4:4:4": {"image": "jpeg", "mask": "png", "quality": 95, "subsampling": "4:4:4"},
}
CHUNK = 32


def shapes_inputs(n: int) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from factory.generators import load_generator
    from factory.masks import cc_cleanup, luminance_mask

    g = load_generator("shapes", resolution=128)
    h, _ = resolve_direction(g, None, "shapes")
    z = torch.randn(n, g.dim_z, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        img, sh_ = g(z), g(z + 5 * torch.as_tensor(h))
    clean = cc_cleanup(luminance_mask(img, sh_))[0]
    return to_uint8(img).numpy().copy(), clean.numpy()


def photo_inputs(folder: str, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    from PIL import Image
    from scipy import ndimage

    files = sorted(glob.glob(os.path.join(folder, "*.jpg")) + glob.glob(os.path.join(folder, "*.png")))[:n]
    if not files:
        return None
    imgs = np.stack([np.asarray(Image.open(f).convert("RGB").resize((128, 128), Image.BICUBIC)) for f in files])
    rng = np.random.default_rng(0)
    field = ndimage.gaussian_filter(rng.standard_normal((len(files), 128, 128)), (0, 6, 6))
    field = field / field.std() + 0.3 * rng.standard_normal(field.shape)
    return imgs, field > 0.2


def make_chunks(imgs, masks, codec) -> list[tuple]:
    n = imgs.shape[0]
    lat = np.random.default_rng(0).standard_normal((n, 120)).astype(np.float32)
    chunks = []
    for c0 in range(0, n, CHUNK):
        c1 = min(n, c0 + CHUNK)
        keys = [fmt.sample_key(r) for r in range(c0, c1)]
        metas = [{"key": k, "row": r, "shard": 0, "fg_ratio": float(masks[r].mean()), "pass_area": True,
                  "pass_hist_reference": True} for k, r in zip(keys, range(c0, c1))]
        chunks.append((keys, imgs[c0:c1], masks[c0:c1], None, lat[c0:c1], metas, codec))
    return chunks


def time_codecs(imgs, masks, reps: int) -> dict[str, tuple[float, float]]:
    """codec -> (median seconds per candidate, bytes per sample) of encode_chunk over the inputs.

    Passes are interleaved across codecs so that a noisy machine slows all of them alike."""
    chunks = {name: make_chunks(imgs, masks, codec) for name, codec in CODECS.items()}
    for c in chunks.values():
        encode_chunk(c[0])  # warm-up
    per: dict[str, list[float]] = {name: [] for name in CODECS}
    size = {}
    for _ in range(reps):
        for name, cs in chunks.items():
            t0 = time.perf_counter()
            size[name] = sum(len(encode_chunk(c)) for c in cs)
            per[name].append((time.perf_counter() - t0) / imgs.shape[0])
    return {name: (statistics.median(per[name]), size[name] / imgs.shape[0]) for name in CODECS}


def time_masks(masks, reps: int) -> dict:
    from PIL import Image

    def old(m):
        buf = io.BytesIO()
        Image.fromarray(m.astype(np.uint8) * 255, mode="L").save(buf, format="PNG", compress_level=9)
        return buf.getvalue()

    out = {}
    for name, fn in (("zlib 9 default strategy (before)", old), ("zlib 9 run-length (now)", encode_mask_png)):
        per = []
        for _ in range(reps):
            t0 = time.perf_counter()
            size = sum(len(fn(m)) for m in masks)
            per.append((time.perf_counter() - t0) / len(masks))
        out[name] = {"ms": round(statistics.median(per) * 1e3, 3), "bytes": round(size / len(masks))}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=96, help="candidates per input set (default 96)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rate", type=float, default=6000.0, help="candidates/s to size the encoder pool for")
    shared = os.environ.get("FACTORY_SHARED") or str(Path(__file__).resolve().parents[2] / "shared")
    ap.add_argument("--photos", default=os.path.join(shared, "data", "pascal-s-120", "images"),
                    help="folder of photographs (default: $FACTORY_SHARED or ../shared, data/pascal-s-120/images)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    inputs = {"shapes": shapes_inputs(args.n)}
    photos = photo_inputs(args.photos, args.n)
    if photos is not None:
        inputs["photos"] = photos
    else:
        print(f"(no photos in {args.photos}: shapes only)", file=sys.stderr)
    result = {"cpu": cpu_name(), "cores": os.cpu_count(), "rate": args.rate, "reps": args.reps, "rows": []}
    print(f"{result['cpu']}, one core; medians of {args.reps} passes; 128x128 candidates")
    print(f"{'input':8s} {'image codec':16s} {'ms/cand':>8s} {'KiB/sample':>10s} {'cores @ ' + str(int(args.rate)) + '/s':>14s}")
    for name, (imgs, masks) in inputs.items():
        for cname, (s, b) in time_codecs(imgs, masks, args.reps).items():
            row = {"input": name, "codec": cname, "ms_per_candidate": round(s * 1e3, 3),
                   "bytes_per_sample": round(b), "cores_needed": round(s * args.rate, 1)}
            result["rows"].append(row)
            print(f"{name:8s} {cname:16s} {s * 1e3:8.3f} {b / 1024:10.1f} {s * args.rate:14.1f}")
        result.setdefault("mask_png", {})[name] = m = time_masks(masks[:32], args.reps)
        print("         mask alone: " + "; ".join(f"{k} {v['ms']:.3f} ms, {v['bytes']} B" for k, v in m.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
