"""User-facing errors: one line naming the problem and the fix. The CLI prints them without a traceback."""


class FactoryError(Exception):
    """An error caused by user input or environment, reported as one line."""
