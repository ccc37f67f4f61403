"""Options several `trainers` commands share: --model, --device, --batch-size, --pysod, --short-side, the cache's."""
from __future__ import annotations

import click

MODEL_HELP = "run folder (model.safetensors + model.json) or an authors' checkpoint FILE.pth"
device_option = click.option("--device", default="auto", show_default=True,
                             help="torch device: auto (cuda if available), cpu, cuda, cuda:1 ...")
batch_option = click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1),
                            help="images per forward pass (same input size only)")
pysod_option = click.option("--pysod/--no-pysod", default=None,
                            help="also report pysodmetrics measures (pysod_*); default: when installed")
short_side_option = click.option("--short-side", default=128, show_default=True, type=click.IntRange(min=1),
                                 help="network input's shorter side in pixels: the authors' 128, or the size the "
                                      "U-Net was trained at (64 for 64-px GAN images)")


def cache_options(f):
    """--cache-dir, --cache-limit, --cache/--no-cache: the node's shard cache for remote datasets."""
    f = click.option("--cache/--no-cache", "cache", default=True, show_default=True,
                     help="keep remote shards in a local cache shared by this machine's ranks (--no-cache: stream "
                          "from the store every epoch); local datasets are never copied")(f)
    f = click.option("--cache-limit", default=None, metavar="SIZE", show_default="what fits: cached + 80% of free",
                     help="most bytes the cache keeps (e.g. 50G); least recently used shards are evicted")(f)
    return click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
                        show_default="$XDG_CACHE_HOME/factory-trainers", help="the shard cache's folder")(f)
