"""`trainers convert`: the paper authors' U-Net checkpoints as run folders."""
from __future__ import annotations

import click


@click.command("convert")
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
    from trainers.model.checkpoint import convert_authors

    info = convert_authors(checkpoint, out)
    src = info["extra"]["source"]
    click.echo(f"wrote {out}: {info['n_tensors']} tensors, {info['n_parameters']:,} parameters "
               f"(the authors' U-Net from {src['file']}, sha256 {src['sha256'][:16]}...)")
