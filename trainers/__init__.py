"""`trainers`: train and benchmark a U-Net from frozen factory shards.

This package never imports `factory`, except `factory.format` (the data
contract), so a team can train and evaluate without the generation stack.

Modules (each imports only those above it, and factory.format):
  errors.py      TrainersError, the root of every trainers error (under factory.format.FactoryError); DataError
  fileio.py      atomic writes, canonical JSON, sha256
  device.py      the one --device helper (resolve_device)
  progress.py    what long commands print on stderr: train's start-up line, CPU warning and progress
                 lines, RateLine / count_bar for eval, predict and relabel (lines when piped), the
                 default number of loader workers (stdlib only)
  model/         the network and its files: unet.py (U-Net, ModelConfig; no I/O), authors.py (the
                 paper authors' released .pth checkpoints), checkpoint.py (run folders, --model,
                 convert, training checkpoints)
  data/          factory dataset/view -> training batches: stream.py (batches; view-aware, seeded, exact
                 under DDP), holdout.py (key-hash hold-out), index.py (a split's accepted rows),
                 planner.py (each epoch's order, cut for ranks and workers), reader.py (shards read,
                 checked and decoded), cache.py (the node's shard cache for remote datasets),
                 random_access.py (the map-style reader, --access random), samples.py (a dataset or view
                 as torch datasets of single samples; rank_samples, the one reading path of train)
  eval/          metrics.py (the paper's metrics + pysodmetrics), layouts.py (evaluation dataset
                 layouts: ECSSD, DUTS-TE, DUT-OMRON, CUB, Flowers, folder), evaluate.py (the authors'
                 protocol, prediction folders), table.py (`trainers benchmark`)
  train.py       the training recipe and loop (resume, DDP), the model card
  relabel.py     `trainers relabel`: a teacher's probability maps of a dataset or view (resumable)
  cli/           the `trainers` console script (click group `main`): parse, call, print; __init__.py
                 (the group, every FactoryError one line), __main__.py, evaluate.py (eval, predict,
                 benchmark), train.py, relabel.py, model.py (convert), options.py (shared options)
"""
from __future__ import annotations

__version__ = "0.1.0"
