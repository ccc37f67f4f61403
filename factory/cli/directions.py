"""`factory directions ...`: candidate directions (random, discovered) and their scoring (paper §3.2)."""
from __future__ import annotations

import click

from factory.cli.errors import FactoryGroup
from factory.cli.options import GENERATOR_HELP, GeneratorFlags, generator_flags


@click.group(cls=FactoryGroup, context_settings={"help_option_names": ["-h", "--help"]})
def directions():
    """Find a segmenting latent direction: make candidates, score them, use the winner.

    \b
    Example:
      factory directions discover --generator shapes --resolution 64 --n-directions 32 --out dirs/found.npy
      factory directions score --generator shapes --resolution 64 --candidates dirs/found.npy --out dirs/scores
      factory generate --n 2000 --direction dirs/scores/direction.npy --out data/found
    """


@directions.command("random")
@click.option("--n", "n", type=int, required=True, help="Number of directions (> 0).")
@click.option("--dim", type=int, help="Latent width (default: the --generator's dim_z).")
@click.option("--generator", default="shapes", show_default=True, help=GENERATOR_HELP)
@click.option("--weights", help="Generator weights file (dcgan, bigbigan: dim_z is read from it).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of numpy's default_rng.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Output .npy [N, DIM] float32.")
def random_cmd(n, dim, generator, weights, seed, out):
    """Write N unit Gaussian directions (a baseline set of candidates) of the generator's width.

    \b
    Examples:
      factory directions random --n 120 --seed 0 --out dirs/random.npy
      factory directions random --n 64 --generator dcgan --weights weights.tar --out dirs/dcgan-random.npy
    """
    from factory.directions.common import write_random_directions

    arr = write_random_directions(out, n, dim=dim, seed=seed, generator=generator, weights=weights)
    click.echo(f"wrote {arr.shape[0]} unit directions of width {arr.shape[1]} to {out}")


@directions.command("score")
@generator_flags
@click.option("--class", "class_id", type=int, help="biggan: the ImageNet class every latent is rendered with (default 0; the authors' discovery used 239).")
@click.option("--candidates", type=click.Path(dir_okay=False), required=True, help="Candidate directions .npy [K, dim_z] (rows are normalised).")
@click.option("--names", type=click.Path(dir_okay=False), help="JSON list of K names (null = unknown); default: the generator's named directions are recognised.")
@click.option("--scale", type=float, default=5.0, show_default=True, help="Shift s of G(z + s h).")
@click.option("--steps", type=int, default=200, show_default=True, help="Adam steps of the operator fit (fresh latents each).")
@click.option("--batch", type=int, default=4, show_default=True, help="Latents per step.")
@click.option("--lr", type=float, default=0.005, show_default=True, help="Adam learning rate of the operators.")
@click.option("--keep-best", type=float, default=0.7, show_default=True, help="Select among this fraction with the lowest loss.")
@click.option("--loss", "loss_kind", type=click.Choice(["relative", "absolute"]), default="relative", show_default=True,
              help="Loss that ranks candidates for --keep-best: relative = restoration loss / loss of no operator.")
@click.option("--eval-n", type=int, default=32, show_default=True, help="Held-out latents for loss and distance.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the latents.")
@click.option("--refine-steps", type=int, default=0, show_default=True,
              help="> 0: then refine the selection by gradient ascent on the criterion itself (distance - relative "
                   "loss - sign disagreement of +h / -h); see docs/directions.md. 0 = the paper's selection only.")
@click.option("--refine-top", type=int, default=3, show_default=True,
              help="Refine this many kept candidates (largest distance first) and keep the best refined one.")
@click.option("--refine-batch", type=int, default=16, show_default=True, help="Latents per refinement step.")
@click.option("--refine-lr", type=float, default=0.01, show_default=True, help="Adam learning rate of the refinement.")
@click.option("--device", help="Device (default: cuda when present, else cpu).")
@click.option("--threads", type=int, default=1, show_default=True,
              help="torch CPU threads, pinned (a CPU run's floats can depend on the count; recorded in the JSON).")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output folder.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def score_cmd(*, gen: GeneratorFlags, quiet: bool, loss_kind: str, refine_steps: int, refine_batch: int,
              refine_lr: float, **kw):
    """Score candidate directions by two fitted colour operators and select the segmenting one.

    Writes OUT/scores.parquet and OUT/scores.json (index, name, loss, distance,
    kept, selected), OUT/operators.npy [K,2,3,4], OUT/operators_selected.npy
    [2,3,4], OUT/direction.npy (the selected unit direction, oriented so that the
    object gets lighter), OUT/figure1.png (loss vs distance) and OUT/figure2.png.

    \b
    Example:
      factory directions score --generator shapes --resolution 64 \\
          --candidates dirs/random.npy --out dirs/scores
      factory directions score --generator shapes --resolution 64 --candidates dirs/found.npy \\
          --steps 30 --refine-steps 300 --out dirs/found-scores
      factory generate --n 2000 --direction dirs/scores/direction.npy --mask-rule operators \\
          --operators dirs/scores/operators_selected.npy --out data/ops
    """
    from factory.directions.refine import RefineConfig
    from factory.directions.score import ScoreConfig, score

    cfg = ScoreConfig(generator=gen.name, generator_options=gen.options(), loss=loss_kind, progress=not quiet,
                      refine=RefineConfig(steps=refine_steps, batch=refine_batch, lr=refine_lr), **kw)
    out = cfg.out
    s = score(cfg)
    name = f" ({s['selected_name']})" if s["selected_name"] else ""
    row = s["rows"][s["selected"]]
    click.echo(f"selected candidate {s['selected']}{name} of {s['candidates']}: loss {row['loss']:.4f} "
               f"(relative {row['loss_relative']:.3f}), "
               f"distance {row['distance']:.4f}{', sign flipped' if s['flipped'] else ''}; "
               f"{s['seconds_total']:.1f} s -> {out}/direction.npy")
    if s["refined"]:
        r = s["refined"]
        run = next(x for x in r["runs"] if x["start"] == r["chosen_start"])
        click.echo(f"refined from candidate {r['chosen_start']}: objective {run['objective_before']:.3f} -> "
                   f"{run['after']['objective']:.3f}, cos to the start {run['cos_to_start']:+.2f}")


@directions.command("discover")
@generator_flags
@click.option("--class", "class_id", type=int, help="biggan: the ImageNet class every latent is rendered with (default 0; the authors' discovery used 239).")
@click.option("--n-directions", type=int, required=True, help="K, the number of directions to learn.")
@click.option("--steps", type=int, default=2000, show_default=True, help="Training steps (reference: 100000).")
@click.option("--batch", type=int, default=32, show_default=True, help="Latents per step (reference: 32).")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate of both modules (reference: 1e-4 for 1e5 steps).")
@click.option("--seed", type=int, default=2, show_default=True, help="Seed (reference: 2).")
@click.option("--deformator", type=click.Choice(["proj", "ortho"]), default="proj", show_default=True,
              help="proj: K free unit columns; ortho: first K columns of expm(S - S^T) (reference default, K <= dim_z).")
@click.option("--axes-init", is_flag=True, help="ortho: start at the latent axes (S ~ 0.001 N(0,1)) instead of a random rotation.")
@click.option("--diff-input", is_flag=True, help="The reconstructor also sees G(z + eps d) - G(z).")
@click.option("--checkpoint-every", type=int, default=200, show_default=True, help="Steps between atomic checkpoints in OUT-stem.ckpt/.")
@click.option("--device", help="Device (default: cuda when present, else cpu).")
@click.option("--threads", type=int, default=1, show_default=True,
              help="torch CPU threads, pinned (a CPU run's floats can depend on the count; recorded in the JSON).")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Output .npy [K, dim_z]; a .json goes beside it.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def discover_cmd(*, gen: GeneratorFlags, axes_init: bool, diff_input: bool, quiet: bool, **kw):
    """Learn K interpretable latent directions (Voynov & Babenko 2020) to use as candidates.

    A matrix of K unit directions and a CNN that, from (G(z), G(z + eps d_k)),
    predicts k and eps are trained together. Rerunning the same command resumes
    from the last checkpoint.

    \b
    Example:
      factory directions discover --generator shapes --resolution 64 --n-directions 32 \\
          --steps 1500 --out dirs/found.npy
    """
    from factory.directions.discover import DiscoverConfig, discover

    cfg = DiscoverConfig(generator=gen.name, generator_options=gen.options(), random_init=not axes_init,
                         rec_diff=diff_input, progress=not quiet, **kw)
    out = cfg.out
    s = discover(cfg, log=lambda m: click.echo(m, err=True))
    v = s["validation"]
    click.echo(f"wrote {s['shape'][0]} unit directions to {out} (validation accuracy {v['accuracy']:.2f}, "
               f"shift L1 {v['shift_l1']:.2f})")
