"""`factory` command line: thin click commands that parse, call one library function, print.

Each area keeps its commands in its own module (cli_*.py) and is attached at the bottom.
"""
from __future__ import annotations

import functools
import sys

import click

from factory import __version__
from factory.errors import FactoryError
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
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (FactoryError, FormatError) as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=FactoryGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="factory")
def main():
    """Dataset factory for unsupervised object segmentation.

    \b
    Example:
      factory generate --generator shapes --n 2000 --out data/demo
      factory filter data/demo --max-fg 0.5 --out data/demo-view.json
    """


def _attach():
    import importlib

    for mod, names in [
        ("factory.cli_generate", ["generate", "embeddings"]),
        ("factory.cli_bench", ["bench"]),
        ("factory.cli_testworld", ["testworld"]),
        ("factory.cli_weights", ["weights"]),
        ("factory.cli_dataset", ["filter_cmd", "info", "verify", "preview"]),
        ("factory.cli_directions", ["directions"]),
    ]:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:
                continue  # area not built yet
            raise
        for n in names:
            if hasattr(m, n):
                main.add_command(getattr(m, n))


_attach()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
