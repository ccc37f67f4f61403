"""`trainers` command line: thin click commands that parse, call one library function, print.

The group `main` is the console script `trainers` (also `python -m trainers.cli`, which torchrun
starts); each command lives in a module of this package and is attached here. ``--model`` is a run
folder or one of the paper authors' ``.pth`` files (trainers.model.checkpoint.open_model). User
errors (every FactoryError: TrainersError, raised by the library with the fix in the message, and
the contract's FormatError) become one-line click errors (exit 1) in ONE place: ``TrainersGroup`` (the contract's
``format.commands.ErrorGroup``), raised in the process or in a DataLoader worker (``format.one_line``).
"""
from __future__ import annotations

import click

from factory.format import ErrorGroup
from trainers import __version__
from trainers.cli.evaluate import benchmark_cmd, eval_cmd, predict_cmd
from trainers.cli.model import convert_cmd
from trainers.cli.relabel import relabel_cmd
from trainers.cli.train import train


class TrainersGroup(ErrorGroup):
    """The `trainers` group: any FactoryError its subcommands raise is one line on stderr, exit 1
    (the contract's `format.commands.ErrorGroup`, which `factory` shares)."""


@click.group(cls=TrainersGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trainers")
def main():
    """Train and benchmark a U-Net on factory datasets.

    \b
    Example:
      trainers eval --model runs/unet --dataset ecssd=/data/ECSSD
    """


for _command in (eval_cmd, predict_cmd, benchmark_cmd, convert_cmd, relabel_cmd, train):
    main.add_command(_command)
