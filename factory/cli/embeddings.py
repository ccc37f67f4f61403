"""`factory embeddings ...`: import and list named embedding sets (thin wrappers over factory.embeddings)."""
from __future__ import annotations

import json

import click

from factory.cli.errors import user_errors


@click.group()
def embeddings():
    """Named sets of real-image embeddings for `generate --embeddings NAME`.

    \b
    Example:
      factory embeddings import BigBiGAN_ImageNet_z.npy --name imagenet
      factory embeddings list
    """


@embeddings.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--name", required=True, help="Name to use with --embeddings.")
@click.option("--overwrite", is_flag=True, help="Replace a stored set of that name with other content.")
@user_errors
def embeddings_import(file, name, overwrite):
    """Store FILE.npy [N, dim_z] as a compressed zarr array under $FACTORY_HOME.

    \b
    Example:
      factory embeddings import BigBiGAN_ImageNet_z.npy --name imagenet
    """
    from factory import embeddings as emb

    ref = emb.import_npy(file, name, overwrite=overwrite)
    click.echo(f"{ref.name}: {ref.shape[0]} x {ref.shape[1]} float32, sha256 {ref.sha256} -> {ref.path}")


@embeddings.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@user_errors
def embeddings_list(as_json):
    """List stored embedding sets.

    \b
    Example:
      factory embeddings list
    """
    from factory import embeddings as emb

    refs = emb.list_embeddings()
    if not refs:
        click.echo(f"no embeddings stored in {emb.store_dir()}; {emb.HOW_TO_IMPORT}")
    for r in refs:
        if as_json:
            click.echo(json.dumps({"name": r.name, "rows": r.shape[0], "dim": r.shape[1], "sha256": r.sha256, "path": r.path}))
        else:
            click.echo(f"{r.name}\t{r.shape[0]} x {r.shape[1]}\t{r.sha256[:16]}\t{r.path}")
