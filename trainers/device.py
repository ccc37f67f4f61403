"""The one place trainers turns a ``--device`` value into a torch.device."""
from __future__ import annotations

import torch

from trainers.errors import TrainersError


class DeviceError(TrainersError, ValueError):
    """A --device value that is malformed or names hardware that is not there."""


def resolve_device(device: str | torch.device | None = "auto", *, local_rank: int = 0) -> torch.device:
    """``auto``/None: CUDA if available, else CPU; ``cuda`` means ``cuda:<local_rank>`` (torchrun's
    LOCAL_RANK; 0 outside torchrun); anything else is parsed by torch. Errors are one line."""
    if isinstance(device, torch.device):
        return device
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local_rank}"
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise DeviceError(f"bad --device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {device} asked for CUDA but none is available; use --device cpu")
    return dev
