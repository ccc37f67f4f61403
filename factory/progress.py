"""Progress bars that read well in a terminal and in a log: on a terminal, a tqdm bar; when stderr is
piped or redirected, the same bar as one plain line every FACTORY_PROGRESS_SECONDS (factory.settings;
default 10) with rate and ETA, never carriage returns."""
from __future__ import annotations

import sys

from factory.settings import settings


class LineStream:
    """A file for tqdm: each refresh is written as one line of its own."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        for line in text.replace("\r", "\n").split("\n"):
            if line.strip():
                self.stream.write(line.rstrip() + "\n")
        self.stream.flush()

    def flush(self) -> None:
        self.stream.flush()


def is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def progress_bar(iterable=None, **kw):
    """``tqdm(iterable, **kw)`` on stderr (looked up now); piped: plain lines every FACTORY_PROGRESS_SECONDS."""
    from tqdm import tqdm

    stream = kw.pop("file", None) or sys.stderr
    if not is_terminal(stream):
        kw.update(file=LineStream(stream), dynamic_ncols=False, ncols=kw.get("ncols") or 100,
                  mininterval=max(kw.get("mininterval", 0.1), settings().progress_seconds))
    return tqdm(iterable, **kw)
