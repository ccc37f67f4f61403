"""TODO docstring."""
from __future__ import annotations


def pick_device(device: str | None) -> str:
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
