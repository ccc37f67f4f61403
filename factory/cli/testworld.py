"""`factory testworld ...`: files of the `shapes` test world (benchmark export, named directions)."""
from __future__ import annotations

import click

from factory.cli.errors import FactoryGroup


@click.group(cls=FactoryGroup, context_settings={"help_option_names": ["-h", "--help"]})
def testworld():
    """The `shapes` test world as files: a benchmark with ground truth, its latents, its directions.

    \b
    Example:
      factory testworld export --n 200 --seed 0 --out data/shapes-bench
      factory testworld directions --out data/shapes-directions.npy
    """


@testworld.command("export")
@click.option("--n", "n", type=int, required=True, help="Number of images (> 0).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the drawn latents.")
@click.option("--resolution", type=click.Choice(["64", "128"]), default="128", show_default=True, help="Image size.")
@click.option("--out", "out", type=click.Path(), required=True, help="New (or empty) folder to write.")
def export_cmd(n, seed, resolution, out):
    """Write N photographs of the world in the ECSSD layout, with embeddings.

    Writes OUT/images/NNNN.png, OUT/ground_truth_mask/NNNN.png (0/255) and
    OUT/embeddings.npy [N, 120] float32, the latents of those images (drawn from
    the world's embedding distribution, which has fewer failures than N(0, I)).

    \b
    Example:
      factory testworld export --n 200 --seed 0 --out data/shapes-bench
    """
    from factory.generators.shapes import export as tw

    path = tw.export(n, seed, int(resolution), out)
    click.echo(f"wrote {n} images, masks and embeddings.npy to {path}")


@testworld.command("directions")
@click.option("--out", "out", type=click.Path(), required=True, help="Output .npy; names go to the .json beside it.")
def directions_cmd(out):
    """Write the world's named directions [K, 120] float32 to OUT.npy and their names to OUT.json.

    \b
    Example:
      factory testworld directions --out data/shapes-directions.npy
    """
    from factory.generators.shapes import export as tw

    npy, meta = tw.directions(out)
    click.echo(f"wrote {npy} and {meta}")
