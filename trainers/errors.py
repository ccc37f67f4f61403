"""The root of every trainers error: `TrainersError`, under the contract's `factory.format.FactoryError`.

A user mistake (a bad flag value, a missing or tampered file) is one of these, with one line naming
the problem and the fix; the `trainers` CLI prints it without a traceback (trainers/cli, one place).
"""
from __future__ import annotations

from factory.format import FactoryError, one_line  # noqa: F401 (one_line: the contract's, for the CLI)


class TrainersError(FactoryError):
    """An error caused by user input or files, reported by the CLI as one line."""


class DataError(TrainersError, ValueError):
    """A dataset, view or shard that cannot be read as asked (message names the file)."""
