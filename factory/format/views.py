"""The contract's accepted rows of a view: the compact form (format version 2) and the lists of version 1.

Version 2 stores, per parent shard, a bitmap over the rows ``[first, first + n)``, where ``first``
is the smallest and ``first + n - 1`` the largest accepted row of that shard:
``{"first": F, "n": N, "bits": base64(packbits(flags, bitorder="little"))}`` (``{"first": 0, "n": 0,
"bits": ""}`` for a shard with no accepted row). The form is a pure function of the set of rows, so
``accepted_sha256`` (over its canonical JSON) and the view id stay content addresses. A 10M-row
view is at most ~1.7 MB of bits. Version 1 views store ``{"shard": [rows...]}`` and still read.

`AcceptedRows` reads either form lazily: a shard's rows are decoded only when asked for.
"""
from __future__ import annotations

import base64
import binascii
import re
from operator import itemgetter
from typing import Iterator, Mapping

import numpy as np

from factory.format.errors import FormatError
from factory.format.names import canonical_json, sha256_bytes

_SHARD = re.compile(r"^\d+$")
_BASE64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="  # written as is by the JSON encoder
_FORM = ("first", "n", "bits")
_DIGITS = re.compile(r"[0-9]+")
_FORM_KEYS = {"first", "n", "bits"}


def encode_rows(rows: np.ndarray) -> dict:
    """Compact form of one shard's accepted rows (any order; duplicates ignored)."""
    rows = np.asarray(rows, np.int64)
    if rows.size > 1 and not (rows[1:] > rows[:-1]).all():
        rows = np.unique(rows)
    if rows.size == 0:
        return {"first": 0, "n": 0, "bits": ""}
    first = int(rows[0])
    n = int(rows[-1]) - first + 1
    flags = np.zeros(n, bool)
    flags[rows - first] = True
    return {"first": first, "n": n, "bits": base64.b64encode(np.packbits(flags, bitorder="little").tobytes()).decode()}


def _checked_form(obj: dict, where: str) -> tuple[int, int, bytes]:
    """(first, n, the bitmap's bytes) of one shard's compact form, its structure, base64 and length checked."""
    if type(obj) is not dict or obj.keys() != _FORM_KEYS:
        raise FormatError(f"{where}: accepted rows of a shard must be {{first, n, bits}}")
    first, n, bits = obj["first"], obj["n"], obj["bits"]
    # exact types (as JSON makes them; a bool is not an int here), checked without a call per value
    if type(first) is not int or type(n) is not int or first < 0 or n < 0 or type(bits) is not str:
        raise FormatError(f"{where}: accepted rows: first and n must be integers >= 0, bits a string")
    try:
        raw = binascii.a2b_base64(bits, strict_mode=True)  # what base64.b64decode(validate=True) calls
    except (binascii.Error, ValueError):
        raise FormatError(f"{where}: accepted bits are not base64") from None
    if len(raw) != (n + 7) // 8:
        raise FormatError(f"{where}: accepted bits hold {len(raw)} bytes, {n} rows need {(n + 7) // 8}")
    return first, n, raw


def decode_rows(obj: dict, where: str = "view") -> np.ndarray:
    """Sorted int64 rows of one shard's compact form; FormatError if it is malformed."""
    first, n, raw = _checked_form(obj, where)
    flags = np.unpackbits(np.frombuffer(raw, np.uint8), count=n, bitorder="little").astype(bool)
    if n and not (flags[0] and flags[-1]):
        raise FormatError(f"{where}: accepted bits must start and end with an accepted row (canonical form)")
    return first + np.flatnonzero(flags).astype(np.int64)


def unpack_many(objs: list, where: str = "view") -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """(firsts, ns, every shard's bits unpacked end to end, each shard's first bit position), each form checked
    as `decode_rows` checks it (structure, base64, length, canonical first and last bit)."""
    firsts, ns, blobs = [], [], []
    for obj in objs:
        first, n, raw = _checked_form(obj, where)
        firsts.append(first)
        ns.append(n)
        blobs.append(raw)
    ns_a = np.array(ns, np.int64)
    flat = np.unpackbits(np.frombuffer(b"".join(blobs), np.uint8), bitorder="little").view(bool)
    byte_start = 8 * np.concatenate([[0], np.cumsum((ns_a + 7) // 8)[:-1]]).astype(np.int64)
    nz = ns_a > 0
    if nz.any() and not (flat[byte_start[nz]] & flat[byte_start[nz] + ns_a[nz] - 1]).all():
        raise FormatError(f"{where}: accepted bits must start and end with an accepted row (canonical form)")
    return firsts, ns_a, flat, byte_start


def count_many(objs: list, where: str = "view") -> int:
    """How many rows many shards' compact forms accept (each checked as `decode_rows` checks it)."""
    if not objs:
        return 0
    _, ns_a, flat, byte_start = unpack_many(objs, where)
    total = int(np.count_nonzero(flat))
    pad = (-ns_a) % 8  # bits after the n-th of each shard's last byte: not rows
    for k in range(1, 8):
        ends = (byte_start + 8 * ((ns_a + 7) // 8))[pad == k]
        for j in range(1, k + 1):
            total -= int(np.count_nonzero(flat[ends - j]))
    return total


def decode_many(objs: list, where: str = "view") -> tuple[np.ndarray, np.ndarray]:
    """(rows, position in `objs`) of every accepted row of many shards' compact forms, in order: what
    `decode_rows` gives each, checked alike, decoded together (a 100k-shard view: one unpacking, not 100k)."""
    if not objs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    firsts, ns_a, flat, byte_start = unpack_many(objs, where)
    if not ns_a.sum():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # set bits only: each one's shard by a binary search over the shards' first bits, padding bits dropped
    bits = np.flatnonzero(flat)
    owner = np.searchsorted(byte_start, bits, side="right") - 1
    within = bits - byte_start[owner]
    real = within < ns_a[owner]
    if not real.all():
        owner, within = owner[real], within[real]
    return np.asarray(firsts, np.int64)[owner] + within, owner


def mark_many(objs: list, flags: np.ndarray, unpacked: tuple) -> None:
    """Set ``flags[first:first + n]`` (``flags`` indexed by row) to the bits of each of many shards' compact
    forms, ``unpacked`` being their `unpack_many` (whose bounds the caller checked): a slice copy per shard,
    no array of rows (a 100M-row view: one byte a row)."""
    firsts, ns_a, flat, byte_start = unpacked
    for f, n, b in zip(firsts, ns_a.tolist(), byte_start.tolist()):
        if n:
            flags[f:f + n] = flat[b:b + n]


def encode_accepted(rows_by_shard: Mapping[int, np.ndarray]) -> dict[str, dict]:
    """The version-2 ``accepted`` of a view: shard id (string) -> compact rows."""
    return {str(int(k)): encode_rows(v) for k, v in rows_by_shard.items()}


def plain_forms(accepted: Mapping) -> tuple[list[str], list[int], list[int], list[str]] | None:
    """(shards, firsts, ns, bits) of a version-2 ``accepted``, in its order, when every entry is a compact form
    of plain values (ASCII digit shard, integers, base64 text, keys in the order first, n, bits), whose JSON
    is then written without an encoder; None when any entry is not. Checked a column at a time."""
    keys, vals = list(accepted), list(accepted.values())
    if not vals:
        return [], [], [], []
    if set(map(type, vals)) != {dict} or set(map(tuple, vals)) != {_FORM} or set(map(type, keys)) != {str}:
        return None
    firsts, ns, bits = (list(map(itemgetter(f), vals)) for f in _FORM)
    if set(map(type, firsts)) | set(map(type, ns)) != {int} or set(map(type, bits)) != {str}:
        return None
    try:
        text = "".join(bits).encode("ascii")
    except UnicodeEncodeError:
        return None
    if not (all(keys) and _DIGITS.fullmatch("".join(keys))) or text.translate(None, _BASE64):
        return None
    return keys, firsts, ns, bits


def accepted_sha256(accepted: dict) -> str:
    """Hash of a view's ``accepted`` as stored (compact form, or version 1's lists), the third input of `view_id`."""
    return sha256_bytes(canonical_json(accepted))


class AcceptedRows(Mapping):
    """A view's accepted rows, shard id -> sorted int64 rows, decoded per shard on access (either version).

    ``count(shard)`` and ``total()`` need no decoding for lists; ``flags(row_col)`` marks an index's rows.
    """

    def __init__(self, accepted: dict, version: int, where: str = "view"):
        self.raw, self.version, self.where = accepted, version, where
        self.ids = sorted(int(k) for k in accepted)

    def __getitem__(self, shard: int) -> np.ndarray:
        v = self.raw[str(int(shard))]
        if self.version == 1:
            return np.unique(np.asarray(v, np.int64))
        return decode_rows(v, f"{self.where}: shard {shard}")

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, shard) -> bool:
        return str(shard) in self.raw

    def count(self, shard: int) -> int:
        v = self.raw.get(str(int(shard)))
        if v is None:
            return 0
        return len(v) if self.version == 1 else int(self[shard].shape[0])

    def all_rows(self) -> np.ndarray:
        """Every accepted row, sorted (int64; 8 bytes a row)."""
        parts = [self[k] for k in self.ids]
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def flags(self, row_col: np.ndarray) -> np.ndarray:
        """Bool per entry of an index's ``row`` column: True where the view accepts that row."""
        row_col = np.asarray(row_col, np.int64)
        out = np.zeros(row_col.shape[0], bool)
        if not row_col.size:
            return out
        order = np.argsort(row_col, kind="stable")
        sorted_rows = row_col[order]
        for k in self.ids:
            rows = self[k]
            if rows.size:
                pos = np.searchsorted(sorted_rows, rows)
                ok = pos < sorted_rows.size
                ok[ok] = sorted_rows[pos[ok]] == rows[ok]
                out[order[pos[ok]]] = True
        return out


def check_accepted(acc: dict, version: int, where: str) -> int:
    """Validate a view's ``accepted`` of ``version``; returns the number of accepted rows."""
    total = 0
    for shard, rows in acc.items():
        if not isinstance(shard, str) or not _SHARD.match(shard):
            raise FormatError(f"{where}: accepted must map shard ids to rows")
        if version == 1:
            if not isinstance(rows, list):
                raise FormatError(f"{where}: accepted must map shard ids to lists of rows")
            if not all(isinstance(r, int) and not isinstance(r, bool) for r in rows):
                raise FormatError(f"{where}: accepted rows of shard {shard} must be integers")
            total += len(rows)
    if version != 1:
        total = count_many(list(acc.values()), where)
    return total
