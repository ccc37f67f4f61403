"""Every command of both CLIs has --help with an example."""
from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from factory.cli import main as factory_main
from trainers.cli import main as trainers_main


def walk(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        yield prefix + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from walk(cmd, prefix + (name,))


COMMANDS = [(factory_main, p) for p, _ in walk(factory_main)] + [(trainers_main, p) for p, _ in walk(trainers_main)]


def test_the_product_commands_exist():
    names = {" ".join(p) for _, p in COMMANDS}
    for expected in ("generate", "filter", "info", "verify", "preview", "bench", "embeddings import",
                     "testworld export", "weights fetch", "directions score", "train", "eval", "benchmark"):
        assert expected in names


@pytest.mark.parametrize("main, path", COMMANDS, ids=[" ".join(p) for _, p in COMMANDS])
def test_help_has_an_example(main, path):
    res = CliRunner().invoke(main, list(path) + ["--help"])
    assert res.exit_code == 0, res.output
    assert "example" in res.output.lower(), f"{' '.join(path)} --help has no example"
