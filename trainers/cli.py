"""`trainers` command line: thin click commands that parse, call one library function, print.

The group `main` is the console script `trainers`; `train` is attached by the
training module when it lands. User errors become one-line click errors (exit 1).
"""
from __future__ import annotations

import functools
from pathlib import Path

import click

from trainers import TrainersError, __version__


def _user_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (TrainersError, ImportError) as e:
            raise click.ClickException(str(e)) from None

    return wrapper


class TrainersGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TrainersError as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=TrainersGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trainers")
def main():
    """Train and benchmark a U-Net on factory datasets.

    \b
    Example:
      trainers eval --model runs/unet --dataset ecssd=/data/ECSSD
    """


_device = click.option("--device", default="auto", show_default=True,
                       help="torch device: auto (cuda if available), cpu, cuda, cuda:1 ...")
_batch = click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1),
                      help="images per forward pass (same input size only)")
_pysod = click.option("--pysod/--no-pysod", default=None,
                      help="also report pysodmetrics measures (pysod_*); default: when installed")


def _load(run: str, device: str):
    from trainers.evaluate import _resolve_device
    from trainers.unet import load_model

    try:
        dev = _resolve_device(device)
    except RuntimeError as e:
        raise click.ClickException(f"bad --device {device!r}: {e}") from None
    return load_model(run, dev), dev


def _print_metrics(name: str, m: dict) -> None:
    keys = [k for k in ("n_images", "maxF", "IoU", "accuracy", "MAE") if k in m]
    keys += [k for k in m if k.startswith("pysod_")]
    click.echo(f"{name}: " + "  ".join(f"{k}={m[k]}" if isinstance(m[k], int) else f"{k}={m[k]:.4f}"
                                         for k in keys))


@main.command("eval")
@click.option("--model", "run", type=click.Path(file_okay=False), help="run folder (model.safetensors + model.json)")
@click.option("--dataset", "datasets", multiple=True, metavar="KIND=PATH",
              help="benchmark to score; KIND: ecssd, duts-te, dut-omron, cub, flowers, folder (repeatable)")
@click.option("--predictions", type=click.Path(file_okay=False), help="folder of 8-bit PNG probability maps")
@click.option("--masks", type=click.Path(file_okay=False), help="folder of ground-truth masks (same stems)")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="also write the results here")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="score only the first N images")
@_device
@_batch
@_pysod
@_user_errors
def eval_cmd(run, datasets, predictions, masks, json_out, limit, device, batch_size, pysod):
    """Score a model on benchmarks, or saved predictions against masks (paper protocol).

    \b
    Examples:
      trainers eval --model runs/unet --dataset ecssd=/data/ECSSD --dataset cub=/data/CUB --json ecssd.json
      trainers eval --predictions preds/ --masks /data/ECSSD/ground_truth_mask
    """
    from trainers.benchmarks import open_benchmark, parse_dataset_spec
    from trainers.evaluate import evaluate_model, evaluate_predictions, write_json

    model_mode = bool(run or datasets)
    pred_mode = bool(predictions or masks)
    if model_mode and pred_mode:
        raise click.ClickException("use either --model with --dataset, or --predictions with --masks, not both")
    if pred_mode:
        if not (predictions and masks):
            raise click.ClickException("--predictions and --masks go together (both folders, matched by stem)")
        results = {"predictions": evaluate_predictions(predictions, masks, pysod=pysod)}
        _print_metrics("predictions", results["predictions"])
    elif model_mode:
        if not run:
            raise click.ClickException("--dataset needs --model RUN (a folder with model.safetensors + model.json)")
        if not datasets:
            raise click.ClickException("--model needs at least one --dataset KIND=PATH, e.g. ecssd=/data/ECSSD")
        specs = [parse_dataset_spec(s) for s in datasets]
        opened = [open_benchmark(kind, path) for kind, path in specs]  # fail fast on layout errors
        model, dev = _load(run, device)
        results = {}
        for ds in opened:
            name = ds.name if ds.name not in results else f"{ds.name} ({ds.root})"
            results[name] = {"kind": ds.kind, "path": str(ds.root),
                             **evaluate_model(model, ds, device=dev, batch_size=batch_size, pysod=pysod,
                                              limit=limit)}
            _print_metrics(name, results[name])
    else:
        raise click.ClickException("nothing to evaluate: give --model RUN --dataset KIND=PATH, "
                                   "or --predictions DIR --masks DIR")
    if json_out:
        write_json(json_out, results)
        click.echo(f"wrote {json_out}")


@main.command("predict")
@click.option("--model", "run", required=True, type=click.Path(file_okay=False),
              help="run folder (model.safetensors + model.json)")
@click.option("--images", required=True, type=click.Path(file_okay=False), help="folder of input images")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="output folder: <stem>.png 8-bit probability maps at input size")
@_device
@_batch
@_user_errors
def predict_cmd(run, images, out, device, batch_size):
    """Write probability maps (PNG, p = value/255) for every image, at the image's size.

    \b
    Example:
      trainers predict --model runs/unet --images /data/ECSSD/images --out preds/
      trainers eval --predictions preds/ --masks /data/ECSSD/ground_truth_mask
    """
    from trainers.evaluate import predict_folder

    model, dev = _load(run, device)
    written = predict_folder(model, images, out, device=dev, batch_size=batch_size)
    click.echo(f"wrote {len(written)} probability maps to {out}")


@main.command("benchmark")
@click.option("--model", "run", required=True, type=click.Path(file_okay=False),
              help="run folder (model.safetensors + model.json)")
@click.option("--root", required=True, type=click.Path(file_okay=False),
              help="folder holding the unpacked benchmarks (found by their layouts)")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="also write the table as JSON")
@click.option("--label", default=None, help="name of our row (default: the run folder's name)")
@_device
@_batch
@_pysod
@_user_errors
def benchmark_cmd(run, root, json_out, label, device, batch_size, pysod):
    """Evaluate on every benchmark under ROOT; print ours beside the paper's published rows.

    \b
    Example:
      trainers benchmark --model runs/unet --root /data/benchmarks --json table.json
    """
    from trainers.evaluate import benchmark, write_json

    model, dev = _load(run, device)
    table = benchmark(model, root, device=dev, batch_size=batch_size, pysod=pysod,
                      label=label or Path(run).resolve().name)
    click.echo(table["markdown"], nl=False)
    if json_out:
        write_json(json_out, table)
        click.echo(f"wrote {json_out}")


from trainers.cli_train import train  # noqa: E402  (issue 5: `trainers train`)
main.add_command(train)


if __name__ == "__main__":  # pragma: no cover
    main()
