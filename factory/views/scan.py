"""A filter's outcome over a piece of the index, from Arrow's buffers.

* ``column_np``: a numeric or boolean Arrow column as numpy without a conversion (fixed-width values viewed in
  place, booleans unpacked from their bitmap, nulls of a boolean as false).
* ``shard_bitmaps``: the accepted rows of every shard of a piece in the contract's compact form
  (`format.encode_rows`) from one scatter and one packing of the piece's mask, not one packing per shard.
* ``Stats``: the view's statistics (those of `dataset.card.SummaryStats`) from the same decoded columns,
  summed with numpy under the mask; ``result`` gives the same document.
* ``freed_memory_kept``: while a filter runs, glibc's malloc serves arrays up to 32 MB from its heaps and keeps
  what is freed, so each part's temporaries reuse the previous part's pages instead of faulting in fresh ones.
"""
from __future__ import annotations

import base64
import contextlib
import ctypes

import numpy as np

from factory.dataset.card import SummaryStats, top16_counts

_DTYPES = {"int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64, "uint8": np.uint8,
           "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64, "float": np.float32, "double": np.float64}


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_DEFAULT_THRESHOLD = 128 * 1024


@contextlib.contextmanager
def freed_memory_kept():
    """glibc (elsewhere nothing): large allocations from the heap and no trimming, the defaults back after.
    A page fault costs 10-20 us on a busy virtual machine; a 10M-row filter faulted in ~55k pages (~0.5 of
    its ~3.3 CPU s), with this ~40k."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        yield
        return
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    try:
        yield
    finally:
        mallopt(_M_MMAP_THRESHOLD, _DEFAULT_THRESHOLD)
        mallopt(_M_TRIM_THRESHOLD, 2 * _DEFAULT_THRESHOLD)


def _chunk_np(a) -> np.ndarray | None:
    n, off = len(a), a.offset
    name = str(a.type)
    if name == "bool":
        bufs = a.buffers()
        out = np.unpackbits(np.frombuffer(bufs[1], np.uint8), count=off + n, bitorder="little")[off:].view(bool)
        if a.null_count:
            out &= np.unpackbits(np.frombuffer(bufs[0], np.uint8), count=off + n, bitorder="little")[off:].view(bool)
        return out
    dt = _DTYPES.get(name)
    if dt is None or a.null_count:
        return None
    return np.frombuffer(a.buffers()[1], dt, count=n, offset=off * np.dtype(dt).itemsize)


def column_np(col) -> np.ndarray | None:
    """A boolean (nulls as False) or null-free numeric Arrow Array / ChunkedArray as a numpy array (read-only
    view of Arrow's buffer; booleans unpacked); None for any other column."""
    chunks = col.chunks if hasattr(col, "chunks") else [col]
    if not chunks:
        return None
    arrs = [_chunk_np(c) for c in chunks]
    if any(a is None for a in arrs):
        return None
    return arrs[0] if len(arrs) == 1 else np.concatenate(arrs)


def shard_bitmaps(shard_col: np.ndarray, row_col: np.ndarray, mask: np.ndarray) -> dict[str, dict] | None:
    """``{shard: compact form}`` of every shard of a piece whose shards are each one run of consecutive rows (a
    compacted index's part); None for any other layout. Each shard's bitmap spans its first to last accepted
    row, as `format.encode_rows` packs it. All at once: the accepted rows are scattered into one bit array in
    which each shard's span starts on a base64 group (3 bytes), packed and base64-encoded once, each span's
    padding marked, and the text cut at the spans' group offsets."""
    n = len(shard_col)
    if n == 0:
        return {}
    cuts = np.flatnonzero(shard_col[1:] != shard_col[:-1]) + 1
    starts, ends = np.concatenate([[0], cuts]), np.concatenate([cuts, [n]])
    sids = shard_col[starts]
    # rows increasing, and each shard's last minus first row its row count less one: consecutive rows
    if not ((row_col[1:] > row_col[:-1]).all() and (row_col[ends - 1] - row_col[starts] == ends - 1 - starts).all()
            and len(np.unique(sids)) == len(starts)):
        return None
    idx = np.flatnonzero(mask)
    lo, hi = np.searchsorted(idx, starts), np.searchsorted(idx, ends)
    count = hi - lo
    has = count > 0
    first = np.zeros(len(starts), np.int64)
    last = np.full(len(starts), -1, np.int64)
    first[has], last[has] = idx[lo[has]], idx[hi[has] - 1]
    nbits = last - first + 1  # 0 where a shard accepts nothing
    nbytes = (nbits + 7) // 8
    groups = (nbytes + 2) // 3
    g_end = np.cumsum(groups)
    g_start = g_end - groups
    flat = np.zeros(24 * int(g_end[-1]), bool)
    flat[idx + np.repeat(24 * g_start - first, count)] = True
    text = np.frombuffer(base64.b64encode(np.packbits(flat, bitorder="little").tobytes()), np.uint8).copy()
    tail = 4 * g_end
    text[tail[nbytes % 3 == 1] - 2] = ord("=")  # a last group of 1 byte ends in "==", of 2 bytes in "="
    text[tail[nbytes % 3 > 0] - 1] = ord("=")
    chars = text.tobytes().decode("ascii")
    firsts = np.where(has, row_col[first], 0).tolist()
    return {str(s): {"first": f, "n": k, "bits": chars[a:b]}
            for s, f, k, a, b in zip(sids.tolist(), firsts, nbits.tolist(), (4 * g_start).tolist(), tail.tolist())}


class Stats(SummaryStats):
    """`SummaryStats` whose ``add`` sums numpy views of the columns under a numpy mask (the same counts and
    sums; floats summed in float64), falling back to Arrow's for a column with nulls or of another type."""

    def add(self, table, mask: np.ndarray | None = None) -> "Stats":
        names = table.column_names
        cols = {}
        for c in ("fg_ratio", "pass_area", "pass_hist_reference", "pass_hist_paper", "n_components_raw",
                  "n_components", *(["true_iou"] if "true_iou" in names else [])):
            cols[c] = column_np(table.column(c))
            if cols[c] is None or c.startswith("pass_") != (cols[c].dtype == bool):
                return super().add(table, mask)  # type: ignore[return-value]
        if mask is None:
            mask = np.ones(table.num_rows, bool)
        idx = np.flatnonzero(mask)  # the accepted rows: taken by position (a boolean gather costs ~10x more)
        n = len(idx)
        if n == 0:
            return self
        self.n += n
        fg = np.asarray(cols["fg_ratio"][idx], np.float32)
        self.fg.append(fg)
        self.fg_counts = top16_counts(fg)  # the quantiles' histogram, made here in the piece's thread
        area, ref = cols["pass_area"] & mask, cols["pass_hist_reference"] & mask
        both = area & ref
        for k, v in zip(self.COUNTS, (area, ref, cols["pass_hist_paper"] & mask, both)):
            self.counts[k] += int(np.count_nonzero(v))
        self.comp["raw"] += int(cols["n_components_raw"][idx].sum(dtype=np.int64))
        self.comp["clean"] += int(cols["n_components"][idx].sum(dtype=np.int64))
        if "true_iou" in cols:
            iou = cols["true_iou"]
            self.iou = self.iou or [0.0, 0.0]
            self.iou[0] += float(iou[idx].sum(dtype=np.float64))
            self.iou[1] += float(iou[np.flatnonzero(both)].sum(dtype=np.float64))
        return self
