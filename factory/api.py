"""The public Python API: `factory.open(URL)` gives a `Dataset` or a `View` (docs/python.md).

Both read through the contract (`factory.format`) and the library's own readers: the index by
`dataset.reader.load_index`, one sample by `dataset.reader.read_samples` (one range read, checked), a filter
by `views.views` (the very calls of `factory filter`, which is `run_filter` below), wids shard lists by
`views.wids`. `torch()` hands the opened dataset or view to trainers' reader
(`trainers.data.samples.torch_dataset`), the one `trainers train` reads through. Nothing here imports torch or
dask at import time.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from factory import format as fmt
from factory.dataset.reader import decode_npy, index_schema, load_index, read_samples
from factory.views.materialize import materialize_view
from factory.views.views import FilterResult, FilterSpec, view_of, write_view
from factory.views.wids import wids_plan, write_wids

SPLITS = ("train", "holdout", "all")

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa
    import torch


def open(url: str, *, allow_remote_shards: bool = False) -> Dataset | View:  # noqa: A001 - the API's verb
    """A dataset folder, its manifest, an s3:// (any fsspec) URL, or a view JSON: a `Dataset`, or a `View`
    for a view file (its parent dataset opened and checked against the view's parent id)."""
    res = fmt.open_dataset(url, allow_remote_shards=allow_remote_shards)
    cls = View if res.view is not None else Dataset
    return cls(url, res, allow_remote_shards=allow_remote_shards)


class Dataset:
    """The samples of a dataset (every row), read through the contract. Made by `factory.open`."""

    def __init__(self, url: str, resolved: fmt.Resolved, *, allow_remote_shards: bool = False):
        self.url = url
        self.resolved = resolved
        self.allow_remote_shards = allow_remote_shards
        self._rows: np.ndarray | None = None

    # ---------------------------------------------------------------- what it holds
    @property
    def id(self) -> str:
        """The dataset id (a view's: its view id)."""
        return self.resolved.manifest["dataset_id"]

    @property
    def manifest(self) -> dict:
        """The (parent) dataset's manifest, validated."""
        return self.resolved.manifest

    @property
    def root(self) -> str:
        """Folder or URL of the (parent) dataset."""
        return self.resolved.root

    def __len__(self) -> int:
        return int(self.resolved.samples)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, id={self.id!r}, samples={len(self)})"

    def rows(self) -> np.ndarray:
        """Global rows of the samples, sorted (int64)."""
        if self._rows is None:
            if self.resolved.accepted is not None:
                self._rows = self.resolved.accepted.all_rows()
            else:
                parts = [np.arange(s["first_row"], s["first_row"] + s["samples"], dtype=np.int64)
                         for s in sorted(self.manifest["shards"], key=lambda s: s["shard"])]
                self._rows = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        return self._rows

    def keys(self) -> list[str]:
        """Sample keys (``KEY`` of the tar members ``KEY.png`` ...), in row order."""
        return [fmt.sample_key(r) for r in self.rows().tolist()]

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str) or not key.isdigit():
            return False
        rows = self.rows()
        row = fmt.key_row(key)
        p = int(np.searchsorted(rows, row))
        return p < rows.shape[0] and int(rows[p]) == row and fmt.sample_key(row) == key

    # ---------------------------------------------------------------- samples and index
    def sample(self, key: str) -> dict[str, Any]:
        """One sample, decoded: ``image`` HxWx3 uint8, ``mask`` HxW bool, ``latent`` float32, ``stats`` (its
        JSON record), ``teacher`` HxW float32 probability (relabelled datasets), ``raw_mask`` HxW bool (when
        kept), ``key``. One range read of its shard (format version 2); members checked by the contract."""
        if key not in self:
            raise fmt.FactoryError(f"{self.url}: no sample {key!r} here (keys() lists the {len(self)} it holds)")
        row = fmt.key_row(key)
        members = read_samples(self.resolved, [row])[row]
        return decode_members(members, self.manifest, key)

    def table(self, columns: list[str] | None = None) -> pa.Table:
        """The index rows of the samples (every column, or ``columns``), in shard order: a pyarrow Table."""
        import pyarrow as pa

        cols = None if columns is None else list(dict.fromkeys(columns))
        schema = index_schema(self.root, self.manifest)
        unknown = [c for c in cols or () if c not in schema.names]
        if unknown:
            raise fmt.FactoryError(f"{self.url}: no index column {unknown[0]!r} (columns: {', '.join(schema.names)})")
        read = cols if cols is None or self.resolved.accepted is None else list(dict.fromkeys([*cols, "row"]))
        t = load_index(self.root, self.manifest, read)
        if t is None:
            return pa.table({c: pa.array([], schema.field(c).type) for c in (schema.names if cols is None else cols)})
        if self.resolved.accepted is not None:
            t = t.filter(pa.array(self.resolved.accepted.flags(t.column("row").to_numpy())))
        return t if cols is None else t.select(cols)

    # ---------------------------------------------------------------- views
    def filter(self, where: str | None = None, *, max_fg: float | None = None, min_fg: float | None = None,
               histogram: str = "off", min_components: int | None = None,
               max_components: int | None = None) -> View:
        """The view of these samples that pass every given condition (those of `factory filter`: the same
        rows, counts and bytes once saved). Reads only index columns, never a pixel."""
        return self.apply(FilterSpec(max_fg=max_fg, min_fg=min_fg, histogram=histogram, min_components=min_components,
                                     max_components=max_components, where=where))

    def apply(self, spec: FilterSpec, *, scheduler: str | None = None, workers: int = 0) -> View:
        """`filter` with the flags as one `views.views.FilterSpec`; ``scheduler``: as shard-range tasks on that
        dask cluster, or ``workers`` local worker processes (the same view)."""
        view = view_of(self.url, self.resolved, spec, scheduler=scheduler, workers=workers,
                       allow_remote_shards=self.allow_remote_shards)
        res = fmt.Resolved(self.root, self.manifest, view,
                           fmt.AcceptedRows(view["accepted"], view["format_version"], self.url))
        return View(self.url, res, allow_remote_shards=self.allow_remote_shards, saved=False)

    # ---------------------------------------------------------------- readers for models and other libraries
    def torch(self, split: str = "train", seed: int = 0, transform: Callable | None = None, *,
              access: str = "stream", **options: Any) -> torch.utils.data.Dataset:
        """A torch dataset of ``(image, mask)`` float tensors (3xHxW in [-1, 1], 1xHxW in {0, 1}; or what
        ``transform(image, mask)`` returns) over ``split`` ("train", "holdout" or "all"), read by trainers'
        reader in `trainers train`'s seeded, DDP-aware order with its checks. ``access="stream"``: an
        IterableDataset (shards read in order, each hashed as it streams); ``"random"``: map-style (one range
        read a sample), ``.sampler()`` its order. ``options``: holdout_permille (10), batch_size (the
        DataLoader's, 1), epoch, consumed (resume), world_size / rank (torch.distributed's), shuffle_window,
        flip (False), mask, mask_source, verify (`trainers.data.samples.torch_dataset`)."""
        from trainers.data.samples import torch_dataset

        if split not in SPLITS:
            raise fmt.FactoryError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        return torch_dataset(self.resolved, split="val" if split == "holdout" else split, seed=seed,
                             transform=transform, access=access, **options)

    def shard_urls(self) -> list[str]:
        """The shards holding these samples (a view: those with an accepted row), in shard order: absolute
        local paths or the store's URLs, for readers of WebDataset tars (webdataset, Hugging Face datasets)."""
        desc, _ = wids_plan(self.resolved, name=self.id)
        return [e["url"] for e in desc["shardlist"]]

    def export_wids(self, out: str, indices: str) -> dict:
        """Write the wids shard list of the shards holding these samples (``out``, JSON) and the samples'
        indices in its numbering (``indices``, .npy): ``Subset(wids.ShardListDataset(out), np.load(indices))``
        is these samples. Returns a summary (shards, samples, files)."""
        return write_wids(self.resolved, out, indices, name=self.id)


class View(Dataset):
    """The accepted samples of a view (a filter over a dataset's index). From `factory.open(VIEW.json)` or
    `Dataset.filter`; `save` writes it as `factory filter` does."""

    def __init__(self, url: str, resolved: fmt.Resolved, *, allow_remote_shards: bool = False, saved: bool = True):
        super().__init__(url, resolved, allow_remote_shards=allow_remote_shards)
        self.saved = saved

    @property
    def view(self) -> dict:
        """The view record (what the view JSON holds)."""
        return self.resolved.view

    @property
    def id(self) -> str:
        return self.view["view_id"]

    @property
    def parent_id(self) -> str:
        return self.view["parent"]["dataset_id"]

    @property
    def counts(self) -> dict:
        """candidates, input, accepted, rejected: as `factory filter` reports them."""
        return dict(self.view.get("counts", {}))

    @property
    def predicate(self) -> str:
        return self.view["predicate"]

    def save(self, path: str, *, overwrite: bool = False) -> bool:
        """Write the view to ``path`` (*.json; local or URL): the bytes `factory filter --out path` writes.
        The same content again is a no-op (False); another view there is refused unless ``overwrite``."""
        if not path.endswith(".json"):
            raise fmt.FactoryError(f"{path}: a view is a JSON file; name it *.json")
        view = dict(self.view, parent={**self.view["parent"], "url": fmt.parent_url_for(path, self.root)})
        written = write_view(view, path, overwrite)
        self.resolved = fmt.Resolved(self.root, self.manifest, view, self.resolved.accepted)
        self.url, self.saved = path, True
        return written


def decode_members(members: dict[str, bytes], manifest: dict, key: str) -> dict[str, Any]:
    """A sample's encoded members as arrays (see `Dataset.sample`); each image's header checked first."""
    side = manifest.get("resolution")
    ext = fmt.image_member(manifest)
    out: dict[str, Any] = {"key": key}

    def pixels(name: str, mode: str, expect: str) -> np.ndarray:
        if name not in members:
            raise fmt.FormatError(f"sample {key} has no member {key}.{name}")
        where = f"sample {key}.{name}"
        with fmt.open_image_checked(members[name], where, side=side) as im:
            if im.format != expect:
                raise fmt.FormatError(f"{where} is {im.format}, expected {expect}")
            try:
                return np.asarray(im.convert(mode))
            except Exception as e:  # PIL raises many types for corrupt data
                raise fmt.FormatError(f"{where}: cannot decode ({e})") from None

    out["image"] = pixels(ext, "RGB", fmt.IMAGE_FORMATS[ext])
    out["mask"] = pixels(fmt.EXT_MASK, "L", "PNG") > 127
    if fmt.EXT_RAW_MASK in members:
        out["raw_mask"] = pixels(fmt.EXT_RAW_MASK, "L", "PNG") > 127
    if fmt.EXT_TEACHER in members:
        out["teacher"] = pixels(fmt.EXT_TEACHER, "L", "PNG").astype(np.float32) / 255.0
    if fmt.EXT_LATENT in members:
        out["latent"] = decode_npy(members[fmt.EXT_LATENT], f"sample {key}").astype(np.float32, copy=False)
    if fmt.EXT_META in members:
        out["stats"] = fmt.loads_json(members[fmt.EXT_META], f"sample {key}.{fmt.EXT_META}")
    return out


def run_filter(url: str, spec: FilterSpec, out: str, *, overwrite: bool = False, allow_remote_shards: bool = False,
               materialize: bool = False, shard_size: int | None = None, log=None,
               scheduler: str | None = None, workers: int = 0) -> FilterResult:
    """`factory filter`: `open(url).apply(spec)`, then `View.save(out)` (or the view materialized at ``out``)."""
    if not out:
        raise fmt.FactoryError("--out is required: a VIEW.json path (or a folder with --materialize)")
    if shard_size is not None and not materialize:
        raise fmt.FactoryError("--shard-size only applies with --materialize")
    if not materialize and not out.endswith(".json"):
        raise fmt.FactoryError(f"--out {out}: a view is a JSON file; name it *.json "
                               "(or add --materialize for a dataset folder)")
    view = open(url, allow_remote_shards=allow_remote_shards).apply(spec, scheduler=scheduler, workers=workers)
    if materialize:
        man = materialize_view(url, view.view, out, shard_size=shard_size, overwrite=overwrite,
                               allow_remote_shards=allow_remote_shards, log=log)
        return FilterResult(view.view, out, True, man)
    written = view.save(out, overwrite=overwrite)
    return FilterResult(view.view, out, written)


__all__ = ["open", "Dataset", "View", "run_filter", "decode_members"]
