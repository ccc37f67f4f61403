"""Helpers the test modules share (import them: ``from helpers import run, cli, one_line_error, one_thread``)."""
from __future__ import annotations

import contextlib

from click.testing import CliRunner


def run(args, expect: int = 0):
    """`factory ARGS` in this process, exceptions propagated; asserts the exit code."""
    from factory.cli import main

    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == expect, res.output
    return res


def cli(*args):
    """`factory ARGS` in this process as a user sees it: whatever the exit code, never a traceback."""
    from factory.cli import main

    r = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r


def one_line_error(res, *fragments) -> None:
    """A CLI result that failed with exit code 1 and one line ``Error: ...`` holding every fragment."""
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    for f in fragments:
        assert f in lines[0], res.output


@contextlib.contextmanager
def one_thread():
    """One torch intra-op thread inside the block: on 2 shared cores small models run several times
    faster than with the default (threads spin against other processes)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
