"""Generator protocol and registry.

A generator is a torch-module-like object with:

- ``dim_z: int`` and ``resolution: int``;
- ``device: torch.device``;
- ``__call__(z) -> float32 [B, 3, H, W] in [-1, 1]`` for ``z`` float32 [B, dim_z] on its device;
- ``identity() -> dict``: what determines its outputs (name, config, weights sha256), stored in manifests;
- optionally ``named_directions() -> dict[str, np.ndarray]`` (unit vectors of width dim_z)
  and ``true_mask(z) -> bool [B, H, W]`` (ground truth, test worlds only).

Register a new generator with ``@register("name")`` on a function taking keyword
options and returning such an object. The engine only ever calls load_generator.
"""
from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import torch

from factory.errors import FactoryError


@runtime_checkable
class Generator(Protocol):
    dim_z: int
    resolution: int
    device: torch.device

    def __call__(self, z: torch.Tensor) -> torch.Tensor: ...

    def identity(self) -> dict: ...


_REGISTRY: dict[str, Callable[..., Generator]] = {}


def register(name: str):
    def deco(fn):
        _REGISTRY[name] = fn
        return fn

    return deco


def _load_builtins() -> None:
    # Imported lazily so that `import factory.generators` stays cheap.
    from factory.generators import shapes  # noqa: F401

    try:
        from factory.generators import bigbigan  # noqa: F401
    except ImportError as e:  # pragma: no cover - only while the module is missing
        if "bigbigan" not in str(e):
            raise


def known_generators() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def load_generator(name: str, **options) -> Generator:
    """Build generator `name` with its keyword options (device=, dtype=, weights=, ...)."""
    _load_builtins()
    if name not in _REGISTRY:
        raise FactoryError(
            f"unknown generator {name!r}; known generators: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name](**options)
