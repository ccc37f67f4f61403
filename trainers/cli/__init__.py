"""`trainers` command line: thin click commands that parse, call one library function, print.

The group `main` is the console script `trainers` (also `python -m trainers.cli`, which torchrun
starts); each command lives in a module of this package and is attached here. ``--model`` is a run
folder or one of the paper authors' ``.pth`` files (trainers.model.checkpoint.open_model). User
errors (every FactoryError: TrainersError, raised by the library with the fix in the message, and
the contract's FormatError) become one-line click errors (exit 1) in ONE place: ``TrainersGroup.invoke``,
raised in the process or in a DataLoader worker (``errors.one_line``).
"""
from __future__ import annotations

import click

from factory.format import silence_orphaned_tasks, user_error
from trainers import __version__
from trainers.cli.evaluate import benchmark_cmd, eval_cmd, predict_cmd
from trainers.cli.model import convert_cmd
from trainers.cli.relabel import relabel_cmd
from trainers.cli.train import train
from trainers.errors import one_line


class TrainersGroup(click.Group):
    """The `trainers` group: any FactoryError its subcommands raise is one line on stderr, exit 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as e:  # a FactoryError, or an object store's SDK error that is a known storage problem
            err = user_error(e)
            if err is None:
                raise
            silence_orphaned_tasks()
            raise click.ClickException(one_line(err)) from None


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
