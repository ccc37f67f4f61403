"""One sample's members by key, read lazily for the page, and the pictures made of them (tiles with a mask
overlay, members as served).

A key is served only when it is a row of the index, its shard is the manifest's and the key passes the
contract's member check (`format.check_key`); paths come from the manifest only, never from a request.
Samples are read through the contract's reading room: one range read where the index records its byte range
(format 2: `format.range_members`); an older dataset's shards are read whole through the hashing reader
(`dataset.reader.read_shard_samples`) and the last few kept, so a page of neighbours reads each shard once.
Either way a sample holds exactly the members the manifest names, once each.
"""
from __future__ import annotations

import io
import threading
from collections import OrderedDict

import numpy as np

from factory import format as fmt
from factory.dataset.preview import overlay
from factory.dataset.reader import read_shard_samples
from factory.format import FactoryError

MASK_COLOR = (255, 40, 40)
TEACHER_COLOR = (0, 190, 255)
TILE_SIDE = 192  # tiles larger than this are scaled down (the detail shows the member as it is)
PICTURES = ("image", "mask", "teacher", "rawmask")  # members served as pictures
OVERLAYS = ("none", "mask", "teacher")


def picture_ext(manifest: dict, which: str) -> str:
    """Member extension of a picture name (`image` is the dataset's codec)."""
    if which == "image":
        return fmt.image_member(manifest)
    exts = {"mask": fmt.EXT_MASK, "teacher": fmt.EXT_TEACHER, "rawmask": fmt.EXT_RAW_MASK}
    if which not in exts:
        raise FactoryError(f"unknown picture {which!r}: one of {', '.join(PICTURES)}")
    return exts[which]


def content_type(ext: str) -> str:
    last = ext.rsplit(".", 1)[-1]
    return {"png": "image/png", "webp": "image/webp", "jpg": "image/jpeg", "json": "application/json"}.get(
        last, "application/octet-stream")


class SampleReader:
    """Members of samples by key, keeping the last `keep` shards read (thread-safe; one read per shard)."""

    def __init__(self, res: fmt.Resolved, keep: int = 2):
        self.res = res
        self.keep = keep
        self.entries = {s["shard"]: s for s in res.manifest["shards"]}
        self._cache: OrderedDict[int, dict] = OrderedDict()
        self._lock = threading.Lock()
        self._shard_locks: dict[int, threading.Lock] = {}

    def check(self, key: str, shard: int) -> dict:
        """The manifest entry of `shard` after the contract's check that `key` is one of its samples."""
        entry = self.entries.get(shard)
        if entry is None:
            raise fmt.FormatError(f"shard {shard} of key {key!r} is not in the manifest")
        fmt.check_key(fmt.shard_ref(self.res.root, self.res.manifest, entry), key)
        return entry

    def members(self, key: str, shard: int, span: tuple[int, int] | None = None) -> dict[str, bytes]:
        """ext -> bytes of sample `key` in `shard` (both from the index): one range read of its `span`
        (tar offset and size, from an index that records them), else from its shard read whole."""
        entry = self.check(key, shard)
        if span is not None:
            return fmt.range_members(fmt.shard_ref(self.res.root, self.res.manifest, entry), key, *span)
        with self._lock:
            lock = self._shard_locks.setdefault(shard, threading.Lock())
        with lock:
            with self._lock:
                samples = self._cache.get(shard)
                if samples is not None:
                    self._cache.move_to_end(shard)
            if samples is None:
                samples = read_shard_samples(self.res, entry)
                with self._lock:
                    self._cache[shard] = samples
                    while len(self._cache) > self.keep:
                        self._cache.popitem(last=False)
        if key not in samples:
            raise fmt.FormatError(f"{fmt.join(self.res.root, entry['path'])}: sample {key} is missing")
        return samples[key]


def decode(data: bytes, mode: str, where: str) -> np.ndarray:
    with fmt.open_image_checked(data, where) as im:
        return np.asarray(im.convert(mode))


def png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def tile(members: dict[str, bytes], manifest: dict, key: str, *, show: str = "mask", side: int = TILE_SIDE) -> bytes:
    """PNG of a sample's image, scaled to at most `side` pixels, with its mask (or teacher mask) overlaid."""
    from PIL import Image

    if show not in OVERLAYS:
        raise FactoryError(f"overlay must be one of {', '.join(OVERLAYS)}, got {show!r}")
    ext = fmt.image_member(manifest)
    if ext not in members:
        raise fmt.FormatError(f"sample {key} has no .{ext} image")
    img = decode(members[ext], "RGB", f"sample {key}")
    if show == "mask" and fmt.EXT_MASK in members:
        img = overlay(img, decode(members[fmt.EXT_MASK], "L", f"sample {key} mask") > 127,
                      color=np.array(MASK_COLOR, np.float32))
    elif show == "teacher" and fmt.EXT_TEACHER in members:
        p = decode(members[fmt.EXT_TEACHER], "L", f"sample {key} teacher mask")
        img = overlay(img, p >= fmt.TEACHER_FG_MIN, color=np.array(TEACHER_COLOR, np.float32))
    if max(img.shape[:2]) > side:
        im = Image.fromarray(img)
        im.thumbnail((side, side), Image.Resampling.LANCZOS)
        img = np.asarray(im)
    return png_bytes(img)


def latent_summary(members: dict[str, bytes], key: str) -> dict | None:
    """Norm, shape and dtype of a sample's latent member (None when it has none)."""
    from factory.dataset.reader import decode_npy

    data = members.get(fmt.EXT_LATENT)
    if data is None:
        return None
    z = decode_npy(data, f"sample {key} latent")
    if z.dtype.kind not in "fiu":
        raise fmt.FormatError(f"sample {key}: latent has dtype {z.dtype}, not a number")
    return {"norm": round(float(np.linalg.norm(z.astype(np.float64))), 4), "shape": list(z.shape),
            "dtype": str(z.dtype)}


def meta_of(members: dict[str, bytes]):
    """The sample's JSON member parsed (its text when it is not JSON; None when there is none)."""
    import json

    data = members.get(fmt.EXT_META)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return {"unreadable JSON": data[:4000].decode("utf-8", "replace")}
