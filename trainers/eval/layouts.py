"""Evaluation datasets as distributed: folder layouts, splits, ground-truth decoding.

Each kind reads the folder a user unpacked (shared/reference/benchmarks.md):

  ecssd      ROOT/images/*.jpg + ROOT/ground_truth_mask/*.png
  duts-te    ROOT/DUTS-TE-Image + ROOT/DUTS-TE-Mask (ROOT may also be the parent of DUTS-TE/)
  dut-omron  ROOT/DUT-OMRON-image + ROOT/pixelwiseGT-new-PNG (the mask folder may sit one
             or two levels down, as unzipped from DUT-OMRON-gt-pixelwise.zip.zip)
  cub        CUB_200_2011 (ROOT or ROOT/CUB_200_2011): images.txt, images/<class>/*.jpg,
             segmentations/<class>/*.png (inside CUB_200_2011 or beside it), ReDO's
             train_val_test_split.txt (inside or beside): test = split 2; soft masks > 127
  flowers    ROOT/jpg/image_%05d.jpg, ROOT/segmim/segmim_%05d.jpg, ROOT/setid.mat;
             ReDO's test split = trnid; fg = NOT (R==0 or G==0 or B==254)
  folder     ROOT/images/* + ROOT/masks/* (graded masks: >= 128 is foreground)

Masks are matched to images by file stem (never by sorted position); an image
without its mask is an error naming it. Iterating a Benchmark yields
``Sample(stem, image, gt)``: a PIL RGB image and a bool mask of the size the
scores are computed at. CUB and Flowers follow ReDO: central square crop, then
128x128 (bilinear for the image, nearest for the mask); the other kinds keep
the original size (the evaluation protocol resizes predictions to it).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np
from PIL import Image

from trainers.errors import TrainersError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
CROP_SIZE = 128

KINDS = ("ecssd", "duts-te", "dut-omron", "cub", "flowers", "folder")
DISPLAY = {"ecssd": "ECSSD", "duts-te": "DUTS-TE", "dut-omron": "DUT-OMRON", "cub": "CUB",
           "flowers": "Flowers", "folder": "folder"}


class BenchmarkError(TrainersError, ValueError):
    """A benchmark folder that does not have the expected layout or contents."""


class Sample(NamedTuple):
    stem: str
    image: Image.Image  # RGB
    gt: np.ndarray  # bool [H, W]


# ----------------------------------------------------------------------------- decoding


def binarize_gray(mask: Image.Image) -> np.ndarray:
    """Gray (or binary / RGB) mask -> bool, foreground where the 8-bit value >= 128 (i.e. > 127)."""
    if mask.mode not in ("L", "1", "P", "RGB", "RGBA", "LA"):
        raise BenchmarkError(f"unsupported mask mode {mask.mode!r} (expected 8-bit gray)")
    return np.asarray(mask.convert("L")) >= 128


def flowers_foreground(mask: Image.Image) -> np.ndarray:
    """Oxford Flowers segmim (lossy JPEG, blue background): fg = NOT (R==0 or G==0 or B==254)."""
    rgb = np.asarray(mask.convert("RGB"))
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return ~((r == 0) | (g == 0) | (b == 254))


def center_crop_resize(image: Image.Image, mask: Image.Image, size: int = CROP_SIZE):
    """ReDO's protocol: central square crop, then size x size (bilinear image, nearest mask)."""
    if image.size != mask.size:
        raise BenchmarkError(f"image {image.size} and mask {mask.size} differ in size; cannot crop alike")
    w, h = image.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    box = (left, top, left + s, top + s)
    image = image.crop(box).resize((size, size), Image.BILINEAR)
    mask = mask.crop(box).resize((size, size), Image.NEAREST)
    return image, mask


# ----------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class Pair:
    stem: str
    image: Path
    mask: Path


@dataclass
class Benchmark:
    """A benchmark split: the (stem, image, mask) pairs and how to decode them."""

    kind: str
    root: Path
    pairs: list[Pair]
    decode_mask: Callable[[Image.Image], np.ndarray]
    center_crop: bool = False

    @property
    def name(self) -> str:
        return DISPLAY.get(self.kind, self.kind) if self.kind != "folder" else self.root.name

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, pair: Pair) -> Sample:
        try:
            with Image.open(pair.image) as im:
                image = im.convert("RGB")
            with Image.open(pair.mask) as mk:
                mk.load()
                mask = mk.copy()
        except (OSError, SyntaxError) as e:
            raise BenchmarkError(f"{self.kind}: cannot read sample {pair.stem!r}: {e}") from None
        if self.center_crop:
            image, mask = center_crop_resize(image, mask)
        return Sample(pair.stem, image, self.decode_mask(mask))

    def __iter__(self) -> Iterator[Sample]:
        for p in self.pairs:
            yield self.load(p)


def files_by_stem(folder: Path, what: str) -> dict[str, Path]:
    """Image files of ``folder`` (by extension; hidden files skipped) keyed by stem.

    Two files with one stem are an error: masks are matched to images by stem, never by position.
    """
    if not folder.is_dir():
        raise BenchmarkError(f"{what}: folder {str(folder)!r} does not exist")
    out: dict[str, Path] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_file() or entry.name.startswith("."):
            continue
        p = Path(entry.path)
        if p.suffix.lower() not in IMAGE_EXTS:
            continue
        if p.stem in out:
            raise BenchmarkError(f"{what}: folder {str(folder)!r} holds two files with stem {p.stem!r}: "
                                 f"{out[p.stem].name} and {p.name}")
        out[p.stem] = p
    return out


def match_by_stem(images_dir: Path, masks_dir: Path, kind: str) -> list[Pair]:
    """Pair every image with the mask of the same stem; error on an image lacking its mask."""
    images = files_by_stem(images_dir, f"{kind} images")
    masks = files_by_stem(masks_dir, f"{kind} masks")
    if not images:
        raise BenchmarkError(f"{kind}: no images in {str(images_dir)!r}")
    missing = [s for s in images if s not in masks]
    if missing:
        raise BenchmarkError(f"{kind}: no mask for image {images[missing[0]].name!r} in {str(masks_dir)!r}"
                             + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return [Pair(s, images[s], masks[s]) for s in images]


def _first_dir(root: Path, name: str, depth: int = 2) -> Path | None:
    """``root/name`` or the first ``.../name`` up to ``depth`` levels below root (sorted walk)."""
    if (root / name).is_dir():
        return root / name
    if depth <= 0:
        return None
    try:
        subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return None
    for sub in subs:
        found = _first_dir(sub, name, depth - 1)
        if found is not None:
            return found
    return None


def _require_dir(root: Path, kind: str, hint: str) -> Path:
    if not root.is_dir():
        raise BenchmarkError(f"{kind}: {str(root)!r} is not a folder (expected {hint})")
    return root


# ----------------------------------------------------------------------------- kinds


def open_ecssd(root: Path) -> Benchmark:
    _require_dir(root, "ecssd", "images/ and ground_truth_mask/")
    pairs = match_by_stem(root / "images", root / "ground_truth_mask", "ecssd")
    return Benchmark("ecssd", root, pairs, binarize_gray)


def open_duts_te(root: Path) -> Benchmark:
    _require_dir(root, "duts-te", "DUTS-TE-Image/ and DUTS-TE-Mask/")
    base = root if (root / "DUTS-TE-Image").is_dir() else root / "DUTS-TE"
    if not (base / "DUTS-TE-Image").is_dir():
        raise BenchmarkError(f"duts-te: no DUTS-TE-Image/ in {str(root)!r} or {str(root / 'DUTS-TE')!r}")
    pairs = match_by_stem(base / "DUTS-TE-Image", base / "DUTS-TE-Mask", "duts-te")
    return Benchmark("duts-te", base, pairs, binarize_gray)


def open_dut_omron(root: Path) -> Benchmark:
    _require_dir(root, "dut-omron", "DUT-OMRON-image/ and pixelwiseGT-new-PNG/")
    images = _first_dir(root, "DUT-OMRON-image", depth=1)
    if images is None:
        raise BenchmarkError(f"dut-omron: no DUT-OMRON-image/ in {str(root)!r}")
    masks = _first_dir(root, "pixelwiseGT-new-PNG", depth=2)
    if masks is None:
        raise BenchmarkError(f"dut-omron: no pixelwiseGT-new-PNG/ under {str(root)!r}; unzip "
                             f"DUT-OMRON-gt-pixelwise.zip.zip there")
    return Benchmark("dut-omron", root, match_by_stem(images, masks, "dut-omron"), binarize_gray)


def _read_id_table(path: Path, what: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise BenchmarkError(f"cub: {path} line {n} is not '<image_id> <{what}>': {line!r}")
        out[int(parts[0])] = parts[1].strip()
    return out


def open_cub(root: Path) -> Benchmark:
    """CUB-200-2011, ReDO's test split (split 2 of train_val_test_split.txt), cropped to 128."""
    _require_dir(root, "cub", "CUB_200_2011/ with images.txt")
    base = root if (root / "images.txt").is_file() else root / "CUB_200_2011"
    if not (base / "images.txt").is_file():
        raise BenchmarkError(f"cub: no images.txt in {str(root)!r} or {str(root / 'CUB_200_2011')!r}")
    split_file = next((p for p in (base / "train_val_test_split.txt", base.parent / "train_val_test_split.txt",
                                   root / "train_val_test_split.txt") if p.is_file()), None)
    if split_file is None:
        raise BenchmarkError(f"cub: ReDO's train_val_test_split.txt not found in {str(base)!r} or its "
                             f"parent (one '<image_id> <0/1/2>' line per image)")
    seg_dir = next((p for p in (base / "segmentations", base.parent / "segmentations") if p.is_dir()), None)
    if seg_dir is None:
        raise BenchmarkError(f"cub: segmentations/ not found in {str(base)!r} or its parent "
                             f"(unpack segmentations.tgz there)")
    images = _read_id_table(base / "images.txt", "relative path")
    split = _read_id_table(split_file, "0/1/2")
    missing = sorted(set(images) - set(split))
    if missing:
        raise BenchmarkError(f"cub: image id {missing[0]} ({images[missing[0]]}) has no line in {split_file}")
    bad = sorted({v for v in split.values() if v not in ("0", "1", "2")})
    if bad:
        raise BenchmarkError(f"cub: {split_file} has split values {bad}; expected 0, 1 or 2")
    pairs, seen = [], {}
    for image_id in sorted(images):
        if split[image_id] != "2":
            continue
        rel = Path(images[image_id])
        img = base / "images" / rel
        mask = seg_dir / rel.with_suffix(".png")
        if not img.is_file():
            raise BenchmarkError(f"cub: image {str(rel)!r} (id {image_id}) listed in images.txt is missing")
        if not mask.is_file():
            raise BenchmarkError(f"cub: no mask for image {str(rel)!r}: expected {mask}")
        if rel.stem in seen:
            raise BenchmarkError(f"cub: two test images share the stem {rel.stem!r}")
        seen[rel.stem] = True
        pairs.append(Pair(rel.stem, img, mask))
    if not pairs:
        raise BenchmarkError(f"cub: no test images (split 2) in {split_file}")
    return Benchmark("cub", base, pairs, binarize_gray, center_crop=True)


def open_flowers(root: Path) -> Benchmark:
    """Oxford-102 Flowers, ReDO's test split (= setid.mat trnid), cropped to 128."""
    _require_dir(root, "flowers", "jpg/, segmim/ and setid.mat")
    setid = root / "setid.mat"
    if not setid.is_file():
        raise BenchmarkError(f"flowers: no setid.mat in {str(root)!r}")
    from scipy.io import loadmat

    try:
        mat = loadmat(str(setid))
    except Exception as e:  # scipy raises several types for bad files
        raise BenchmarkError(f"flowers: cannot read {setid}: {e}") from None
    if "trnid" not in mat:
        raise BenchmarkError(f"flowers: {setid} has no 'trnid' (keys: {sorted(k for k in mat if not k.startswith('__'))})")
    ids = np.asarray(mat["trnid"]).astype(np.int64).ravel()
    pairs = []
    for i in ids:
        stem = f"image_{i:05d}"
        img = root / "jpg" / f"{stem}.jpg"
        mask = root / "segmim" / f"segmim_{i:05d}.jpg"
        if not img.is_file():
            raise BenchmarkError(f"flowers: test image {img.name} (trnid) is missing from {root / 'jpg'}")
        if not mask.is_file():
            raise BenchmarkError(f"flowers: no mask for image {img.name!r}: expected {mask}")
        pairs.append(Pair(stem, img, mask))
    if not pairs:
        raise BenchmarkError(f"flowers: trnid in {setid} is empty")
    return Benchmark("flowers", root, pairs, flowers_foreground, center_crop=True)


def open_folder(root: Path) -> Benchmark:
    _require_dir(root, "folder", "images/ and masks/")
    return Benchmark("folder", root, match_by_stem(root / "images", root / "masks", "folder"), binarize_gray)


OPENERS: dict[str, Callable[[Path], Benchmark]] = {
    "ecssd": open_ecssd, "duts-te": open_duts_te, "dut-omron": open_dut_omron,
    "cub": open_cub, "flowers": open_flowers, "folder": open_folder,
}


def open_benchmark(kind: str, root: str | os.PathLike) -> Benchmark:
    """Open benchmark ``kind`` (one of KINDS) unpacked at ``root``."""
    kind = kind.strip().lower()
    if kind not in OPENERS:
        raise BenchmarkError(f"unknown dataset kind {kind!r}; choose one of {', '.join(KINDS)}")
    return OPENERS[kind](Path(root))


def parse_dataset_spec(spec: str) -> tuple[str, Path]:
    """'KIND=PATH' -> (kind, path)."""
    kind, sep, path = spec.partition("=")
    if not sep or not kind.strip() or not path.strip():
        raise BenchmarkError(f"dataset must be KIND=PATH (e.g. ecssd=/data/ECSSD), got {spec!r}; "
                             f"kinds: {', '.join(KINDS)}")
    kind = kind.strip().lower()
    if kind not in OPENERS:
        raise BenchmarkError(f"unknown dataset kind {kind!r} in {spec!r}; choose one of {', '.join(KINDS)}")
    return kind, Path(path.strip())


# ----------------------------------------------------------------------------- discovery


def _layout_kind(d: Path) -> str | None:
    if (d / "DUTS-TE-Image").is_dir() and (d / "DUTS-TE-Mask").is_dir():
        return "duts-te"
    if (d / "DUT-OMRON-image").is_dir() and _first_dir(d, "pixelwiseGT-new-PNG", depth=2) is not None:
        return "dut-omron"
    if (d / "images.txt").is_file() and (d / "images").is_dir():
        return "cub"
    if (d / "setid.mat").is_file() and (d / "jpg").is_dir() and (d / "segmim").is_dir():
        return "flowers"
    if (d / "images").is_dir() and (d / "ground_truth_mask").is_dir():
        return "ecssd"
    if (d / "images").is_dir() and (d / "masks").is_dir():
        return "folder"
    return None


SKIP_DIRS = {"images", "masks", "jpg", "segmim", "segmentations", "ground_truth_mask",
             "DUTS-TE-Image", "DUTS-TE-Mask", "DUT-OMRON-image", "pixelwiseGT-new-PNG"}


def discover(root: str | os.PathLike, max_depth: int = 3) -> list[tuple[str, Path]]:
    """Every benchmark under ``root`` (root itself included), found by its layout: [(kind, path)].

    Does not descend into a folder recognised as a benchmark, nor into image or
    mask folders; sorted walk, so the result is deterministic.
    """
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkError(f"data root {str(root)!r} is not a folder")
    found: list[tuple[str, Path]] = []

    def walk(d: Path, depth: int) -> None:
        kind = _layout_kind(d)
        if kind is not None:
            found.append((kind, d))
            return
        if depth >= max_depth:
            return
        try:
            subs = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")
                          and p.name not in SKIP_DIRS)
        except OSError:
            return
        for s in subs:
            walk(s, depth + 1)

    walk(root, 0)
    return found
