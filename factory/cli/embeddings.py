"""`factory embeddings ...`: import, invert, export and list named embedding sets (thin wrappers over factory.latents)."""
from __future__ import annotations

import json
import warnings

import click

from factory.cli.errors import FactoryGroup
from factory.cli.options import GeneratorFlags, generator_flags


@click.group(cls=FactoryGroup)
def embeddings():
    """Named sets of real-image embeddings for `generate --embeddings NAME`.

    \b
    Example:
      factory embeddings import BigBiGAN_ImageNet_z.npy --name imagenet
      factory embeddings invert --generator shapes --resolution 64 --images photos/ --name mine
      factory embeddings list
    """


@embeddings.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--name", required=True, help="Name to use with --embeddings.")
@click.option("--overwrite", is_flag=True, help="Replace a stored set of that name with other content.")
def embeddings_import(file, name, overwrite):
    """Store FILE.npy [N, dim_z] as a compressed zarr array under $FACTORY_HOME.

    \b
    Example:
      factory embeddings import BigBiGAN_ImageNet_z.npy --name imagenet
    """
    from factory.latents import embeddings as emb

    ref = emb.import_npy(file, name, overwrite=overwrite)
    click.echo(f"{ref.name}: {ref.shape[0]} x {ref.shape[1]} float32, sha256 {ref.sha256} -> {ref.path}")


@embeddings.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def embeddings_list(as_json):
    """List stored embedding sets.

    \b
    Example:
      factory embeddings list
    """
    from factory.latents import embeddings as emb

    refs = emb.list_embeddings()
    if not refs:
        click.echo(f"no embeddings stored in {emb.store_dir()}; {emb.HOW_TO_IMPORT}")
    for r in refs:
        if as_json:
            click.echo(json.dumps({"name": r.name, "rows": r.shape[0], "dim": r.shape[1], "sha256": r.sha256, "path": r.path}))
        else:
            click.echo(f"{r.name}\t{r.shape[0]} x {r.shape[1]}\t{r.sha256[:16]}\t{r.path}")


@embeddings.command("invert")
@generator_flags
@click.option("--images", required=True, help="Folder or fsspec URL of images (rows follow sorted file names).")
@click.option("--name", required=True, help="Name of the new embedding store (for `generate --embeddings NAME`).")
@click.option("--steps", type=int, default=200, show_default=True, help="Adam steps per image and restart.")
@click.option("--batch", type=int, default=64, show_default=True, help="Images per batch = per resumable chunk.")
@click.option("--lr", type=float, default=0.1, show_default=True, help="Adam step size (cosine-decayed to 5%).")
@click.option("--restarts", type=int, default=2, show_default=True, help="Seeded random starts per image; the best is kept.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the starts.")
@click.option("--prior-weight", type=float, default=0.5, show_default=True,
              help="Weight of the --prior term.")
@click.option("--prior", type=click.Choice(["gaussian", "shell"]), default="gaussian", show_default=True,
              help="gaussian: ||z||^2/(2 dim_z), the N(0, I) NLL (a MAP estimate); shell: (||z||^2/dim_z - 1)^2, "
                   "which keeps ||z|| in the typical set (docs/embeddings.md compares them).")
@click.option("--grad-weight", type=float, default=1.0, show_default=True, help="Weight of the image-gradient MSE.")
@click.option("--scales", type=int, default=3, show_default=True, help="Scales of the pixel MSE (2x pooling each).")
@click.option("--upscale", is_flag=True, help="Enlarge images smaller than the generator's resolution (with a warning).")
@click.option("--device", help="Device (default: cuda when present, else cpu).")
@click.option("--overwrite", is_flag=True, help="Replace a stored set (or an unfinished run) of that name.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def embeddings_invert(gen: GeneratorFlags, **kw):
    """Find each image's latent by optimisation (GAN inversion) and store them as NAME.

    Every image is centre-cropped and resized to the generator's resolution; z
    minimises multi-scale pixel MSE + image-gradient MSE + a prior on z.
    Chunks of --batch images are committed as they finish: rerunning the same
    command after a crash resumes. Each row's reconstruction MSE, PSNR and the
    image's sha256 are stored beside it (NAME.zarr/rows.parquet).

    \b
    Example:
      factory embeddings invert --generator shapes --resolution 64 \\
          --images data/shapes-photos/images --name my-photos --steps 200 --restarts 2
      factory generate --resolution 64 --embeddings my-photos --z-noise 0.2 --n 2000 --out data/near
    """
    from factory.latents import inversion

    settings = inversion.InvertSettings(
        steps=kw["steps"], batch=kw["batch"], lr=kw["lr"], restarts=kw["restarts"], seed=kw["seed"],
        prior_weight=kw["prior_weight"], prior=kw["prior"], grad_weight=kw["grad_weight"], scales=kw["scales"],
    )
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *a, **k: click.echo(f"warning: {message}", err=True)
        res = inversion.invert(
            gen.name, kw["images"], kw["name"], generator_options=gen.options(), settings=settings,
            device=kw["device"], overwrite=kw["overwrite"], upscale=kw["upscale"], progress=not kw["quiet"],
        )
    if res.chunks_resumed:
        click.echo(f"resumed: {res.chunks_resumed} chunk(s) were already done", err=True)
    r = res.ref
    click.echo(f"{r.name}: {r.shape[0]} x {r.shape[1]} float32, mean PSNR {res.mean_psnr:.2f} dB, "
               f"sha256 {r.sha256} -> {r.path}")


@embeddings.command("export")
@click.argument("name")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output FILE.npy.")
def embeddings_export(name, out):
    """Write a stored set's rows to FILE.npy [N, dim_z] float32 (to share, or for `generate --latents`).

    \b
    Example:
      factory embeddings export my-photos --out my-photos.npy
    """
    from factory.latents import embeddings as emb

    path, ref = emb.export_npy(name, out)
    click.echo(f"{ref.name}: {ref.shape[0]} x {ref.shape[1]} -> {path}")
