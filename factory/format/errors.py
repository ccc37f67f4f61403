"""The contract's error root: every error a user can cause is a FactoryError (one line naming the
problem and the fix); a dataset, view or manifest that breaks the contract is a FormatError."""
from __future__ import annotations

import re


class FactoryError(Exception):
    """The one root of every error a user can cause (input, files, environment), in factory and in
    trainers (which sees only this contract): reported by each CLI as one line, no traceback."""


class FormatError(FactoryError, ValueError):
    """A dataset, view or manifest does not follow the contract (message names the file)."""


_WORKER = re.compile(r"^Caught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback ")


def one_line(err: BaseException) -> str:
    """The line a CLI prints for ``err``. A FactoryError raised inside a DataLoader worker comes back
    re-raised by torch as the same type whose message is "Caught X in DataLoader worker process N",
    then the worker's whole traceback: its line is the original message, the traceback's last line."""
    text = str(err)
    m = _WORKER.match(text)
    if m is None or m.group(1) != type(err).__name__:
        return text
    last = re.findall(rf"^(?:[\w.]+\.)?{m.group(1)}: (.*)$", text, re.M)
    return last[-1] if last else text.splitlines()[0]
