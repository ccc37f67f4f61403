"""What `factory generate` is asked for (`GenerateConfig` and its validation), the spec's image codec
entry, and the environment knobs (FACTORY_ENCODER, integer knobs) with their errors."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from factory import format as fmt
from factory.format import FactoryError
from factory.settings import settings

DEFAULT_SHARD_SIZE = 1000
DEFAULT_BATCH = 64
CC_RATIO = 0.2


# ---------------------------------------------------------------- spec

@dataclass
class GenerateConfig:
    """Everything `factory generate` was asked for. The part that determines the bytes becomes the
    plan's spec (`factory.generate.plan.make_plan`); the rest (batch size, device, workers, ...) are
    runtime settings."""

    n: int
    out: str
    generator: str = "shapes"
    generator_options: dict = field(default_factory=dict)
    seed: int = 0
    shard_size: int = DEFAULT_SHARD_SIZE
    latents: str = "gaussian"  # gaussian | path to .npy
    embeddings: str | None = None
    z_noise: float = 0.0
    direction: str | None = None  # name known to the generator, or a file
    shift_r: float = 5.0
    mask_rule: str = "luminance"
    max_fg: float = 0.5
    png_level: int = 1
    image_codec: str = "png"  # png | webp (lossless) | jpeg (lossy)
    jpeg_quality: int = 95
    keep_raw_mask: bool = False
    batch_size: int = DEFAULT_BATCH
    device: str | None = None
    workers: int | None = None
    scheduler: str | None = None
    dashboard: bool = False  # the local cluster's dask dashboard, on a free port
    overwrite: bool = False
    recipe: str | None = None
    progress: bool = True
    operators: str | None = None  # .npy [2,3,4] for mask_rule="operators" (factory directions score)
    same_platform: bool = False  # refuse shards made on another platform than the dataset's (bit identity)

    def validate(self) -> None:
        if self.n is None or self.n <= 0:
            raise FactoryError(f"--n must be a positive number of candidates, got {self.n}")
        if self.shard_size <= 0:
            raise FactoryError(f"--shard-size must be positive, got {self.shard_size}")
        if self.batch_size <= 0:
            raise FactoryError(f"--batch-size must be positive, got {self.batch_size}")
        if self.mask_rule not in ("luminance", "mean-threshold", "operators"):
            raise FactoryError(
                f"--mask-rule must be 'luminance', 'mean-threshold' or 'operators', got {self.mask_rule!r}"
            )
        if self.mask_rule == "operators" and not self.operators:
            raise FactoryError(
                "--mask-rule operators needs --operators FILE (operators_selected.npy of `factory directions score`)"
            )
        if self.operators and self.mask_rule != "operators":
            raise FactoryError(f"--operators is only used with --mask-rule operators (got --mask-rule {self.mask_rule})")
        if not np.isfinite(self.shift_r):
            raise FactoryError(f"--shift-r must be finite, got {self.shift_r}")
        if not 0 <= self.png_level <= 9:
            raise FactoryError(f"--png-level must be 0..9, got {self.png_level}")
        if self.image_codec not in fmt.IMAGE_CODECS:
            raise FactoryError(f"--image-codec must be one of {', '.join(fmt.IMAGE_CODECS)}, got {self.image_codec!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise FactoryError(f"--jpeg-quality must be 1..100, got {self.jpeg_quality}")
        if self.png_level != 1 and self.image_codec != "png":
            raise FactoryError(f"--png-level only applies to --image-codec png (got --image-codec {self.image_codec})")
        if self.jpeg_quality != 95 and self.image_codec != "jpeg":
            raise FactoryError(f"--jpeg-quality only applies to --image-codec jpeg (got --image-codec {self.image_codec})")
        if self.workers is not None and self.workers < 0:
            raise FactoryError(f"--workers must be >= 0, got {self.workers}")
        if self.generator_options.get("compile") and self.shard_size % self.batch_size:
            import warnings

            warnings.warn(
                f"--shard-size {self.shard_size} is not a multiple of --batch-size {self.batch_size}: the compiled "
                "generator recompiles for each shard's tail batch; use e.g. --shard-size "
                f"{max(1, self.shard_size // self.batch_size) * self.batch_size}", stacklevel=2)
        if self.embeddings and self.latents != "gaussian":
            raise FactoryError("--embeddings and --latents FILE are exclusive; pass one of them")


def image_codec_spec(cfg: GenerateConfig) -> dict:
    """The spec's ``image_codec``: everything that determines the image bytes (masks: PNG, Z_RLE, level 9)."""
    if cfg.image_codec == "png":  # unchanged since format 1, so existing specs keep their hash
        return {"image": "png", "mask": "png", "png_level": cfg.png_level}
    if cfg.image_codec == "webp":
        return {"image": "webp", "mask": "png", "lossless": True, "method": 0, "effort": 0}
    return {"image": "jpeg", "mask": "png", "quality": cfg.jpeg_quality, "subsampling": "4:4:4"}


def encoder_mode() -> str:
    """``FACTORY_ENCODER``: auto | processes | threads (see docs/performance.md)."""
    return settings().encoder
