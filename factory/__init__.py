"""factory: turn a pretrained generator into a frozen, verifiable image/mask dataset.

``factory.open(URL)`` opens a dataset folder, an s3:// URL or a view file as a `Dataset` or `View`
(`factory.api`, docs/python.md); importing ``factory`` loads nothing else.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from factory.api import Dataset, View


def open(url: str, *, allow_remote_shards: bool = False) -> Dataset | View:  # noqa: A001 - the API's verb
    """A dataset folder/URL or a view JSON as a `factory.api.Dataset` or `factory.api.View`."""
    from factory.api import open as open_api

    return open_api(url, allow_remote_shards=allow_remote_shards)


def __getattr__(name: str):
    if name in ("Dataset", "View"):
        import factory.api

        return getattr(factory.api, name)
    raise AttributeError(f"module 'factory' has no attribute {name!r}")
