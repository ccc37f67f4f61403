"""`trainers`: train and benchmark a U-Net from frozen factory shards.

This package never imports `factory`, except `factory.format` (the data
contract), so a team can train and evaluate without the generation stack.

Modules:
  unet.py        the U-Net, its ModelConfig, safetensors save/load
  metrics.py     the paper's metrics (maxFβ, IoU, accuracy, MAE) + pysodmetrics measures
  benchmarks.py  benchmark layouts (ECSSD, DUTS-TE, DUT-OMRON, CUB, Flowers, folder)
  evaluate.py    evaluation protocol, prediction folders, the benchmark table
  cli.py         the `trainers` console script (click group `main`)
"""
from __future__ import annotations

__version__ = "0.1.0"


class TrainersError(Exception):
    """An error caused by user input or files, reported by the CLI as one line."""
