"""`trainers` command line: thin click commands that parse, call one library function, print.

The group `main` is the console script `trainers` (also `python -m trainers.cli`, which torchrun
starts); `train` lives in trainers/cli_train.py and is attached at the bottom. ``--model`` is a run
folder or one of the paper authors' ``.pth`` files (trainers.checkpoint.open_model). User errors
(TrainersError, raised by the library with the fix in the message) become one-line click errors
(exit 1) in ONE place: ``TrainersGroup.invoke``.
"""
from __future__ import annotations

import click

from trainers import TrainersError, __version__


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


_MODEL_HELP = "run folder (model.safetensors + model.json) or an authors' checkpoint FILE.pth"
_device = click.option("--device", default="auto", show_default=True,
                       help="torch device: auto (cuda if available), cpu, cuda, cuda:1 ...")
_batch = click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1),
                      help="images per forward pass (same input size only)")
_pysod = click.option("--pysod/--no-pysod", default=None,
                      help="also report pysodmetrics measures (pysod_*); default: when installed")


def _values(m: dict, keys) -> str:
    return "  ".join(f"{k}={m[k]}" if isinstance(m[k], int) or m[k] is None else f"{k}={m[k]:.4f}" for k in keys)


def _print_metrics(name: str, m: dict) -> bool:
    """The paper's measures on one line, pysodmetrics' (if any) on a second, each named; True if pysod shown."""
    from trainers.metrics import PAPER_LEGEND, PYSOD_LEGEND

    keys = [k for k in ("n_images", "maxF", "IoU", "accuracy", "MAE") if k in m]
    if m.get("n_both_empty"):
        keys.append("IoU_authors")  # differs from IoU only when some image is empty in both
    click.echo(f"{name}: {_values(m, keys)}  ({PAPER_LEGEND})")
    pysod = [k for k in m if k.startswith("pysod_")]
    if pysod:
        click.echo(f"{name} pysod: {_values(m, pysod)}  ({PYSOD_LEGEND})")
    return bool(pysod)


@main.command("eval")
@click.option("--model", "run", type=click.Path(), help=_MODEL_HELP)
@click.option("--dataset", "datasets", multiple=True, metavar="KIND=PATH",
              help="benchmark to score; KIND: ecssd, duts-te, dut-omron, cub, flowers, folder (repeatable)")
@click.option("--predictions", type=click.Path(file_okay=False), help="folder of 8-bit PNG probability maps")
@click.option("--masks", type=click.Path(file_okay=False), help="folder of ground-truth masks (same stems)")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="also write the results here")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="score only the first N images")
@_device
@_batch
@_pysod
def eval_cmd(*, run, datasets, predictions, masks, json_out, limit, device, batch_size, pysod):
    """Score a model on benchmarks, or saved predictions against masks (the authors' protocol).

    The protocol is the paper authors': shorter side 128 (long side 128*long//short), the
    probability resized back to the mask, IoU and accuracy at p >= 0.5, maxF over p > k/255
    (beta^2 = 0.3). pysodmetrics' numbers appear only under pysod_* names.

    \b
    Examples:
      trainers eval --model runs/unet --dataset ecssd=/data/ECSSD --dataset cub=/data/CUB --json ecssd.json
      trainers eval --model u_net_imagenet.pth --dataset ecssd=/data/ECSSD
      trainers eval --predictions preds/ --masks /data/ECSSD/ground_truth_mask
    """
    from trainers.benchmarks import parse_dataset_spec
    from trainers.evaluate import (
        PROTOCOL,
        evaluate_datasets,
        evaluate_predictions,
        write_json,
    )
    from trainers.metrics import MAE_NOTE, METRIC_PROTOCOL

    model_mode = bool(run or datasets)
    pred_mode = bool(predictions or masks)
    if model_mode and pred_mode:
        raise click.ClickException("use either --model with --dataset, or --predictions with --masks, not both")
    if pred_mode:
        if not (predictions and masks):
            raise click.ClickException("--predictions and --masks go together (both folders, matched by stem)")
        results = {"predictions": evaluate_predictions(predictions, masks, pysod=pysod)}
        click.echo(f"protocol: {METRIC_PROTOCOL}")
        shown_pysod = _print_metrics("predictions", results["predictions"])
    elif model_mode:
        if not run:
            raise click.ClickException("--dataset needs --model RUN (a folder with model.safetensors + model.json)")
        if not datasets:
            raise click.ClickException("--model needs at least one --dataset KIND=PATH, e.g. ecssd=/data/ECSSD")
        specs = [parse_dataset_spec(s) for s in datasets]
        results, shown_pysod = {}, False
        for name, m in evaluate_datasets(run, specs, device=device, batch_size=batch_size, pysod=pysod,
                                         limit=limit):
            if not results:
                click.echo(f"protocol: {PROTOCOL}")
            results[name] = m
            shown_pysod = _print_metrics(name, m) or shown_pysod
    else:
        raise click.ClickException("nothing to evaluate: give --model RUN --dataset KIND=PATH, "
                                   "or --predictions DIR --masks DIR")
    if shown_pysod:
        click.echo(f"note: {MAE_NOTE}")
    if json_out:
        write_json(json_out, results)
        click.echo(f"wrote {json_out}")


@main.command("predict")
@click.option("--model", "run", required=True, type=click.Path(), help=_MODEL_HELP)
@click.option("--images", required=True, type=click.Path(file_okay=False), help="folder of input images")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="output folder: <stem>.png 8-bit probability maps at input size")
@_device
@_batch
def predict_cmd(*, run, images, out, device, batch_size):
    """Write probability maps (PNG, p = value/255) for every image, at the image's size.

    \b
    Example:
      trainers predict --model runs/unet --images /data/ECSSD/images --out preds/
      trainers eval --predictions preds/ --masks /data/ECSSD/ground_truth_mask
    """
    from trainers.evaluate import predict_folder

    written = predict_folder(run, images, out, device=device, batch_size=batch_size)
    click.echo(f"wrote {len(written)} probability maps to {out}")


@main.command("benchmark")
@click.option("--model", "run", required=True, type=click.Path(), help=_MODEL_HELP)
@click.option("--root", required=True, type=click.Path(file_okay=False),
              help="folder holding the unpacked benchmarks (found by their layouts)")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="also write the table as JSON")
@click.option("--label", default=None, help="name of our row (default: the run folder's name or the file's stem)")
@_device
@_batch
@_pysod
def benchmark_cmd(*, run, root, json_out, label, device, batch_size, pysod):
    """Evaluate on every benchmark under ROOT; print ours beside the paper's published rows.

    \b
    Examples:
      trainers benchmark --model runs/unet --root /data/benchmarks --json table.json
      trainers benchmark --model u_net_imagenet.pth --root /data/benchmarks
    """
    from trainers.checkpoint import model_label
    from trainers.evaluate import write_json
    from trainers.table import benchmark

    table = benchmark(run, root, device=device, batch_size=batch_size, pysod=pysod, label=label or model_label(run))
    click.echo(table["markdown"], nl=False)
    if json_out:
        write_json(json_out, table)
        click.echo(f"wrote {json_out}")


@main.command("convert")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), metavar="RUN",
              help="new run folder: model.safetensors + model.json (records the source file's sha256)")
def convert_cmd(checkpoint, out):
    """Turn one of the paper authors' U-Net checkpoints (.pth) into a run folder every command serves.

    \b
    Example:
      trainers convert u_net_imagenet.pth --out runs/authors-imagenet
      trainers benchmark --model runs/authors-imagenet --root /data/benchmarks
    """
    from trainers.checkpoint import convert_authors

    info = convert_authors(checkpoint, out)
    src = info["extra"]["source"]
    click.echo(f"wrote {out}: {info['n_tensors']} tensors, {info['n_parameters']:,} parameters "
               f"(the authors' U-Net from {src['file']}, sha256 {src['sha256'][:16]}...)")


@main.command("relabel")
@click.option("--model", "run", required=True, type=click.Path(), help="teacher: " + _MODEL_HELP)
@click.option("--data", required=True, metavar="DATASET|VIEW", help="dataset folder/URL or view JSON to relabel")
@click.option("--out", required=True, type=click.Path(file_okay=False), metavar="MAPS",
              help="teacher-maps folder: parts/NNNNNN.tar of KEY.teacher.png, maps.json (resumable)")
@_device
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1), help="images per forward")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="samples/s and ETA on stderr every 10 s")
@click.option("--allow-remote-shards", is_flag=True, help="trust shard URLs in a remote manifest")
def relabel_cmd(*, run, data, out, device, batch_size, progress, allow_remote_shards):
    """Write a teacher's probability map for every sample of a dataset or view (rerun to resume).

    \b
    Examples:
      trainers relabel --model runs/round1 --data data/shapes --out data/shapes-maps
      factory relabel data/shapes --maps data/shapes-maps --out data/shapes-teacher
      trainers train --data data/shapes-teacher --mask-source teacher --out runs/round2
    """
    from trainers.relabel import RelabelConfig, relabel

    m = relabel(RelabelConfig(model=run, data=data, out=out, device=device, batch_size=batch_size,
                              progress=progress, allow_remote_shards=allow_remote_shards))
    click.echo(f"{out}: {m['samples']:,} teacher maps in {len(m['parts'])} parts of {m['parent']['dataset_id']} "
               f"by teacher {m['teacher']['sha256'][:16]}...; next: factory relabel {data} --maps {out} --out DERIVED")


from trainers.cli_train import train  # noqa: E402  (`trainers train`, in its own module)

main.add_command(train)


if __name__ == "__main__":  # pragma: no cover
    main()
