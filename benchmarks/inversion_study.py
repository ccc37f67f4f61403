"""Issue 16 on the `shapes` world: how good is GAN inversion, and how much of the embeddings' gain does it keep?

    OMP_NUM_THREADS=1 python benchmarks/inversion_study.py --out /tmp/invstudy --json inversion.json
    python benchmarks/inversion_study.py --photos 8 --test-n 8 --n 40 --steps 2 --inv-steps 3 --out /tmp/s  # smoke

Every step is a project command (printed and appended to OUT/commands.sh):

  1. ``factory testworld export`` twice: OUT/photos (the "target dataset": photographs whose true
     latents are OUT/photos/embeddings.npy) and OUT/test (evaluation photographs, another seed);
  2. ``factory embeddings import OUT/photos/embeddings.npy --name study-true`` (a: the truth) and
     ``factory embeddings invert --images OUT/photos/images`` twice (b: --prior shell, as
     study-inv; b2: --prior gaussian, the default, a MAP estimate, as study-inv-map);
     latent recovery (cosine, relative error; in all of z and in the 81 coordinates the world's
     images depend on) and reconstruction PSNR are read back from the store;
  3. ``factory generate`` four times, same --seed and --n: --embeddings study-true, study-inv,
     study-inv-map, and z ~ N(0, I) (c), all with --z-noise ALPHA;
  4. ``trainers train`` on each with one recipe and seed; ``trainers eval --dataset ecssd=OUT/test``
     (the paper's protocol: shorter side 128), and the diagnostic of docs/ablation.md that feeds the
     test images at their own size (``native_eval``, benchmarks/ablation.py).

Then ``kept = (b - c) / (a - c)`` per metric. ``--faces K`` also inverts K dcgan faces (the installed
gan-face-generate weights) whose z is known (with --prior shell, as measured in docs/embeddings.md)
and reports recovery and PSNR.
Rerunning with the same --out reuses exports, stores and trained runs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def run(out: Path, *args: str) -> float:
    """Run ``python -m PROG.cli ARGS`` (PROG = args[0]); append it to OUT/commands.sh; return seconds."""
    line = shlex.join(args)
    with open(out / "commands.sh", "a") as f:
        f.write(line + "\n")
    print(f"$ {line}", flush=True)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", f"{args[0]}.cli", *args[1:]], check=False)
    if r.returncode:
        raise SystemExit(f"inversion_study: command failed (exit {r.returncode}): {line}")
    return time.perf_counter() - t0


def recovery(z: np.ndarray, truth: np.ndarray, basis: np.ndarray | None = None) -> dict:
    """Mean cosine and mean relative L2 error of rows of z against the truth (optionally in a basis)."""
    if basis is not None:
        z, truth = z @ basis, truth @ basis
    cos = (z * truth).sum(1) / np.linalg.norm(z, axis=1) / np.linalg.norm(truth, axis=1)
    rel = np.linalg.norm(z - truth, axis=1) / np.linalg.norm(truth, axis=1)
    return {"cosine": float(cos.mean()), "rel_error": float(rel.mean())}


def shapes_recovery(name: str, truth_file: Path, resolution: int) -> dict:
    from factory.generators import load_generator
    from factory.generators.shapes import COORD, N_COORDS
    from factory.generators.shapes.export import EMBEDDING_SHIFTS
    from factory.latents import embeddings as emb

    z, _ = emb.read_store(name)
    truth = np.load(truth_file, allow_pickle=False)
    gen = load_generator("shapes", resolution=resolution)
    psnr = np.array(emb.read_rows(name)["psnr"])
    cz, ct = z @ gen.basis, truth @ gen.basis
    shifted = {k: {"corr": float(np.corrcoef(cz[:, COORD[k]], ct[:, COORD[k]])[0, 1]),
                   "mean_inverted": float(cz[:, COORD[k]].mean()), "mean_true": float(ct[:, COORD[k]].mean())}
               for k in EMBEDDING_SHIFTS}
    return {"all_z": recovery(z, truth), "image_coords": recovery(z, truth, gen.basis[:, :N_COORDS]),
            "shifted_coords": shifted,
            "psnr_mean": float(psnr.mean()), "psnr_p10_p50_p90": [float(v) for v in np.percentile(psnr, [10, 50, 90])]}


def faces(out: Path, k: int, steps: int, restarts: int) -> dict:
    """Invert k dcgan faces with known z; recovery and PSNR."""
    import torch
    from PIL import Image

    from factory.generators import load_generator, to_uint8
    from factory.generators.dcgan import packaged_face_weights
    from factory.latents import embeddings as emb

    weights = packaged_face_weights()
    if weights is None:
        return {"skipped": "gan-face-generate is not installed"}
    gen = load_generator("dcgan", weights=str(weights))
    z = np.random.default_rng(2024).standard_normal((k, gen.dim_z)).astype(np.float32)
    d = out / "faces" / "images"
    d.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        img = to_uint8(gen(torch.from_numpy(z))).numpy()
    for i in range(k):
        Image.fromarray(img[i]).save(d / f"{i:04d}.png")
    sec = None
    if not emb.stored("study-faces"):
        sec = run(out, "factory", "embeddings", "invert", "--generator", "dcgan", "--weights", str(weights),
                  "--images", str(d), "--name", "study-faces", "--steps", str(steps), "--restarts", str(restarts),
                  "--batch", str(k), "--prior", "shell", "--quiet")
    zi, _ = emb.read_store("study-faces")
    psnr = np.array(emb.read_rows("study-faces")["psnr"])
    return {"n": k, "steps": steps, "restarts": restarts, "seconds": sec, **recovery(zi, z),
            "psnr_mean": float(psnr.mean()), "psnr_p10_p50_p90": [float(v) for v in np.percentile(psnr, [10, 50, 90])]}


def flops_per_image_step(gen) -> int:
    """FLOPs that torch counts (matmuls, convolutions) for one image's forward + backward in z."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    z = torch.randn(1, gen.dim_z, device=gen.device, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        gen(z).square().sum().backward()  # autograd.grad does not run under FlopCounterMode
    return int(counter.get_total_flops())


def flops(resolution: int) -> dict:
    from factory.generators import load_generator
    from factory.generators.dcgan import packaged_face_weights

    out = {f"shapes-{resolution}": flops_per_image_step(load_generator("shapes", resolution=resolution))}
    w = packaged_face_weights()
    if w is not None:
        out["dcgan-64"] = flops_per_image_step(load_generator("dcgan", weights=str(w)))
    try:
        out["bigbigan-128"] = flops_per_image_step(load_generator("bigbigan", random_weights=True))
    except Exception as e:  # noqa: BLE001 - a missing optional model only drops its row
        out["bigbigan-128"] = f"not measured: {e}"
    return out


def train_eval(out: Path, tag: str, a: argparse.Namespace) -> dict:
    import pyarrow.parquet as pq

    data, rdir = out / f"data-{tag}", out / f"run-{tag}"
    if not (rdir / "card.json").exists():
        run(out, "trainers", "train", "--data", str(data), "--out", str(rdir), "--steps", str(a.steps),
            "--lr-step", str(2 * a.steps // 3), "--batch-size", str(a.batch), "--width", str(a.width),
            "--seed", "0", "--workers", "0", "--device", "cpu", "--checkpoint-every", "0", "--val-every", "0",
            "--no-progress")
    js = out / f"eval-{tag}.json"
    run(out, "trainers", "eval", "--model", str(rdir), "--dataset", f"ecssd={out / 'test'}", "--json", str(js),
        "--device", "cpu", "--no-pysod")
    res = json.loads(js.read_text())
    iou = np.concatenate([pq.read_table(p, columns=["true_iou"]).column(0).to_numpy()
                          for p in sorted((data / "index").glob("*.parquet"))])
    # benchmarks/ablation.py (beside this script): the same native-size diagnostic as docs/ablation.md
    from ablation import native_eval

    native = {k: v for k, v in native_eval(rdir, out / "test", "cpu").items() if k in METRICS}
    return {"eval": res, "native_eval": native, "train_mask_true_iou": float(iou.mean())}


METRICS = ("maxF", "IoU", "accuracy", "MAE")


def kept(result: dict) -> dict:
    """(b - c) / (a - c) per metric: the share of the true embeddings' gain that each inversion keeps."""
    tags = ("a_true", "b_inverted", "b2_inverted_map", "c_gaussian")
    ev = {t: {**result[t]["eval"]["ECSSD"], **{f"native_{k}": v for k, v in result[t]["native_eval"].items()},
              "train_mask_true_iou": result[t]["train_mask_true_iou"]} for t in tags}
    out = {}
    for b_tag in ("b_inverted", "b2_inverted_map"):
        for m in (*METRICS, *(f"native_{k}" for k in METRICS), "train_mask_true_iou"):
            a, b, c = (ev[t][m] for t in ("a_true", b_tag, "c_gaussian"))
            out[f"{b_tag}/{m}"] = (b - c) / (a - c) if abs(a - c) > 1e-9 else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--photos", type=int, default=256, help="target-dataset photographs (inverted)")
    ap.add_argument("--test-n", type=int, default=300)
    ap.add_argument("--n", type=int, default=1500, help="candidates per generated dataset")
    ap.add_argument("--z-noise", type=float, default=0.0)
    ap.add_argument("--inv-steps", type=int, default=150)
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--steps", type=int, default=240, help="U-Net optimizer steps")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--faces", type=int, default=0, help="also invert this many dcgan faces")
    a = ap.parse_args()
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FACTORY_HOME", str(out / "home"))
    R = str(a.resolution)
    times = {}
    for d, n, seed in (("photos", a.photos, 7), ("test", a.test_n, 123)):
        if not (out / d / "testworld.json").exists():
            run(out, "factory", "testworld", "export", "--n", str(n), "--seed", str(seed), "--resolution", R,
                "--out", str(out / d))
    run(out, "factory", "embeddings", "import", str(out / "photos" / "embeddings.npy"), "--name", "study-true",
        "--overwrite")
    from factory.latents import embeddings as emb

    for name, prior in (("study-inv", "shell"), ("study-inv-map", "gaussian")):
        if not emb.stored(name):
            times[f"invert_{prior}_s"] = run(
                out, "factory", "embeddings", "invert", "--generator", "shapes", "--resolution", R,
                "--images", str(out / "photos" / "images"), "--name", name, "--steps", str(a.inv_steps),
                "--restarts", str(a.restarts), "--prior", prior, "--prior-weight", "0.5", "--quiet")
    result = {"config": vars(a) | {"out": str(out), "json": str(a.json)}, "times": times,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                         f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}",
              "inversion": {prior: shapes_recovery(name, out / "photos" / "embeddings.npy", a.resolution)
                            for name, prior in (("study-inv", "shell"), ("study-inv-map", "gaussian"))}}
    rows = {"a_true": ["--embeddings", "study-true"], "b_inverted": ["--embeddings", "study-inv"],
            "b2_inverted_map": ["--embeddings", "study-inv-map"], "c_gaussian": []}
    for tag, extra in rows.items():
        if not (out / f"data-{tag}" / "manifest.json").exists():
            run(out, "factory", "generate", "--resolution", R, "--n", str(a.n), "--seed", "0", "--z-noise",
                str(a.z_noise), "--workers", "0", "--quiet", "--out", str(out / f"data-{tag}"), *extra)
        result[tag] = train_eval(out, tag, a)
    result["kept"] = kept(result)
    if a.faces:
        result["faces"] = faces(out, a.faces, a.inv_steps, a.restarts)
    result["flops_per_image_step"] = flops(a.resolution)
    print(json.dumps(result, indent=1, default=str))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
