"""The error wrapper of the `factory` commands: a FactoryError (FormatError, FolderBusy, ... are
subclasses) raised anywhere below a FactoryGroup becomes one line on stderr, exit code 1, no traceback
(the contract's `format.commands.ErrorGroup`, which `trainers` shares)."""
from __future__ import annotations

from factory.format.commands import ErrorGroup


class FactoryGroup(ErrorGroup):
    """A `factory` command group: what its subcommands (nested groups included) raise as FactoryError is
    printed as ``Error: <one line>``. The root group and every subgroup use it, so a group invoked on its
    own (e.g. in a test) behaves the same."""
