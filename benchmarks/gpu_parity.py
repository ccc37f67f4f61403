"""Parity of the fast generator paths with fp32: mask pixels and filter decisions.

For the same latents, runs the full pipeline (G(z), G(z + r h), masks, CC cleanup,
statistics) with fp32 and each fast path, and reports the fraction of mask pixels
and of filter decisions (area, histogram, both) that agree. Uses the full-size
BigBiGAN with random weights (or --golden: the golden_small model and latents).

    python benchmarks/gpu_parity.py --device cuda --n 1024 --json parity.json
    python benchmarks/gpu_parity.py --device cpu --n 8 --small   # smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from factory.generate.compute import compute_batch
from factory.generators import load_generator  # noqa: E402


def run_path(options: dict, z: torch.Tensor, h: torch.Tensor, batch: int):
    gen = load_generator("bigbigan", **options)
    masks, decisions = [], []
    for i in range(0, z.shape[0], batch):
        zb = z[i : i + batch].to(gen.device)
        _, clean, _, st = compute_batch(gen, zb, h.to(gen.device), shift_r=5.0, mask_rule="luminance", max_fg=0.5)
        masks.append(clean.cpu())
        decisions.append(torch.stack([st["pass_area"], st["pass_hist_reference"], st["pass_hist_paper"]], 1).cpu())
    del gen
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return torch.cat(masks), torch.cat(decisions)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--small", action="store_true", help="golden-size config with random weights (CPU smoke test)")
    ap.add_argument("--golden", help="golden_small folder: its weights, config and latents")
    ap.add_argument("--paths", default="tf32,bf16,bf16+cl,bf16+cl+compile")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    base = {"device": args.device}
    if args.golden:
        base.update(weights=os.path.join(args.golden, "state_dict.safetensors"),
                    config=os.path.join(args.golden, "config.json"))
        z = torch.from_numpy(np.load(os.path.join(args.golden, "z.npy")))
        h = torch.from_numpy(np.load(os.path.join(args.golden, "shift_direction.npy")))
    else:
        base["random_weights"] = True
        if args.small:
            base["config"] = {"G_ch": 8, "dim_z": 24, "shared_dim": 16, "resolution": 128, "G_attn": "64"}
        dim_z = 24 if args.small else 120
        g = torch.Generator().manual_seed(1)
        z = torch.randn(args.n, dim_z, generator=g)
        h = torch.randn(dim_z, generator=g)
        h = h / h.norm()
    ref_masks, ref_dec = run_path(dict(base), z, h, args.batch)
    rows = []
    for name in args.paths.split(","):
        opts = dict(base)
        parts = name.split("+")
        opts["autocast"] = parts[0]
        if "cl" in parts:
            opts["channels_last"] = True
        if "compile" in parts:
            if args.device == "cpu":
                continue
            opts["compile"] = True
        masks, dec = run_path(opts, z, h, args.batch)
        rows.append({
            "path": name,
            "n": int(z.shape[0]),
            "mask_pixel_agreement": float((masks == ref_masks).float().mean()),
            "area_decision_agreement": float((dec[:, 0] == ref_dec[:, 0]).float().mean()),
            "hist_reference_decision_agreement": float((dec[:, 1] == ref_dec[:, 1]).float().mean()),
            "hist_paper_decision_agreement": float((dec[:, 2] == ref_dec[:, 2]).float().mean()),
            "keep_decision_agreement": float(((dec[:, 0] & dec[:, 1]) == (ref_dec[:, 0] & ref_dec[:, 1])).float().mean()),
        })
    out = {"device": args.device, "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
           "model": "golden_small" if args.golden else ("small random" if args.small else "BigBiGAN-128 random weights"),
           "fp32_keep_rate": float((ref_dec[:, 0] & ref_dec[:, 1]).float().mean()), "paths": rows}
    print("| path | n | mask pixels | area | hist (ref) | keep |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['path']} | {r['n']} | {r['mask_pixel_agreement']:.5f} | {r['area_decision_agreement']:.4f} | "
              f"{r['hist_reference_decision_agreement']:.4f} | {r['keep_decision_agreement']:.4f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
