"""What every command line built on the contract shares (`factory` and `trainers`): `ErrorGroup`, the one
error wrapper. A FactoryError (or an object store's SDK error that is a known storage problem) raised
anywhere below an ErrorGroup, in the process or in a DataLoader worker, becomes one line on stderr, exit
code 1, no traceback."""
from __future__ import annotations

import click

from factory.format.errors import one_line
from factory.format.store import silence_orphaned_tasks, user_error


class ErrorGroup(click.Group):
    """A click group whose subcommands' user errors are printed as ``Error: <one line>`` (`one_line`)."""

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
