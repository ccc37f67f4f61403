"""The key-hash hold-out: ``holdout_bucket(key) = int(sha256(key).hexdigest(), 16) % 1000``; a sample is held
out (split ``val``) when its bucket is below ``holdout_permille``."""
from __future__ import annotations

import hashlib

import numpy as np


def holdout_bucket(key: str) -> int:
    """Bucket 0..999 of a sample key: ``int(sha256(key).hexdigest(), 16) % 1000``."""
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % 1000


_WORD_WEIGHTS = np.array([pow(2, 64 * (3 - i), 1000) for i in range(4)], np.int64)


def holdout_buckets(rows: np.ndarray) -> np.ndarray:
    """``holdout_bucket(sample_key(row))`` of every row: one digest per row, the modulo vectorized over the
    digest's four big-endian 64-bit words."""
    sha = hashlib.sha256
    out = np.zeros(rows.shape[0], np.int64)
    for i in range(0, rows.shape[0], 1 << 17):  # in chunks: the Python objects of a chunk only
        digests = b"".join([sha(b"%010d" % r).digest() for r in rows[i:i + (1 << 17)].tolist()])
        words = np.frombuffer(digests, ">u8").reshape(-1, 4)
        out[i:i + (1 << 17)] = ((words % np.uint64(1000)).astype(np.int64) @ _WORD_WEIGHTS) % 1000
    return out


def holdout_rule(permille: int) -> str:
    return f"int(sha256(key).hexdigest(), 16) % 1000 < {permille}"
