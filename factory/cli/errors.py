"""The one error wrapper of the `factory` commands: FactoryError/FormatError become one-line click errors."""
from __future__ import annotations

import functools

import click

from factory.format import FactoryError
from factory.format import FormatError


def user_errors(fn):
    """Turn FactoryError/FormatError into one-line click errors (exit 1, no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (FactoryError, FormatError) as e:
            raise click.ClickException(str(e)) from None

    return wrapper


class FactoryGroup(click.Group):
    """The `factory` group: the same one-line errors for anything its subcommands raise."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (FactoryError, FormatError) as e:
            raise click.ClickException(str(e)) from None
