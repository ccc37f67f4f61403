"""Shared fixtures: the reference files in ../shared (or $FACTORY_SHARED), skipped with a reason when absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def shared_dir() -> Path | None:
    env = os.environ.get("FACTORY_SHARED")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared")
    for c in candidates:
        if (c / "reference").is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def shared() -> Path:
    d = shared_dir()
    if d is None:
        pytest.skip("reference files absent: set FACTORY_SHARED to the shared/ folder (reference/, data/)")
    return d


@pytest.fixture(scope="session")
def golden(shared) -> Path:
    d = shared / "reference" / "bigbigan" / "golden_small"
    if not d.is_dir():
        pytest.skip(f"golden vectors absent at {d}")
    return d


@pytest.fixture(scope="module")
def torch_one_thread():
    """One intra-op thread for a module of small models: on 2 shared cores this is several
    times faster than the default (threads spin against other processes)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
