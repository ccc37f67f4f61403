"""Options several `trainers` commands share: --model, --device, --batch-size, --pysod, --short-side."""
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
