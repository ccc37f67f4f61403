"""Teacher masks and one self-training round, measured on the `shapes` test world (docs/self-training.md).

    OMP_NUM_THREADS=1 python benchmarks/self_training_study.py --out /tmp/st --json /tmp/st/result.json
    python benchmarks/self_training_study.py --n 120 --steps 3 --width 4 --batch 8 --test-n 10 --out /tmp/st-smoke

Every step is one of the project's commands (printed, and appended to OUT/commands.sh):

  1. ``factory testworld export`` (OUT/test: the evaluation photographs with ground truth) and
     ``factory generate`` (OUT/gan: z ~ N(0, I)); ``factory filter --max-fg 0.5 --histogram reference``
     (OUT/paper.json, the paper's filters);
  2. round 1: ``trainers train --data paper.json`` (GAN masks);
  3. relabel with round 1's U-Net: ``trainers relabel`` (OUT/sS/maps), ``factory relabel`` (OUT/sS/relabelled),
     ``factory filter --where "teacher_iou >= T"`` (OUT/sS/agree.json, agree2.json);
  4. round 2, from scratch with the same recipe and seed: (a) ``--mask-source teacher``, (b) the GAN masks of
     agree.json (teacher_iou >= 0.5), (b') of agree2.json (>= 0.8), (c) ``--mask-source intersection``;
  5. each run scored on OUT/test at the images' own 64 px, and on PASCAL-S-120 (../shared/data/pascal-s-120,
     skipped when absent) at shorter side 64 (the training scale) and with `trainers eval`'s protocol (128).

The training-mask IoU is the mean, over exactly the rows each run trains on (hold-out removed), of the IoU of
its training mask with the world's true mask (regenerated from each sample's stored latent). Commands run
in this process through their click entry points; a rerun with the same --out reuses finished runs.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from ablation import Runner, machine  # noqa: E402  (the same command runner and machine record)

HOLDOUT_PERMILLE = 10
PASCAL = REPO.parent / "shared" / "data" / "pascal-s-120"
VARIANTS = (  # name, run folder, data (relative to the seed folder), --mask-source, description
    ("round 1", "round1", "../paper.json", "mask", "GAN masks, paper filters"),
    ("round 2 (a) teacher", "r2-teacher", "relabelled", "teacher", "round 1's masks (p >= 0.5)"),
    ("round 2 (b) agreement", "r2-agree", "agree.json", "mask", "GAN masks where teacher_iou >= {agreement}"),
    ("round 2 (b') agreement", "r2-agree2", "agree2.json", "mask", "GAN masks where teacher_iou >= {agreement2}"),
    ("round 2 (c) intersection", "r2-intersection", "relabelled", "intersection", "GAN mask AND teacher mask"),
)


def train_once(run: Runner, data: Path, out: Path, *, args, mask_source: str, seed: int) -> None:
    if (out / "card.json").exists():
        print(f"# reusing {out}")
        return
    if out.exists():
        shutil.rmtree(out)
    run("trainers", ["train", "--data", str(data), "--out", str(out), "--mask-source", mask_source,
                     "--steps", str(args.steps), "--lr-step", str(args.steps * 2 // 3), "--batch-size", str(args.batch),
                     "--width", str(args.width), "--seed", str(seed), "--holdout-permille", str(HOLDOUT_PERMILLE),
                     "--workers", "0", "--device", args.device, "--checkpoint-every", "0", "--val-every", "0",
                     "--no-progress"])


def scored(run_dir: Path, kind: str, root: Path, *, short: int | None, device: str) -> dict:
    """maxF / IoU / accuracy with each image fed at shorter side ``short`` (None: its own size); cached in the run."""
    cache = run_dir / "study-eval.json"
    done = json.loads(cache.read_text()) if cache.exists() else {}
    name = f"{kind}:{root}:{short}"
    if name not in done:
        done[name] = score(run_dir, kind, root, short=short, device=device)
        cache.write_text(json.dumps(done, indent=1))
    return done[name]


def score(run_dir: Path, kind: str, root: Path, *, short: int | None, device: str) -> dict:
    import torch

    from trainers.device import resolve_device
    from trainers.eval.evaluate import image_to_input, predict_batch
    from trainers.eval.layouts import open_benchmark
    from trainers.eval.metrics import SegmentationMetrics
    from trainers.model.checkpoint import load_model

    dev = resolve_device(device)
    model = load_model(run_dir, dev)
    metrics = SegmentationMetrics(pysod=False)
    for s in open_benchmark(kind, root):
        x = image_to_input(s.image, short=short or min(s.image.size))
        with torch.no_grad():
            p = predict_batch(model, x[None], [s.gt.shape], dev)[0]
        metrics.update(p, s.gt)
    m = metrics.compute()
    return {k: m[k] for k in ("maxF", "IoU", "accuracy", "n_images")}


def training_mask_iou(url: Path, mask_source: str, generator) -> dict:
    """Mean IoU with the true mask of the training masks ``trainers train`` uses (hold-out removed)."""
    import io

    import torch
    from PIL import Image

    from factory import format as fmt
    from trainers.data.stream import open_index, read_shard

    index = open_index(str(url), split="train", holdout_permille=HOLDOUT_PERMILLE, mask_source=mask_source)
    exts = (*index.mask_members(), fmt.EXT_LATENT)
    ious = []
    for sid in np.unique(index.shards):
        members = read_shard(index.shard_info[int(sid)], set(index.rows[index.shards == sid].tolist()), exts)
        rows = sorted(members)
        z = torch.from_numpy(np.stack([np.load(io.BytesIO(members[r][fmt.EXT_LATENT]), allow_pickle=False)
                                       for r in rows]).astype(np.float32))
        truth = generator.true_mask(z).numpy()
        for r, gt in zip(rows, truth):
            fg = None
            for name in index.mask_members():
                a = np.asarray(Image.open(io.BytesIO(members[r][name])).convert("L"))
                this = a >= fmt.TEACHER_FG_MIN if name == fmt.EXT_TEACHER else a > 127
                fg = this if fg is None else fg & this
            union = (fg | gt).sum()
            ious.append((fg & gt).sum() / union if union else 1.0)
    return {"train_samples": len(index), "train_mask_iou": float(np.mean(ious))}


def one_seed(run: Runner, args, seed: int, generator) -> dict:
    out = Path(args.out)
    sd = out / f"s{seed}"
    sd.mkdir(parents=True, exist_ok=True)
    _, folder, data, source, _ = VARIANTS[0]
    train_once(run, sd / data, sd / folder, args=args, mask_source=source, seed=seed)
    if not (sd / "maps" / "maps.json").exists():
        run("trainers", ["relabel", "--model", str(sd / "round1"), "--data", str(out / "paper.json"),
                         "--out", str(sd / "maps"), "--device", args.device])
    run("factory", ["relabel", str(out / "paper.json"), "--maps", str(sd / "maps"), "--out", str(sd / "relabelled")])
    run("factory", ["verify", str(sd / "relabelled")])
    for view, thr in (("agree.json", args.agreement), ("agree2.json", args.agreement2)):
        run("factory", ["filter", str(sd / "relabelled"), "--where", f"teacher_iou >= {thr}",
                        "--out", str(sd / view), "--overwrite"])
    for _, folder, data, source, _ in VARIANTS[1:]:
        train_once(run, sd / data, sd / folder, args=args, mask_source=source, seed=seed)
    rows = []
    runs = {name: sd / folder for name, folder, *_ in VARIANTS}
    for (name, _, data, source, desc) in VARIANTS:
        t0 = time.perf_counter()
        row = {"run": name, "data": desc.format(**vars(args)), "mask_source": source,
               **training_mask_iou((sd / data).resolve(), source, generator),
               "test": scored(runs[name], "ecssd", out / "test", short=None, device=args.device)}
        if (PASCAL / "images").is_dir():
            row["pascal64"] = scored(runs[name], "folder", PASCAL, short=64, device=args.device)
            row["pascal128"] = scored(runs[name], "folder", PASCAL, short=128, device=args.device)
        row["card"] = json.loads((runs[name] / "card.json").read_text())["training"]["this_segment"]
        row["eval_seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"seed": seed, "rows": rows}


def f3(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def markdown(result: dict) -> str:
    head = ("| seed | run | training masks | train samples | train-mask IoU vs truth | test maxFβ | test IoU | "
            "PASCAL-S-120 @64 maxFβ | IoU | PASCAL-S-120 @128 maxFβ | IoU |\n|" + "---|" * 11 + "\n")
    lines = []
    for s in result["seeds"]:
        for r in s["rows"]:
            p64, p128 = r.get("pascal64", {}), r.get("pascal128", {})
            lines.append(f"| {s['seed']} | {r['run']} | {r['data']} | {r['train_samples']} | {f3(r['train_mask_iou'])} | "
                         f"{f3(r['test']['maxF'])} | {f3(r['test']['IoU'])} | {f3(p64.get('maxF'))} | "
                         f"{f3(p64.get('IoU'))} | {f3(p128.get('maxF'))} | {f3(p128.get('IoU'))} |")
    return head + "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--json", default=None)
    ap.add_argument("--n", type=int, default=3000, help="generated candidates")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--steps", type=int, default=240)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--agreement", type=float, default=0.5, help="round 2 (b): teacher_iou >= this")
    ap.add_argument("--agreement2", type=float, default=0.8, help="round 2 (b'): teacher_iou >= this")
    ap.add_argument("--test-n", type=int, default=300)
    ap.add_argument("--test-seed", type=int, default=123)
    ap.add_argument("--device", default="auto")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = Runner(out / "commands.sh", subprocess_mode=False)
    t0 = time.perf_counter()
    if not (out / "test" / "testworld.json").exists():
        run("factory", ["testworld", "export", "--n", str(args.test_n), "--seed", str(args.test_seed),
                        "--resolution", str(args.resolution), "--out", str(out / "test")])
    run("factory", ["generate", "--generator", "shapes", "--resolution", str(args.resolution), "--n", str(args.n),
                    "--shard-size", "500", "--workers", "0", "--out", str(out / "gan")])
    run("factory", ["filter", str(out / "gan"), "--max-fg", "0.5", "--histogram", "reference",
                    "--out", str(out / "paper.json"), "--overwrite"])
    from factory.generators import load_generator

    generator = load_generator("shapes", resolution=args.resolution, dim_z=120, device="cpu", seed=0)
    result = {"args": vars(args), "machine": machine(), "seeds": []}
    for seed in args.seeds:
        result["seeds"].append(one_seed(run, args, seed, generator))
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    result["markdown"] = markdown(result)
    print(result["markdown"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
