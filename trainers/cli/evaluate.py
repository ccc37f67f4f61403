"""`trainers eval`, `trainers predict`, `trainers benchmark`: scoring models and prediction folders."""
from __future__ import annotations

import click

from trainers.cli.options import MODEL_HELP, batch_option, device_option, pysod_option, short_side_option


def metric_values(m: dict, keys) -> str:
    return "  ".join(f"{k}={m[k]}" if isinstance(m[k], int) or m[k] is None else f"{k}={m[k]:.4f}" for k in keys)


def print_metrics(name: str, m: dict) -> bool:
    """The paper's measures on one line, pysodmetrics' (if any) on a second, each named; True if pysod shown."""
    from trainers.eval.metrics import PAPER_LEGEND, PYSOD_LEGEND

    keys = [k for k in ("n_images", "maxF", "IoU", "accuracy", "MAE") if k in m]
    if m.get("n_both_empty"):
        keys.append("IoU_authors")  # differs from IoU only when some image is empty in both
    click.echo(f"{name}: {metric_values(m, keys)}  ({PAPER_LEGEND})")
    pysod = [k for k in m if k.startswith("pysod_")]
    if pysod:
        click.echo(f"{name} pysod: {metric_values(m, pysod)}  ({PYSOD_LEGEND})")
    return bool(pysod)


@click.command("eval")
@click.option("--model", "run", type=click.Path(), help=MODEL_HELP)
@click.option("--dataset", "datasets", multiple=True, metavar="KIND=PATH",
              help="benchmark to score; KIND: ecssd, duts-te, dut-omron, cub, flowers, folder (repeatable)")
@click.option("--predictions", type=click.Path(file_okay=False), help="folder of 8-bit PNG probability maps")
@click.option("--masks", type=click.Path(file_okay=False), help="folder of ground-truth masks (same stems)")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="also write the results here")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="score only the first N images")
@device_option
@batch_option
@pysod_option
@short_side_option
def eval_cmd(*, run, datasets, predictions, masks, json_out, limit, device, batch_size, pysod, short_side):
    """Score a model on benchmarks, or saved predictions against masks (the authors' protocol).

    The protocol is the paper authors': shorter side 128 (long side 128*long//short), the
    probability resized back to the mask, IoU and accuracy at p >= 0.5, maxF over p > k/255
    (beta^2 = 0.3). pysodmetrics' numbers appear only under pysod_* names.

    \b
    Examples:
      trainers eval --model runs/unet --dataset ecssd=/data/ECSSD --dataset cub=/data/CUB --json ecssd.json
      trainers eval --model u_net_imagenet.pth --dataset ecssd=/data/ECSSD
      trainers eval --model runs/faces64 --dataset folder=held/ --short-side 64   # at its training scale
      trainers eval --predictions preds/ --masks /data/ECSSD/ground_truth_mask
    """
    from trainers.eval.evaluate import (
        PROTOCOL,
        evaluate_datasets,
        evaluate_predictions,
        write_json,
    )
    from trainers.eval.layouts import parse_dataset_spec
    from trainers.eval.metrics import MAE_NOTE, METRIC_PROTOCOL

    model_mode = bool(run or datasets)
    pred_mode = bool(predictions or masks)
    if model_mode and pred_mode:
        raise click.ClickException("use either --model with --dataset, or --predictions with --masks, not both")
    if pred_mode:
        if not (predictions and masks):
            raise click.ClickException("--predictions and --masks go together (both folders, matched by stem)")
        results = {"predictions": evaluate_predictions(predictions, masks, pysod=pysod)}
        click.echo(f"protocol: {METRIC_PROTOCOL}")
        shown_pysod = print_metrics("predictions", results["predictions"])
    elif model_mode:
        if not run:
            raise click.ClickException("--dataset needs --model RUN (a folder with model.safetensors + model.json)")
        if not datasets:
            raise click.ClickException("--model needs at least one --dataset KIND=PATH, e.g. ecssd=/data/ECSSD")
        specs = [parse_dataset_spec(s) for s in datasets]
        results, shown_pysod = {}, False
        for name, m in evaluate_datasets(run, specs, device=device, batch_size=batch_size, pysod=pysod,
                                         limit=limit, short_side=short_side):
            if not results:
                click.echo(f"protocol: {PROTOCOL}" if short_side == 128 else
                           f"protocol: the authors' with the shorter side at {short_side} px, not 128")
            results[name] = m
            shown_pysod = print_metrics(name, m) or shown_pysod
    else:
        raise click.ClickException("nothing to evaluate: give --model RUN --dataset KIND=PATH, "
                                   "or --predictions DIR --masks DIR")
    if shown_pysod:
        click.echo(f"note: {MAE_NOTE}")
    if json_out:
        write_json(json_out, results)
        click.echo(f"wrote {json_out}")


@click.command("predict")
@click.option("--model", "run", required=True, type=click.Path(), help=MODEL_HELP)
@click.option("--images", required=True, type=click.Path(file_okay=False), help="folder of input images")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="output folder: <stem>.png 8-bit probability maps at input size")
@device_option
@batch_option
@short_side_option
def predict_cmd(*, run, images, out, device, batch_size, short_side):
    """Write probability maps (PNG, p = value/255) for every image, at the image's size.

    \b
    Example:
      trainers predict --model runs/unet --images /data/ECSSD/images --out preds/
      trainers eval --predictions preds/ --masks /data/ECSSD/ground_truth_mask
      trainers predict --model runs/faces64 --images held/images --out preds64/ --short-side 64
    """
    from trainers.eval.evaluate import predict_folder

    written = predict_folder(run, images, out, device=device, batch_size=batch_size, short_side=short_side)
    click.echo(f"wrote {len(written)} probability maps to {out}")


@click.command("benchmark")
@click.option("--model", "run", required=True, type=click.Path(), help=MODEL_HELP)
@click.option("--root", required=True, type=click.Path(file_okay=False),
              help="folder holding the unpacked benchmarks (found by their layouts)")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="also write the table as JSON")
@click.option("--label", default=None, help="name of our row (default: the run folder's name or the file's stem)")
@device_option
@batch_option
@pysod_option
def benchmark_cmd(*, run, root, json_out, label, device, batch_size, pysod):
    """Evaluate on every benchmark under ROOT; print ours beside the paper's published rows.

    \b
    Examples:
      trainers benchmark --model runs/unet --root /data/benchmarks --json table.json
      trainers benchmark --model u_net_imagenet.pth --root /data/benchmarks
    """
    from trainers.eval.evaluate import write_json
    from trainers.eval.table import benchmark

    table = benchmark(run, root, device=device, batch_size=batch_size, pysod=pysod, label=label)
    click.echo(table["markdown"], nl=False)
    if json_out:
        write_json(json_out, table)
        click.echo(f"wrote {json_out}")
