"""`factory` command line: thin click commands that parse, call one library function, print.

Each command group lives in its own module of this package and is attached to `main` here.
"""
from __future__ import annotations

import sys

import click

from factory import __version__
from factory.cli.bench import bench
from factory.cli.browse import browse
from factory.cli.dataset import filter_cmd, info, preview, relabel, sign, upgrade, verify
from factory.cli.directions import directions
from factory.cli.embeddings import embeddings
from factory.cli.errors import FactoryGroup
from factory.cli.export import export
from factory.cli.generate import generate
from factory.cli.generators import generators
from factory.cli.testworld import testworld
from factory.cli.weights import weights


@click.group(cls=FactoryGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="factory")
def main():
    """Dataset factory for unsupervised object segmentation.

    \b
    Example:
      factory generate --generator shapes --n 2000 --out data/demo
      factory filter data/demo --max-fg 0.5 --out data/demo-view.json
    """


for _command in (generate, generators, embeddings, bench, testworld, weights, filter_cmd, info, verify, sign, preview,
                 relabel, upgrade, directions, browse, export):
    main.add_command(_command)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
