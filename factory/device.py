"""The factory's one device choice: `--device` when given, else this dask worker's GPU, else cuda:0, else cpu."""
from __future__ import annotations

from factory.errors import FactoryError


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
