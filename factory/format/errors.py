"""The contract's error root: every error a user can cause is a FactoryError (one line naming the
problem and the fix); a dataset, view or manifest that breaks the contract is a FormatError."""
from __future__ import annotations


class FactoryError(Exception):
    """The one root of every error a user can cause (input, files, environment), in factory and in
    trainers (which sees only this contract): reported by each CLI as one line, no traceback."""


class FormatError(FactoryError, ValueError):
    """A dataset, view or manifest does not follow the contract (message names the file)."""
