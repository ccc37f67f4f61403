"""The factory's environment knobs, read in this one place: `settings()` returns them parsed.

| knob | default | used by |
|---|---|---|
| ``FACTORY_HOME`` | ``~/.cache/factory`` | fsio (weights/, embeddings/, cache/) |
| ``FACTORY_PROGRESS_SECONDS`` | 10 | progress: seconds between plain progress lines when piped |
| ``FACTORY_ENCODER`` | auto | generate/config: encoder pool kind (auto, processes, threads) |
| ``FACTORY_ENCODER_PROCESSES`` | from cores and GPUs | generate/encode: encoder processes per GPU worker |
| ``FACTORY_CC_ITERATIONS`` | auto | generate/compute: labelling updates per batch without a host check |

The environment is parsed once per distinct set of values (so a test that sets a knob sees it); a bad
value raises one FactoryError line naming the knob when the knob is used.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from factory.format import FactoryError

KNOBS = ("FACTORY_HOME", "FACTORY_PROGRESS_SECONDS", "FACTORY_ENCODER", "FACTORY_ENCODER_PROCESSES",
         "FACTORY_CC_ITERATIONS")
ENCODERS = ("auto", "processes", "threads")


def env_count(name: str, value: str, minimum: int, hint: str) -> int:
    """An integer knob >= minimum, or a FactoryError naming it."""
    try:
        k = int(value)
    except ValueError:
        k = minimum - 1
    if k < minimum:
        raise FactoryError(f"{name}={value!r}; {hint}")
    return k


@dataclass(frozen=True)
class Settings:
    """The knobs as set (empty string: not set); the properties parse and check them."""

    raw_home: str = ""
    raw_progress_seconds: str = ""
    raw_encoder: str = ""
    raw_encoder_processes: str = ""
    raw_cc_iterations: str = ""

    @property
    def home(self) -> Path:
        """``FACTORY_HOME`` (default ~/.cache/factory): where weights/, embeddings/ and cache/ live."""
        return Path(self.raw_home or Path.home() / ".cache" / "factory").expanduser()

    @property
    def progress_seconds(self) -> float:
        """``FACTORY_PROGRESS_SECONDS`` (default 10): seconds between progress lines when piped."""
        try:
            v = float(self.raw_progress_seconds or "10")
        except ValueError:
            v = -1.0
        if v < 0:
            raise FactoryError(f"FACTORY_PROGRESS_SECONDS={self.raw_progress_seconds!r}; use a number of seconds >= 0")
        return v

    @property
    def encoder(self) -> str:
        """``FACTORY_ENCODER``: auto | processes | threads (see docs/performance.md)."""
        v = self.raw_encoder or "auto"
        if v not in ENCODERS:
            raise FactoryError(f"FACTORY_ENCODER={v!r}; use auto, processes or threads")
        return v

    @property
    def encoder_processes(self) -> int | None:
        """``FACTORY_ENCODER_PROCESSES``: encoder processes per GPU worker, or None (derived)."""
        v = self.raw_encoder_processes
        return env_count("FACTORY_ENCODER_PROCESSES", v, 1, "use a positive count") if v else None

    @property
    def cc_iterations(self) -> int | str:
        """``FACTORY_CC_ITERATIONS``: "auto" (default) or a count >= 0 (0: always check on the host)."""
        v = self.raw_cc_iterations.strip() or "auto"
        if v == "auto":
            return v
        return env_count("FACTORY_CC_ITERATIONS", v, 0, "use auto, 0 (host checks) or a positive count")


@functools.lru_cache(maxsize=8)
def _parse(values: tuple[str, ...]) -> Settings:
    return Settings(*values)


def settings() -> Settings:
    """The knobs of this process's environment (parsed once per distinct set of values)."""
    return _parse(tuple(os.environ.get(k, "") for k in KNOBS))
