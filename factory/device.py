"""The factory's one device choice: `--device` when given, else this dask worker's GPU, else cuda:0, else cpu."""
from __future__ import annotations

import contextlib

from factory.format import FactoryError


def pick_device(device: str | None) -> str:
    """`device` when given (unchecked); else ``cuda:<dask worker index mod GPUs>`` (``cuda:0`` outside a
    dask worker) when CUDA is present; else ``cpu``."""
    import torch

    if device:
        return device
    if torch.cuda.is_available():
        try:
            from distributed import get_worker

            idx = int(str(get_worker().name).rsplit("-", 1)[-1]) % torch.cuda.device_count()
        except (ImportError, ValueError):
            idx = 0
        return f"cuda:{idx}"
    return "cpu"


def torch_device(device: str | None):
    """`pick_device` as a ``torch.device``; a bad ``--device`` is a one-line FactoryError."""
    import torch

    try:
        return torch.device(pick_device(device))
    except (RuntimeError, TypeError) as e:
        raise FactoryError(f"bad --device {device!r} ({e}); use 'cpu' or 'cuda'") from None


@contextlib.contextmanager
def pinned_threads(n: int):
    """torch's CPU threads set to ``n`` for the block, restored after. CPU kernels may split a sum by thread,
    so a run's floats can depend on the thread count; a pinned count makes reruns bit-identical."""
    import torch

    if not (isinstance(n, int) and n > 0):
        raise FactoryError(f"--threads must be a positive number of CPU threads, got {n!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_record(device) -> dict:
    """What a result's floats depend on besides its config: torch version, CPU threads, device."""
    import torch

    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device)}
