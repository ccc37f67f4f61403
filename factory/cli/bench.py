"""`factory bench`: end-to-end candidates/s with per-stage times."""
from __future__ import annotations

import json

import click

from factory import format as fmt
from factory.cli.options import GeneratorFlags, generator_flags


@click.command()
@generator_flags
@click.option("--n", type=int, default=512, show_default=True, help="Candidates to process in the timed run.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Candidates per batch (two forwards each).")
@click.option("--shard-size", type=int, help="Samples per shard (default: n).")
@click.option("--image-codec", type=click.Choice(list(fmt.IMAGE_CODECS)), default="png", show_default=True,
              help="Image member codec, as in `factory generate`.")
@click.option("--device", help="cpu, cuda, cuda:1 ... (default: cuda if present).")
@click.option("--threads", type=int, help="torch CPU threads.")
@click.option("--trace", "trace_dir", type=click.Path(file_okay=False),
              help="Also profile one shard: DIR/trace.json (open in Perfetto), DIR/ops.txt, and the GPU's busy share.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench(*, gen: GeneratorFlags, n, batch_size, shard_size, image_codec, device, threads, trace_dir, as_json):
    """Measure end-to-end candidates/s (G(z), G(z + r h), masks, statistics, encoding, shards).

    \b
    Examples:
      factory bench --generator shapes --n 512 --json
      factory bench --generator bigbigan --random-weights --n 20480 --batch-size 512 --shard-size 1024 \\
          --dtype bf16 --channels-last --compile --trace gpu-trace --json
    """
    from factory.generate.bench import run

    res = run(generator=gen.name, n=n, batch_size=batch_size, shard_size=shard_size, device=device,
              generator_options=gen.options(), threads=threads, trace_dir=trace_dir, image_codec=image_codec)
    if as_json:
        click.echo(json.dumps(res))
        return
    click.echo(f"{res['generator']} @ {res['resolution']}px on {res['device_name']}, batch {res['batch_size']}, "
               f"{res['dtype']}, images {res['image_codec']}")
    click.echo(f"end to end: {res['candidates_per_s']:.1f} candidates/s; generator alone: {res['generator_images_per_s']:.1f} img/s")
    for k, v in res["stage_seconds"].items():
        click.echo(f"  {k:28s} {v:8.3f} s  {100 * res['stage_share'][k]:5.1f}%")
    if res["trace"]:
        t = res["trace"]
        busy = "n/a (no GPU)" if t["gpu_busy_share"] is None else f"{100 * t['gpu_busy_share']:.1f}%"
        click.echo(f"trace of one shard in {t['dir']}: {t['span_s']:.2f} s, GPU busy {busy}")
