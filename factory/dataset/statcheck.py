"""The index's statistics and decisions recomputed from a shard's stored members and compared exactly.

They depend on the stored bytes only, never on the platform that made them, so `factory verify`
recomputes them for every sample of every shard: ``fg_ratio`` and ``n_components`` from the clean
mask (and the cleanup rule: no kept component at or below ``cc_ratio`` times the largest);
``fg_ratio_raw`` and ``n_components_raw`` from the raw mask where the dataset keeps it, else what
they must be beside the clean ones; ``hist_maxima`` from ``hist``; the three decisions from their
columns and the spec's ``max_fg``; each sample's JSON against its index row. What needs the generator
(``hist`` itself, ``hist_gray_maxima_inner``, ``true_iou``) is `verify --regenerate`'s part.
"""
from __future__ import annotations

import importlib.util
import io
import json

import numpy as np

from factory import format as fmt

NEEDED = ("key", "fg_ratio", "n_components", "fg_ratio_raw", "n_components_raw", "hist", "hist_maxima",
          "hist_gray_maxima_inner", "pass_area", "pass_hist_reference", "pass_hist_paper")


def decode_mask(data: bytes, where: str) -> np.ndarray:
    """A stored mask as bool [H, W]; FormatError unless it is a one-channel PNG of 0 and 255 only."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            a = np.asarray(im)
    except Exception as e:  # noqa: BLE001 - any undecodable member is one problem line
        raise fmt.FormatError(f"{where} does not decode: {type(e).__name__}") from None
    if a.ndim != 2 or a.dtype != np.uint8 or not ((a == 0) | (a == 255)).all():
        raise fmt.FormatError(f"{where} is not a 0/255 mask")
    return a > 127


def masks_of(samples: dict[str, dict[str, bytes]], keys: list[str], ext: str):
    """bool [B, H, W] of member `ext` of every key (FormatError naming the first that is missing or bad)."""
    import torch

    arrays = []
    for k in keys:
        if ext not in samples.get(k, {}):
            raise fmt.FormatError(f"{k}.{ext} missing")
        arrays.append(decode_mask(samples[k][ext], f"{k}.{ext}"))
    if len({a.shape for a in arrays}) > 1:
        raise fmt.FormatError(f"the {ext} members differ in size")
    return torch.from_numpy(np.stack(arrays))


def recomputed(samples: dict[str, dict[str, bytes]], table, *, members: dict, spec: dict) -> dict[str, np.ndarray]:
    """Every column this module can recompute, for the rows of index `table` (same order)."""
    import torch

    from factory.masks import cc_cleanup as cleanup
    from factory.stats import count_maxima, fg_ratio

    keys = table.column("key").to_pylist()
    clean = masks_of(samples, keys, members.get("mask", fmt.EXT_MASK))
    # scipy's labelling where installed (the factory's extra), else the tensor algorithm: identical results
    backend = "scipy" if importlib.util.find_spec("scipy") else "torch"

    def cc_cleanup(mask, ratio):
        return cleanup(mask, ratio, backend=backend)

    ratio = spec.get("cc_ratio")
    ratio = float(ratio) if isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and 0 <= ratio <= 1 else None
    # the cleanup of a clean mask: its components (n_all) and those the rule keeps (all of them, if clean)
    _, n_all, n_kept = cc_cleanup(clean, ratio or 0.0)
    out = {"fg_ratio": fg_ratio(clean).numpy(), "n_components": n_all.numpy()}
    if ratio is not None:
        out["clean_is_clean"] = (n_kept == n_all).numpy()
        raw_ext = members.get("raw_mask")
        if raw_ext:
            raw = masks_of(samples, keys, raw_ext)
            again, n_raw, _ = cc_cleanup(raw, ratio)
            out.update(fg_ratio_raw=fg_ratio(raw).numpy(), n_components_raw=n_raw.numpy(),
                       clean_from_raw=(again == clean).flatten(1).all(1).numpy())
    hist = np.asarray(table.column("hist").to_pylist(), np.float32).reshape(len(keys), -1)
    out["hist_maxima"] = count_maxima(torch.from_numpy(hist)).numpy()
    max_fg = spec.get("max_fg")
    if isinstance(max_fg, (int, float)) and not isinstance(max_fg, bool):
        out["pass_area"] = out["fg_ratio"] < np.float32(max_fg)
    out["pass_hist_reference"] = table.column("hist_maxima").to_numpy() >= 2
    out["pass_hist_paper"] = table.column("hist_gray_maxima_inner").to_numpy() >= 2
    return out


def meta_problems(samples: dict[str, dict[str, bytes]], table, meta_ext: str) -> list[str]:
    """Each sample's JSON member against its index row (key, row, shard, fg_ratio, decisions, class)."""
    cols = [c for c in ("key", "row", "shard", "fg_ratio", "pass_area", "pass_hist_reference", "class")
            if c in table.column_names]
    for rec in table.select(cols).to_pylist():
        body = samples.get(rec["key"], {}).get(meta_ext)
        if body is None:
            continue
        try:
            meta = json.loads(body)
        except ValueError:
            return [f"{rec['key']}.{meta_ext} is not JSON"]
        bad = [c for c in cols if c in meta and meta[c] != rec[c]]
        if bad or not isinstance(meta, dict):
            return [f"{rec['key']}.{meta_ext} disagrees with its index row in {', '.join(bad) or 'shape'}"]
    return []


def stat_problems(samples: dict[str, dict[str, bytes]], idata, *, members: dict, spec: dict | None) -> list[str]:
    """Problems (one line each, naming a first bad key) of a shard's index statistics and decisions
    against what its stored members give (`samples`: key -> ext -> bytes; `idata`: its index fragment's
    bytes, or its rows as a table, e.g. its slice of a compacted index's part)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(idata, pa.Table):
        if not set(NEEDED) <= set(idata.column_names):
            return []
        table = idata
    else:
        try:
            pf = pq.ParquetFile(pa.BufferReader(idata))
            if not set(NEEDED) <= set(pf.schema_arrow.names):
                return []  # not an index of generated candidates (checked elsewhere)
            table = pf.read(use_threads=False)
        except Exception:  # noqa: BLE001 - an unreadable fragment is reported by the index check
            return []
    if not table.num_rows:
        return []
    try:
        got = recomputed(samples, table, members=members, spec=spec or {})
    except fmt.FormatError as e:
        return [str(e)]
    keys = table.column("key").to_pylist()
    problems = []
    for name, value in got.items():
        if name in ("clean_is_clean", "clean_from_raw"):
            bad = np.flatnonzero(~value)
            what = ("mask keeps a component the cleanup rule (cc_ratio) drops" if name == "clean_is_clean"
                    else "mask is not the cleanup of its raw mask")
        else:
            bad = np.flatnonzero(table.column(name).to_numpy() != value)
            what = f"index {name} differs from what the stored members give"
        if bad.size:
            problems.append(f"{what} for {bad.size} sample(s), e.g. {keys[int(bad[0])]}")
    if "fg_ratio_raw" not in got:  # no raw mask kept: the raw columns must still fit the clean ones
        fg, fg_raw = table.column("fg_ratio").to_numpy(), table.column("fg_ratio_raw").to_numpy()
        n, n_raw = table.column("n_components").to_numpy(), table.column("n_components_raw").to_numpy()
        bad = np.flatnonzero((fg_raw < fg) | (n_raw < n) | ((n_raw == n) & (fg_raw != fg)))
        if bad.size:
            problems.append(f"index fg_ratio_raw / n_components_raw cannot be the raw mask's of the stored mask for "
                            f"{bad.size} sample(s), e.g. {keys[int(bad[0])]}")
    return problems + meta_problems(samples, table, members.get("meta", fmt.EXT_META))
