"""`factory generate`: flags (or a recipe TOML) -> GenerateConfig -> `factory.generate.engine.generate`."""
from __future__ import annotations

import click

from factory import format as fmt
from factory.cli.options import SCHEDULER, GeneratorFlags, generator_flags
from factory.format import FactoryError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib


def _recipe_defaults(ctx: click.Context, recipe: str | None) -> dict:
    """Values from a recipe TOML for every option the user did not set on the command line."""
    if not recipe:
        return {}
    try:
        with open(recipe, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise FactoryError(f"recipe not found: {recipe}") from None
    except tomllib.TOMLDecodeError as e:
        raise FactoryError(f"recipe {recipe} is not valid TOML: {e}") from None
    table = data.get("generate", data)
    known = {p.name: p for p in ctx.command.params}
    out = {}
    for k, v in table.items():
        name = k.replace("-", "_")
        if name in ("description", "paper", "notes"):
            continue
        if name not in known:
            raise FactoryError(f"recipe {recipe}: unknown key {k!r}; keys are generate's option names")
        if ctx.get_parameter_source(name) == click.core.ParameterSource.DEFAULT:
            out[name] = v
    return out


def _latents_rows(latents: str, n: int | None) -> int | None:
    """--n for --latents FILE.npy: the file's rows by default; another number is refused."""
    if latents == "gaussian":
        return n
    from factory.latents.sources import file_rows

    rows = file_rows(latents)
    if not rows:
        return n  # the full check of the file names its problem
    if n is not None and n != rows:
        raise FactoryError(f"--n {n} differs from the {rows} rows of latents file {latents}; "
                           f"omit --n (exact latents make one sample per row) or pass --n {rows}")
    return rows


@click.command()
@click.option("--n", "n", type=int, help="Number of candidates to generate (every one gets an index row).")
@click.option("--out", help="Output folder or fsspec URL (s3://bucket/prefix, ...).")
@generator_flags
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the latent source.")
@click.option("--shard-size", type=int, default=1000, show_default=True, help="Samples per shard.")
@click.option("--latents", default="gaussian", show_default=True, help="'gaussian' (z ~ N(0, I)) or FILE.npy (exactly these latents, in order; --n defaults to its rows); a path or URL.")
@click.option("--embeddings", help="Sample near real-image embeddings: a stored NAME, a .npy or a zarr array, a path or URL (paper eq. 6).")
@click.option("--z-noise", type=float, default=0.0, show_default=True, help="alpha of z = E_i + alpha * N(0, I) with --embeddings.")
@click.option("--direction", help="Segmenting direction: a name known to the generator, or FILE (.npy / torch tensor file).")
@click.option("--shift-r", type=float, default=5.0, show_default=True, help="Shift along the direction: G(z + r h).")
@click.option("--mask-rule", type=click.Choice(list(fmt.MASK_RULES)), default="luminance",
              show_default=True, help="Foreground rule; 'operators' (paper eq. 5) needs --operators.")
@click.option("--operators", type=click.Path(dir_okay=False),
              help="Fitted colour operators [2,3,4] .npy for --mask-rule operators (operators_selected.npy of `factory directions score`).")
@click.option("--max-fg", type=float, default=0.5, show_default=True, help="Size filter threshold stored as pass_area (fg_ratio < max-fg).")
@click.option("--keep-raw-mask", is_flag=True, help="Also store the mask before connected-components cleanup (KEY.rawmask.png).")
@click.option("--image-codec", type=click.Choice(list(fmt.IMAGE_CODECS)), default="png", show_default=True,
              help="Image member: png (KEY.png), webp (lossless, KEY.webp: ~1.8x faster to encode than PNG on natural images, ~15% smaller) or "
                   "jpeg (lossy, KEY.jpg, --jpeg-quality). Masks are always lossless PNG.")
@click.option("--png-level", type=int, default=1, show_default=True, help="zlib level of image PNGs (--image-codec png).")
@click.option("--jpeg-quality", type=int, default=95, show_default=True, help="Quality of --image-codec jpeg (4:4:4 chroma).")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Candidates per generator batch (two forwards each).")
@click.option("--device", help="Device for workers (default: one CUDA worker per GPU, else CPU).")
@click.option("--workers", type=int, help="Local worker processes (default: GPUs, else min(4, CPUs)); 0 = run in this process.")
@SCHEDULER
@click.option("--dashboard", is_flag=True, help="Start the local cluster's dask dashboard on a free port (address on stderr).")
@click.option("--recipe", type=click.Path(dir_okay=False), help="Recipe TOML (manifests/*.toml); flags override it.")
@click.option("--overwrite", is_flag=True, help="Replace a dataset with another spec at --out.")
@click.option("--same-platform", is_flag=True,
              help="Refuse to resume (or run cluster workers) on another platform than the shards already made "
                   "(device, torch, CPU capability, precision, compile): bit identity across the whole dataset.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def generate(ctx, gen: GeneratorFlags, **kw):
    """Generate a dataset of image/mask candidates into sharded WebDataset tars.

    Writes shards/*.tar, index/*.parquet (one row of filter statistics per
    candidate), latents.zarr, README.md and manifest.json (last). Rerunning the
    same command resumes: committed shards are kept, missing ones are made.

    \b
    Examples:
      factory generate --generator shapes --n 2000 --out data/demo
      factory generate --recipe manifests/e-bigbigan-imagenet.toml --n 1000000 \\
          --weights BigBiGAN_x1.pth --direction bg_direction.pth --out s3://team/bigbigan-imagenet-v1
      factory generate --n 2000 --direction scores/direction.npy --mask-rule operators \\
          --operators scores/operators_selected.npy --out data/ops
    """
    from factory.generate.config import GenerateConfig
    from factory.generate.engine import generate as run

    recipe = _recipe_defaults(ctx, kw.get("recipe"))
    kw.update(recipe)
    gen = gen.updated(recipe)
    kw["n"] = _latents_rows(kw["latents"], kw["n"])
    if kw["n"] is None:
        raise FactoryError("--n is required: how many candidates to generate (e.g. --n 2000)")
    if not kw["out"]:
        raise FactoryError("--out is required: a folder or URL for the dataset (e.g. --out data/demo)")
    cfg = GenerateConfig(
        n=kw["n"], out=kw["out"], generator=gen.name, generator_options=gen.options(), seed=kw["seed"],
        shard_size=kw["shard_size"], latents=kw["latents"], embeddings=kw["embeddings"], z_noise=kw["z_noise"],
        direction=kw["direction"], shift_r=kw["shift_r"], mask_rule=kw["mask_rule"], max_fg=kw["max_fg"],
        png_level=kw["png_level"], image_codec=kw["image_codec"], jpeg_quality=kw["jpeg_quality"],
        keep_raw_mask=kw["keep_raw_mask"], batch_size=kw["batch_size"],
        device=kw["device"], workers=kw["workers"], scheduler=kw["scheduler"], overwrite=kw["overwrite"],
        recipe=kw["recipe"], progress=not kw["quiet"], operators=kw["operators"], dashboard=kw["dashboard"],
        same_platform=kw["same_platform"],
    )
    manifest = run(cfg)
    click.echo(f"{cfg.out}: {manifest['samples']} samples in {len(manifest['shards'])} shards, id {manifest['dataset_id']}")
