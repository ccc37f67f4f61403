"""The one error wrapper of the `factory` commands: a FactoryError (FormatError, FolderBusy, ... are
subclasses) raised anywhere below a FactoryGroup becomes one line on stderr, exit code 1, no traceback."""
from __future__ import annotations

import click

from factory.format import silence_orphaned_tasks, user_error


class FactoryGroup(click.Group):
    """A `factory` command group: what its subcommands (nested groups included) raise as FactoryError is
    printed as ``Error: <one line>``. The root group and every subgroup use it, so a group invoked on its
    own (e.g. in a test) behaves the same."""

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
            raise click.ClickException(str(err)) from None
