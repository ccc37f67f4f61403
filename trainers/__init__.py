"""`trainers`: train and benchmark a U-Net from frozen factory shards.

This package never imports `factory`, except `factory.format` (the data
contract), so a team can train and evaluate without the generation stack.

Modules (each imports only those above it, and factory.format):
  fileio.py      atomic writes, canonical JSON, sha256
  device.py      the one --device helper (resolve_device)
  progress.py    what long commands print on stderr: train's start-up line, CPU warning and progress
                 lines, RateLine / count_bar for eval, predict and relabel (lines when piped), the
                 default number of loader workers (stdlib only)
  unet.py        the U-Net and its ModelConfig (ours, and the authors' bilinear / 2-logit variant); no I/O
  authors.py     the paper authors' released .pth checkpoints: safe reading, strict checks, key names
  checkpoint.py  weights on disk: run folder (model.safetensors + model.json), --model, convert,
                 training checkpoints
  data.py        factory dataset/view -> training batches (view-aware, seeded, exact under DDP)
  metrics.py     the paper's metrics (maxFβ, IoU, accuracy, MAE) + pysodmetrics measures
  train.py       the training recipe and loop (resume, DDP), the model card
  benchmarks.py  benchmark layouts (ECSSD, DUTS-TE, DUT-OMRON, CUB, Flowers, folder)
  evaluate.py    the evaluation protocol (the authors'), prediction folders
  table.py       `trainers benchmark`: ours beside the paper's published rows
  relabel.py     `trainers relabel`: a teacher's probability maps of a dataset or view (resumable)
  cli.py, cli_train.py   the `trainers` console script (click group `main`): parse, call, print
"""
from __future__ import annotations

from factory.format import FactoryError

__version__ = "0.1.0"


class TrainersError(FactoryError):
    """An error caused by user input or files, reported by the CLI as one line."""
