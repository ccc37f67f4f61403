"""What `trainers train` tells its user on stderr: the start-up line, the CPU warning, progress.

* ``startup_line``: device, ranks x batch = samples per step, width, loader workers, steps,
  samples; printed by rank 0 before the first step, so a user knows within seconds what runs.
* ``cpu_advice``: on a CPU, a run estimated to take hours (the paper's batch 95 / width 64
  takes minutes per step there) gets one warning with the estimate and the flags of a
  CPU-sized run (``CPU_RUN_FLAGS``).
* ``Progress``: on a terminal a tqdm bar; otherwise (a pipe, a log file, CliRunner) one plain
  line after the first ``FIRST_REPORT_STEPS`` steps (or ``FIRST_REPORT_SECONDS``), then one
  line every ``every`` seconds: step, measured seconds per step, ETA, loss. No carriage returns.
* ``default_workers``: the loader workers a run gets when ``--workers`` is not given.

Pure stdlib (tqdm only on a terminal); no torch, no other trainers module.
"""
from __future__ import annotations

import math
import os
import sys
import time

DEFAULT_PROGRESS_SECONDS = 30.0
FIRST_REPORT_STEPS = 3
FIRST_REPORT_SECONDS = 10.0
MAX_DEFAULT_WORKERS = 8
CPU_WARN_SECONDS = 3600.0  # warn on CPU when the estimated run is longer than this
CPU_RUN_FLAGS = "--batch-size 8 --width 16 --steps 2000 --lr-step 1500 --val-every 500 --checkpoint-every 500"


def available_cpus() -> int:
    """CPUs this process may run on: ``os.sched_getaffinity`` (cgroups, taskset), else ``os.cpu_count``.

    The same count torch's DataLoader compares ``num_workers`` with before it warns.
    """
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_workers(local_ranks: int = 1) -> int:
    """Loader workers per rank: this machine's CPUs shared by its ranks, at most ``MAX_DEFAULT_WORKERS``.

    Never more than ``available_cpus()`` (torch's suggested maximum), so torch does not warn;
    0 (load in the training process) when there are more ranks on the machine than CPUs.
    """
    return max(0, min(MAX_DEFAULT_WORKERS, available_cpus() // max(1, local_ranks)))


def fmt_duration(seconds: float) -> str:
    """``42 s``, ``12.5 min``, ``3.4 h``, ``5.1 days``."""
    if math.isnan(seconds) or seconds < 0:
        return "?"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def startup_line(*, device: str, world_size: int, batch_size: int, width: int, workers: int,
                 workers_auto: bool, start_step: int, steps: int, train_samples: int, val_samples: int) -> str:
    """The one line rank 0 prints before training (``device`` as text, e.g. ``cpu`` or ``cuda:0 (H100)``)."""
    w = f"{workers} loader worker{'s' if workers != 1 else ''} per rank"
    if workers_auto:
        n = available_cpus()
        w += f" (auto: {n} CPU{'s' if n != 1 else ''}; --workers N to change)"
    steps_txt = f"steps {start_step:,} -> {steps:,}" if start_step else f"{steps:,} steps"
    return (f"train: device {device}; {world_size} rank{'s' if world_size != 1 else ''} x batch {batch_size} = "
            f"{world_size * batch_size} samples/step; U-Net width {width}; {w}; {steps_txt}; "
            f"{train_samples:,} training / {val_samples:,} hold-out samples")


def cpu_advice(*, sec_per_step: float, steps_left: int, batch_size: int, width: int) -> str | None:
    """The warning for a CPU run estimated at more than ``CPU_WARN_SECONDS``, else None."""
    total = sec_per_step * steps_left
    if total <= CPU_WARN_SECONDS:
        return None
    return (f"train: warning: on this CPU batch {batch_size} at width {width} takes about "
            f"{fmt_duration(sec_per_step)} per step (estimated from one timed forward pass), "
            f"{steps_left:,} steps about {fmt_duration(total)}. The paper's recipe is sized for a GPU; "
            f"a CPU-sized run: trainers train --data ... --out ... {CPU_RUN_FLAGS}")


def progress_line(*, step: int, total: int, sec_per_step: float, global_batch: int, loss: float) -> str:
    eta = sec_per_step * max(0, total - step)
    rate = global_batch / sec_per_step if sec_per_step > 0 else float("nan")
    return (f"train: step {step:,}/{total:,}  {sec_per_step:.3g} s/step ({rate:.3g} samples/s)  "
            f"ETA {fmt_duration(eta)}  loss {loss:.4f}")


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def emit(line: str) -> None:
    """One line to stderr (looked up now, so a redirected stderr or CliRunner gets it)."""
    print(line, file=sys.stderr, flush=True)


class Progress:
    """Rank 0's progress report; ``update(loss)`` after every optimizer step, ``close()`` at the end.

    ``every``: seconds between lines when stderr is not a terminal (None: ``DEFAULT_PROGRESS_SECONDS``;
    0: a line after every step). ``tty`` None: ask ``sys.stderr.isatty()``.
    """

    def __init__(self, *, total: int, initial: int, global_batch: int, every: float | None = None,
                 tty: bool | None = None):
        self.total, self.step, self.global_batch = total, initial, global_batch
        self.every = DEFAULT_PROGRESS_SECONDS if every is None else float(every)
        self.done = 0
        self.t0 = time.perf_counter()
        self.t_first = None  # end of the first step: later steps are timed from here (no start-up cost)
        self.last_line = None
        self.mark = None  # (time, steps done) at the last line: the rate is measured since then
        self.bar = None
        if _stderr_is_tty() if tty is None else tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def sec_per_step(self, now: float) -> float:
        """Seconds per step over the steps since the last line (the recent rate, so an ETA made on
        a busy machine recovers when it frees up); before the second line, since the first step."""
        if self.mark is not None and self.done > self.mark[1]:
            return (now - self.mark[0]) / (self.done - self.mark[1])
        if self.done >= 2:
            return (now - self.t_first) / (self.done - 1)
        return (now - self.t0) / max(self.done, 1)

    def update(self, loss: float) -> None:
        now = time.perf_counter()
        self.step += 1
        self.done += 1
        if self.t_first is None:
            self.t_first = now
        sps = self.sec_per_step(now)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{self.global_batch / max(sps, 1e-9):.0f}",
                                 refresh=False)
            self.bar.update(1)
            return
        if self.last_line is None:
            due = self.done >= FIRST_REPORT_STEPS or now - self.t0 >= min(FIRST_REPORT_SECONDS, self.every)
        else:
            due = now - self.last_line >= self.every
        if due:
            self.last_line, self.mark = now, (now, self.done)
            emit(progress_line(step=self.step, total=self.total, sec_per_step=sps,
                               global_batch=self.global_batch, loss=loss))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class RateLine:
    """Progress as lines on stderr: done of total, rate and ETA, one line every ``every`` seconds
    (and at the end, ``update(0, final=True)`` or ``close()``); the form piped logs get."""

    def __init__(self, total: int | None, *, what: str, unit: str = "samples", enabled: bool = True,
                 every: float = 10.0):
        self.total, self.what, self.unit, self.enabled, self.every, self.done = total, what, unit, enabled, every, 0
        self.t0 = self.last = time.perf_counter()

    def update(self, n: int, *, final: bool = False) -> None:
        self.done += n
        now = time.perf_counter()
        if not self.enabled or not (final or now - self.last >= self.every):
            return
        self.last = now
        rate = self.done / max(now - self.t0, 1e-9)
        if self.total:
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            emit(f"{self.what}: {self.done:,}/{self.total:,} {self.unit} ({self.done / self.total:.0%}), "
                 f"{rate:.1f} {self.unit}/s, ETA {fmt_duration(eta)}")
        else:
            emit(f"{self.what}: {self.done:,} {self.unit}, {rate:.1f} {self.unit}/s")

    def close(self) -> None:
        self.update(0, final=True)


def count_bar(total: int | None, *, what: str, unit: str):
    """A counter with ``update(n)`` and ``close()``: a tqdm bar on a terminal, RateLine lines otherwise."""
    if _stderr_is_tty():
        from tqdm import tqdm

        return tqdm(total=total, unit=unit, desc=what)
    return RateLine(total, what=what, unit=unit)
