"""The paper's Table 4 ablation, measured on the `shapes` test world.

    python benchmarks/ablation.py                                   # R=64, N=3000, 300 steps, width 16, batch 32
    python benchmarks/ablation.py --n 60 --steps 3 --width 4 --batch 8 --test-n 10 --out /tmp/abl --json abl.json

Voynov, Morozov & Babenko (ICML 2021), Table 4, adds one ingredient per row and
retrains the U-Net each time (ECSSD, maxFβ / IoU / acc):

    row  name           training data                                                masks
    1    Base           z ~ N(0, I), every candidate                                 raw (no CC)
    2    +embeddings    z = E_i (+ alpha N(0, I)), every candidate                   raw
    3    +size          row 2 with fg_ratio_raw < 0.5                                raw
    4    +histogram     row 3 and the authors' histogram rule (pass_hist_reference)  raw
    5    +CC            row 2 with fg_ratio < 0.5 (after cleanup) and the histogram  cleaned (CC)

Every step is one of the project's commands (printed, and written to
OUT/commands.sh so they can be replayed by hand):

  1. ``factory testworld export`` twice: OUT/test (the evaluation "photographs",
     ECSSD layout) and OUT/train-embeddings (another seed; its embeddings.npy is
     the "encoder output on the training photographs" that rows 2-5 sample from;
     the test images are never an embedding source);
  2. ``factory generate`` twice (OUT/base: z ~ N(0, I); OUT/emb: --embeddings
     ... --z-noise ALPHA, the paper's alpha = 0 for ImageNet/ECSSD by default),
     both with --keep-raw-mask;
  3. ``factory filter`` once per row (a view; rows 1 and 2 have no predicate);
  4. ``trainers train`` once per row with one recipe: Adam, lr 1e-3, lr x 0.2 at
     2/3 of the steps (the paper's 8,000 of 12,000), same steps, width, batch,
     seed; --mask raw for rows 1-4, --mask clean for row 5;
  5. ``trainers eval --dataset ecssd=OUT/test`` (the paper's protocol: input at
     shorter side 128, maxFβ with β² = 0.3 over thresholds k/255, IoU and
     accuracy at 0.5, per image, averaged).

The table also gives, per row, the number of training samples (view minus the
trainer's 1 % hold-out) and the mean IoU of those training masks with the true
object mask (index columns true_iou_raw for raw masks, true_iou for clean).

--native-eval adds a diagnostic that is NOT the paper's protocol: the same
models scored with the test images fed at their own size (a 64 px model under
`trainers eval` sees 128 px inputs, objects twice as large as in training; see
docs/ablation.md). On a busy shared CPU run with OMP_NUM_THREADS=1.

By default the commands run in this process through their click entry points
(same parsing and code as the shell commands, without paying the torch import
ten times on a small CPU); --subprocess runs each as ``python -m factory.cli``
/ ``python -m trainers.cli``. Rerunning with the same --out reuses what is
done: exports and trained runs with the same settings are kept, generate
resumes, filter is a no-op; evaluation is always redone.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from factory.generate.bench import cpu_name

# Paper, Table 4 (ECSSD): maxFβ, IoU, accuracy.
PAPER = {
    "Base": (0.737, 0.626, 0.859),
    "+embeddings": (0.773, 0.657, 0.874),
    "+size": (0.781, 0.670, 0.900),
    "+histogram": (0.779, 0.670, 0.900),
    "+CC": (0.797, 0.684, 0.906),
}

MAX_FG = 0.5  # the paper's size threshold
HOLDOUT_PERMILLE = 10  # trainers train default; the hold-out is never trained on


def rows_spec() -> list[dict]:
    """The five rows: dataset, `factory filter` flags, mask member, index column scoring the masks."""
    size_raw = ["--where", f"fg_ratio_raw < {MAX_FG}"]
    return [
        {"name": "Base", "dataset": "base", "filter": [], "mask": "raw", "iou_col": "true_iou_raw"},
        {"name": "+embeddings", "dataset": "emb", "filter": [], "mask": "raw", "iou_col": "true_iou_raw"},
        {"name": "+size", "dataset": "emb", "filter": size_raw, "mask": "raw", "iou_col": "true_iou_raw"},
        {"name": "+histogram", "dataset": "emb", "filter": size_raw + ["--histogram", "reference"], "mask": "raw",
         "iou_col": "true_iou_raw"},
        {"name": "+CC", "dataset": "emb", "filter": ["--max-fg", str(MAX_FG), "--histogram", "reference"],
         "mask": "clean", "iou_col": "true_iou"},
    ]


# ----------------------------------------------------------------------------- running commands


class Runner:
    """Runs `factory ...` / `trainers ...` command lines, in-process (click) or as subprocesses; logs them."""

    def __init__(self, log_path: Path, subprocess_mode: bool):
        self.log_path = log_path
        self.subprocess_mode = subprocess_mode
        self.commands: list[str] = []

    def __call__(self, prog: str, args: list[str]) -> None:
        line = shlex.join([prog, *args])
        self.commands.append(line)
        with open(self.log_path, "a") as f:
            f.write(line + "\n")
        print(f"$ {line}", flush=True)
        if self.subprocess_mode:
            r = subprocess.run([sys.executable, "-m", f"{prog}.cli", *args])
            if r.returncode:
                raise SystemExit(f"ablation: command failed (exit {r.returncode}): {line}")
            return
        import click

        if prog == "factory":
            from factory.cli import main as group
        else:
            from trainers.cli import main as group
        try:
            group.main(args=list(args), prog_name=prog, standalone_mode=False)
        except click.exceptions.Exit as e:
            if e.exit_code:
                raise SystemExit(f"ablation: command failed (exit {e.exit_code}): {line}") from None
        except click.ClickException as e:
            raise SystemExit(f"ablation: command failed: {line}\n  Error: {e.format_message()}") from None
        except SystemExit as e:
            if e.code not in (None, 0):
                raise SystemExit(f"ablation: command failed (exit {e.code}): {line}") from None
        sys.stdout.flush()


# ----------------------------------------------------------------------------- steps


def export_once(run: Runner, out: Path, n: int, seed: int, resolution: int) -> None:
    """`factory testworld export` unless OUT already holds this very export."""
    meta = out / "testworld.json"
    if meta.exists():
        info = json.loads(meta.read_text())
        have = (info.get("n"), info.get("seed"), (info.get("generator") or {}).get("resolution"))
        if have == (n, seed, resolution):
            print(f"# reusing {out} (n={n}, seed={seed}, resolution={resolution})")
            return
        raise SystemExit(f"ablation: {out} holds another export (n, seed, resolution = {have}); "
                         f"remove it or choose another --out")
    run("factory", ["testworld", "export", "--n", str(n), "--seed", str(seed), "--resolution", str(resolution),
                    "--out", str(out)])


def train_once(run: Runner, view: Path, out: Path, recipe: dict, mask: str, device: str, workers: int) -> None:
    """`trainers train` unless OUT already holds a finished run of this recipe on this view."""
    card_path = out / "card.json"
    view_id = json.loads(view.read_text())["view_id"]
    if card_path.exists():
        card = json.loads(card_path.read_text())
        r = card.get("recipe", {})
        same = (card.get("data", {}).get("view_id") == view_id and r.get("mask") == mask
                and all(r.get(k) == v for k, v in recipe.items())
                and card.get("training", {}).get("steps") == recipe["steps"])
        if same:
            print(f"# reusing {out} (same view and recipe)")
            return
        raise SystemExit(f"ablation: {out} holds a run of another recipe or view; remove it or choose another --out")
    if out.exists():  # an interrupted run of ours (no card yet): start it again
        shutil.rmtree(out)
    run("trainers", ["train", "--data", str(view), "--out", str(out), "--steps", str(recipe["steps"]),
                     "--lr", str(recipe["lr"]), "--lr-step", str(recipe["lr_step"]),
                     "--lr-gamma", str(recipe["lr_gamma"]), "--batch-size", str(recipe["batch_size"]),
                     "--width", str(recipe["width"]), "--seed", str(recipe["seed"]), "--mask", mask,
                     "--holdout-permille", str(HOLDOUT_PERMILLE), "--workers", str(workers), "--device", device,
                     "--checkpoint-every", "0", "--val-every", "0", "--no-progress"])


def training_mask_iou(view: Path, mask: str, column: str) -> tuple[int, float]:
    """(training samples, mean `column` over them): the rows `trainers train` trains on (hold-out removed)."""
    import numpy as np
    import pyarrow.parquet as pq

    from factory import format as fmt
    from trainers.data.stream import open_index

    index = open_index(str(view), split="train", holdout_permille=HOLDOUT_PERMILLE, mask=mask)
    resolved = fmt.open_dataset(str(view))
    values = []
    for s in resolved.manifest["shards"]:
        t = pq.read_table(fmt.join(resolved.root, s["index"]), columns=["row", column])
        keep = np.isin(t.column("row").to_numpy(), index.rows)
        values.append(t.column(column).to_numpy()[keep])
    v = np.concatenate(values) if values else np.zeros(0)
    if v.shape[0] != len(index):
        raise SystemExit(f"ablation: found {v.shape[0]} index rows for the {len(index)} training samples of {view}")
    return len(index), float(v.mean()) if v.size else float("nan")


def native_eval(run_dir: Path, test_dir: Path, device: str) -> dict:
    """Diagnostic, NOT the paper's protocol: score with the test image fed at its own size (no resize to 128).

    `trainers eval` feeds every image at shorter side 128; a U-Net trained on 64 px
    samples then sees objects twice as large as in training. This isolates that
    scale gap. Same metrics (trainers.eval.metrics), same model, same images.
    """
    import torch

    from trainers.device import resolve_device
    from trainers.eval.evaluate import image_to_input, predict_batch
    from trainers.eval.layouts import open_benchmark
    from trainers.eval.metrics import SegmentationMetrics
    from trainers.model.checkpoint import load_model

    dev = resolve_device(device)
    model = load_model(run_dir, dev)
    metrics = SegmentationMetrics(pysod=False)
    batch: list = []

    def flush():
        xs = torch.stack([x for _, x in batch])
        for (gt, _), p in zip(batch, predict_batch(model, xs, [gt.shape for gt, _ in batch], dev)):
            metrics.update(p, gt)
        batch.clear()

    for s in open_benchmark("ecssd", test_dir):
        x = image_to_input(s.image, short=min(s.image.size))
        if batch and (x.shape != batch[0][1].shape or len(batch) >= 32):
            flush()
        batch.append((s.gt, x))
    if batch:
        flush()
    return metrics.compute()


# ----------------------------------------------------------------------------- report


def machine() -> dict:
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu_name(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "loadavg_1_5_15": [round(x, 2) for x in load] if load else None}


def fmt3(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def markdown(result: dict) -> str:
    cfg = result["config"]
    lines = [
        f"Shapes world, {cfg['resolution']} px; {cfg['n']} candidates per generated dataset; U-Net width "
        f"{cfg['width']}, batch {cfg['batch']}, {cfg['steps']} steps (lr 1e-3, x0.2 from step {cfg['lr_step']}), "
        f"seed {cfg['seed']}; test: {cfg['test_n']} exported photographs (seed {cfg['test_seed']}), "
        f"`trainers eval` paper protocol. Embeddings: {cfg['train_emb_n']} latents of another export "
        f"(seed {cfg['train_emb_seed']}), alpha = {cfg['z_noise']}.",
        "",
        "| # | row | training data (view predicate) | masks | kept / candidates | train samples "
        "| train-mask IoU vs GT | maxFβ | IoU | acc | paper maxFβ / IoU / acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(result["rows"], 1):
        p = r["paper"]
        lines.append(
            f"| {i} | {r['name']} | {r['dataset']}: `{r['predicate']}` | {r['mask']} | "
            f"{r['view_samples']} / {r['candidates']} | {r['train_samples']} | {fmt3(r['train_mask_iou'])} | "
            f"{fmt3(r['maxF'])} | {fmt3(r['IoU'])} | {fmt3(r['accuracy'])} | "
            f"{p['maxF']:.3f} / {p['IoU']:.3f} / {p['accuracy']:.3f} |")
    if all("maxF_native" in r for r in result["rows"]):
        lines += ["", f"Diagnostic (not the paper's protocol): test images fed at their own {cfg['resolution']} px "
                  "instead of shorter side 128.", "",
                  "| # | row | maxFβ | IoU | acc |", "|---|---|---|---|---|"]
        for i, r in enumerate(result["rows"], 1):
            lines.append(f"| {i} | {r['name']} | {fmt3(r['maxF_native'])} | {fmt3(r['IoU_native'])} | "
                         f"{fmt3(r['accuracy_native'])} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolution", type=int, default=64, choices=(64, 128), help="image size (shapes world)")
    ap.add_argument("--n", type=int, default=3000, help="candidates per generated dataset (base and emb)")
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps per row (lr x0.2 at 2/3 of them)")
    ap.add_argument("--width", type=int, default=16, help="U-Net base width")
    ap.add_argument("--batch", type=int, default=32, help="training batch size")
    ap.add_argument("--seed", type=int, default=0, help="trainer seed (weights, data order, flips) and latent seed")
    ap.add_argument("--test-n", type=int, default=300, help="evaluation photographs")
    ap.add_argument("--test-seed", type=int, default=123)
    ap.add_argument("--train-emb-n", type=int, default=2000, help="latents of the embedding-source export")
    ap.add_argument("--train-emb-seed", type=int, default=7)
    ap.add_argument("--z-noise", type=float, default=0.0,
                    help="alpha of z = E_i + alpha N(0, I) (paper: 0 for ImageNet / ECSSD)")
    ap.add_argument("--workers", type=int, default=1, help="trainer data-loader workers")
    ap.add_argument("--gen-workers", type=int, default=0, help="factory generate --workers (0: in process)")
    ap.add_argument("--device", default="auto", help="trainers device (auto, cpu, cuda)")
    ap.add_argument("--out", default="data/ablation", help="working folder (datasets, views, runs, evals)")
    ap.add_argument("--json", default=None, help="also write the results JSON here (always OUT/ablation.json)")
    ap.add_argument("--md", default=None, help="also write the markdown table here (always OUT/ablation.md)")
    ap.add_argument("--subprocess", action="store_true", help="run each command as a separate process")
    ap.add_argument("--native-eval", action="store_true",
                    help="also score each model with test images at their own size (diagnostic, not the paper's "
                         "protocol; columns *_native)")
    a = ap.parse_args(argv)
    for name in ("n", "steps", "width", "batch", "test_n", "train_emb_n"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.z_noise < 0:
        ap.error("--z-noise must be >= 0")
    return a


def main(argv=None) -> dict:
    a = parse_args(argv)
    t_start = time.time()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("views", "runs", "eval"):
        (out / sub).mkdir(exist_ok=True)
    log = out / "commands.sh"
    log.write_text("#!/bin/sh\n# commands run by benchmarks/ablation.py " + shlex.join(sys.argv[1:] if argv is None
                                                                                      else argv) + "\nset -e\n")
    run = Runner(log, a.subprocess)
    mach = machine()
    timings: dict[str, float] = {}
    res = str(a.resolution)

    t = time.time()
    export_once(run, out / "test", a.test_n, a.test_seed, a.resolution)
    export_once(run, out / "train-embeddings", a.train_emb_n, a.train_emb_seed, a.resolution)
    timings["exports_s"] = time.time() - t

    t = time.time()
    common = ["--generator", "shapes", "--resolution", res, "--n", str(a.n), "--seed", str(a.seed),
              "--keep-raw-mask", "--workers", str(a.gen_workers), "--quiet"]
    run("factory", ["generate", *common, "--out", str(out / "base")])
    run("factory", ["generate", *common, "--embeddings", str(out / "train-embeddings" / "embeddings.npy"),
                    "--z-noise", str(a.z_noise), "--out", str(out / "emb")])
    timings["generate_s"] = time.time() - t

    lr_step = max(1, round(2 * a.steps / 3))
    recipe = {"steps": a.steps, "lr": 1e-3, "lr_step": lr_step, "lr_gamma": 0.2, "batch_size": a.batch,
              "width": a.width, "seed": a.seed}
    rows = []
    for i, spec in enumerate(rows_spec(), 1):
        tag = f"{i}-{spec['name'].lstrip('+')}"
        view = out / "views" / f"{tag}.json"
        run("factory", ["filter", str(out / spec["dataset"]), *spec["filter"], "--out", str(view), "--overwrite"])
        v = json.loads(view.read_text())
        n_train, mask_iou = training_mask_iou(view, spec["mask"], spec["iou_col"])
        if n_train < a.batch:
            raise SystemExit(f"ablation: row {spec['name']} has {n_train} training samples, fewer than one batch "
                             f"({a.batch}); raise --n or lower --batch")
        t = time.time()
        run_dir = out / "runs" / tag
        train_once(run, view, run_dir, recipe, spec["mask"], a.device, a.workers)
        t_train = time.time() - t
        t = time.time()
        ev_path = out / "eval" / f"{tag}.json"
        run("trainers", ["eval", "--model", str(run_dir), "--dataset", f"ecssd={out / 'test'}", "--json",
                         str(ev_path), "--device", a.device, "--no-pysod"])
        t_eval = time.time() - t
        ev = json.loads(ev_path.read_text())["ECSSD"]
        card = json.loads((run_dir / "card.json").read_text())
        if card["data"]["train_samples"] != n_train:
            raise SystemExit(f"ablation: {run_dir} trained on {card['data']['train_samples']} samples, "
                             f"expected {n_train}")
        native = native_eval(run_dir, out / "test", a.device) if a.native_eval else None
        p = PAPER[spec["name"]]
        rows.append({
            "name": spec["name"], "dataset": spec["dataset"], "view": str(view), "view_id": v["view_id"],
            "predicate": v["predicate"], "mask": spec["mask"], "candidates": v["counts"]["candidates"],
            "view_samples": v["samples"], "train_samples": n_train,
            "train_mask_iou": mask_iou, "train_mask_iou_column": spec["iou_col"],
            "maxF": ev["maxF"], "IoU": ev["IoU"], "accuracy": ev["accuracy"], "MAE": ev.get("MAE"),
            "n_test_images": ev["n_images"], "final_train_loss": card["training"]["final_train_loss"],
            "run": str(run_dir), "train_seconds": round(t_train, 1), "eval_seconds": round(t_eval, 1),
            "paper": {"maxF": p[0], "IoU": p[1], "accuracy": p[2]},
        })
        if native is not None:
            rows[-1].update({f"{k}_native": native[k] for k in ("maxF", "IoU", "accuracy")})
        print(f"# row {i} {spec['name']}: train samples {n_train}, train-mask IoU {mask_iou:.3f}, "
              f"maxF {ev['maxF']:.3f} IoU {ev['IoU']:.3f} acc {ev['accuracy']:.3f}", flush=True)

    timings["total_s"] = time.time() - t_start
    mach["loadavg_end_1_5_15"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    result = {
        "kind": "ablation-table4-shapes",
        "config": {"resolution": a.resolution, "n": a.n, "steps": a.steps, "lr_step": lr_step, "width": a.width,
                   "batch": a.batch, "seed": a.seed, "test_n": a.test_n, "test_seed": a.test_seed,
                   "train_emb_n": a.train_emb_n, "train_emb_seed": a.train_emb_seed, "z_noise": a.z_noise,
                   "device": a.device, "workers": a.workers, "holdout_permille": HOLDOUT_PERMILLE,
                   "eval_protocol": "trainers eval (paper): input shorter side 128, maxF beta^2=0.3, IoU/acc at 0.5"},
        "machine": mach, "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "commands": run.commands, "rows": rows,
    }
    table = markdown(result)
    print()
    print(table)
    (out / "ablation.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "ablation.md").write_text(table)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    if a.md:
        Path(a.md).write_text(table)
    print(f"# total {timings['total_s']:.0f} s; wrote {out / 'ablation.json'}" + (f" and {a.json}" if a.json else ""))
    return result


if __name__ == "__main__":
    main()
