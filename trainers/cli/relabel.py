"""`trainers relabel`: a teacher's probability maps of a dataset or view."""
from __future__ import annotations

import click

from trainers.cli.options import MODEL_HELP, cache_options, device_option


@click.command("relabel")
@click.option("--model", "run", required=True, type=click.Path(), help="teacher: " + MODEL_HELP)
@click.option("--data", required=True, metavar="DATASET|VIEW", help="dataset folder/URL or view JSON to relabel")
@click.option("--out", required=True, type=click.Path(file_okay=False), metavar="MAPS",
              help="teacher-maps folder: parts/NNNNNN.tar of KEY.teacher.png, maps.json (resumable)")
@device_option
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1), help="images per forward")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="samples/s and ETA on stderr every 10 s")
@click.option("--allow-remote-shards", is_flag=True, help="trust shard URLs in a remote manifest")
@cache_options
def relabel_cmd(*, run, data, out, device, batch_size, progress, allow_remote_shards, cache, cache_dir, cache_limit):
    """Write a teacher's probability map for every sample of a dataset or view (rerun to resume).

    \b
    Examples:
      trainers relabel --model runs/round1 --data data/shapes --out data/shapes-maps
      factory relabel data/shapes --maps data/shapes-maps --out data/shapes-teacher
      trainers train --data data/shapes-teacher --mask-source teacher --out runs/round2
    """
    from trainers.relabel import RelabelConfig, relabel

    m = relabel(RelabelConfig(model=run, data=data, out=out, device=device, batch_size=batch_size,
                              progress=progress, allow_remote_shards=allow_remote_shards, cache=cache,
                              cache_dir=cache_dir, cache_limit=cache_limit))
    click.echo(f"{out}: {m['samples']:,} teacher maps in {len(m['parts'])} parts of {m['parent']['dataset_id']} "
               f"by teacher {m['teacher']['sha256'][:16]}...; next: factory relabel {data} --maps {out} --out DERIVED")
