"""The root of every trainers error: `TrainersError`, under the contract's `factory.format.FactoryError`.

A user mistake (a bad flag value, a missing or tampered file) is one of these, with one line naming
the problem and the fix; the `trainers` CLI prints it without a traceback (trainers/cli, one place).
"""
from __future__ import annotations

import re

from factory.format import FactoryError


class TrainersError(FactoryError):
    """An error caused by user input or files, reported by the CLI as one line."""


class DataError(TrainersError, ValueError):
    """A dataset, view or shard that cannot be read as asked (message names the file)."""


_WORKER = re.compile(r"^Caught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback ")


def one_line(err: FactoryError) -> str:
    """The line a CLI prints for ``err``. A FactoryError raised inside a DataLoader worker comes back
    re-raised by torch as the same type whose message is "Caught X in DataLoader worker process N",
    then the worker's whole traceback: its line is the original message, the traceback's last line."""
    text = str(err)
    m = _WORKER.match(text)
    if m is None or m.group(1) != type(err).__name__:
        return text
    last = re.findall(rf"^(?:[\w.]+\.)?{m.group(1)}: (.*)$", text, re.M)
    return last[-1] if last else text.splitlines()[0]
