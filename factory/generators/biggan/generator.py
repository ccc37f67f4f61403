"""The registered ``biggan`` adapter: a `pytorch-pretrained-biggan` checkpoint (BigGAN-deep 128/256/512)
as a class-conditional generator of the protocol.

Conditioning: ``classes`` (``--classes 1,207,151-268`` or a recipe list; default every class) is the rule
"uniform over this list"; sample *i*'s class is ``labels(seed, i, i + 1)``, a pure function of (seed, i)
(a SplitMix64 hash, no RNG state), which the engine passes as ``labels=`` and records with the sample.
A call without labels renders every row with the first class of the list.
Truncation: the stored batch-norm statistics of ``truncation`` (the port's interpolation), and latents
z = truncation * TruncatedNormal(-2, 2) (``latent_prior()``, which the engine samples from).
Precision: dtype, autocast (bf16 | tf32), channels_last, compile, as for bigbigan; plain fp32 is exact.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from factory.format import FactoryError
from factory.fsio import file_name
from factory.generators import register
from factory.generators.biggan.checkpoint import (
    load_weights,
    locate,
    random_state_dict,
    read_config,
    read_state_dict,
)
from factory.generators.biggan.model import BigGAN, BigGANConfig
from factory.generators.torchcore import (
    TorchOptions,
    check_options,
    check_z,
    compiled,
    identity_options,
    precision_scope,
    random_source,
    state_dict_digest,
    weights_digest,
)

TRUNCATION_BOUND = 2.0  # the port's truncated_noise_sample draws from TruncatedNormal(-2, 2)
_LABEL_TAG = 0xB16_6A7


def parse_classes(classes: Any, num_classes: int) -> tuple[int, ...] | None:
    """The class list of a rule: None or "all" (every class: returns None), "1,207,151-268", or a list of
    ints / such strings. Each class once, within [0, num_classes)."""
    if classes is None or (isinstance(classes, str) and classes.strip().lower() == "all"):
        return None
    if isinstance(classes, str):
        items = classes.split(",")
    elif isinstance(classes, (list, tuple)):
        items = list(classes)
    elif isinstance(classes, int) and not isinstance(classes, bool):
        items = [classes]
    else:
        raise FactoryError(f"biggan: classes={classes!r}; give a list such as 1,207,151-268 or 'all'")
    out: list[int] = []
    for item in items:
        text = str(item).strip()
        lo, sep, hi = text.partition("-")
        try:
            span = range(int(lo), int(hi) + 1) if sep and lo else [int(text)]
        except ValueError:
            raise FactoryError(f"biggan: class {text!r} is not an integer or a range A-B (e.g. --classes 1,207,151-268)") from None
        out += list(span)
    if not out:
        raise FactoryError("biggan: classes is empty; give at least one class (e.g. --classes 207) or 'all'")
    bad = [c for c in out if not 0 <= c < num_classes]
    if bad:
        raise FactoryError(f"biggan: class {bad[0]} outside [0, {num_classes}) of this checkpoint")
    dup = sorted({c for c in out if out.count(c) > 1})
    if dup:
        raise FactoryError(f"biggan: class {dup[0]} listed twice; each class once (the rule is uniform over the list)")
    return tuple(out)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def class_draws(seed: int, start: int, stop: int, n_choices: int) -> np.ndarray:
    """Indices in [0, n_choices) of samples [start, stop): uniform, a pure function of (seed, sample index)."""
    with np.errstate(over="ignore"):
        key = _splitmix64(np.array([(int(seed) ^ _LABEL_TAG) & (2**64 - 1)], np.uint64))
        h = _splitmix64(np.arange(start, stop, dtype=np.uint64) + key[0])
    return (h % np.uint64(n_choices)).astype(np.int64)


class BigGANGenerator:
    """Protocol object (`dim_z`, `resolution`, `device`, `__call__(z, labels=None)`, `identity()`) plus
    `labels(seed, start, stop)` and `latent_prior()`."""

    name = "biggan"

    def __init__(self, module: BigGAN, *, truncation: float, classes: tuple[int, ...] | None, opts: TorchOptions,
                 weights_sha256: str, weights_source: str):
        self.module = module
        self.config = module.cfg
        self.dim_z, self.resolution = module.cfg.z_dim, module.cfg.output_dim
        self.num_classes = module.cfg.num_classes
        self.truncation, self.classes = truncation, classes
        self.device, self.dtype = opts.device, opts.dtype
        self.weights_sha256, self.weights_source = weights_sha256, weights_source
        self.autocast, self.channels_last, self.compile = opts.autocast, opts.channels_last, opts.compile
        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        self._fn = compiled(module, self.compile)

    def labels(self, seed: int, start: int, stop: int) -> np.ndarray:
        """Classes of samples [start, stop) (int64): uniform over the class list, from (seed, index)."""
        n = self.num_classes if self.classes is None else len(self.classes)
        draws = class_draws(seed, start, stop, n)
        return draws if self.classes is None else np.asarray(self.classes, np.int64)[draws]

    def latent_prior(self) -> dict:
        """What the engine samples z from: truncation * TruncatedNormal(-bound, bound), per coordinate."""
        return {"kind": "truncated", "bound": TRUNCATION_BOUND, "scale": self.truncation}

    def __call__(self, z: torch.Tensor, labels: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        check_z(self, z)
        if labels is None:
            first = 0 if self.classes is None else self.classes[0]
            y = torch.full((z.shape[0],), first, dtype=torch.long, device=self.device)
        else:
            y = torch.as_tensor(labels, device=self.device).long()
            if y.shape != (z.shape[0],):
                raise FactoryError(f"biggan: labels must be [B] = [{z.shape[0]}] class indices, got {list(y.shape)}")
        z = z.to(device=self.device, dtype=self.dtype)
        with precision_scope(self.device, self.autocast):
            out = self._fn(z, y, self.truncation)
        return out.float().contiguous()

    def identity(self) -> dict:
        return {
            "name": "biggan",
            "config": self.config.to_dict(),
            "weights_sha256": self.weights_sha256,
            "weights_source": file_name(self.weights_source),  # name only: the sha256 identifies it
            "truncation": self.truncation,
            "classes": "all" if self.classes is None else list(self.classes),
            "precision": self.precision(),
        }

    def precision(self) -> dict:
        return {"dtype": str(self.dtype).replace("torch.", ""), "autocast": self.autocast,
                "channels_last": self.channels_last, "compile": self.compile}

    def named_directions(self) -> dict[str, np.ndarray]:
        return {}  # no published segmenting direction for BigGAN: pass --direction FILE

    def __repr__(self) -> str:
        return f"BigGANGenerator({self.config.short()}, truncation={self.truncation}, {self.precision()})"


def _weights(*, weights, config, random_weights: bool, seed: int, resolution: int | None):
    """(config, state dict, sha256, source) from a checkpoint or deterministic random weights."""
    if weights is not None and random_weights:
        raise FactoryError("biggan: pass either weights=PATH or random_weights=True, not both")
    if weights is not None:
        path, cfg_src = locate(weights, config)
        cfg = read_config(cfg_src)
        return cfg, read_state_dict(path), weights_digest(path), str(path)
    if not random_weights:
        raise FactoryError("biggan needs its weights: pass --weights FOLDER (the port's config.json + pytorch_model.bin, "
                           "see docs/generators.md), or --random-weights for benchmarks")
    cfg = read_config(config if config is not None else (resolution or 128))
    sd = random_state_dict(cfg, seed)
    return cfg, sd, state_dict_digest(sd), random_source(seed)


def biggan_options(identity: dict) -> dict:
    """load_biggan's options that rebuild the generator an identity describes (the weights file aside)."""
    opts = identity_options(identity, keys=("config", "truncation", "classes"), what="biggan")
    if opts.get("classes") == "all":
        opts["classes"] = None
    return opts


@register("biggan", dim_z=128, summary="BigGAN-deep, pytorch-pretrained-biggan checkpoints (config.json + weights)",
          note="resolution 128/256/512 from config.json; class-conditional (--classes)", from_identity=biggan_options)
def load_biggan(*, weights: str | Path | None = None, config: Any = None, device: str | torch.device = "cpu",
                dtype: Any = None, random_weights: bool = False, seed: int = 0,
                truncation: float = 1.0, classes: Any = None, resolution: int | None = None,
                autocast: str | None = None, channels_last: bool = False, compile: bool | str = False) -> BigGANGenerator:
    """Build the BigGAN generator.

    weights: the port's checkpoint folder, or its pytorch_model.bin / .safetensors with config.json beside
    (or config=); random_weights=True (with seed; config or resolution 128/256/512) for benchmarks.
    truncation in (0, 1]; classes: the class rule (see parse_classes). Fast paths: autocast="bf16"|"tf32",
    channels_last, compile (True or a torch.compile mode).
    """
    opts = check_options(device=device, dtype=dtype, autocast=autocast, channels_last=channels_last,
                         compile=compile, prefix="biggan: ")
    try:
        truncation = float(truncation)
    except (TypeError, ValueError):
        raise FactoryError(f"biggan: truncation={truncation!r} must be a number in (0, 1]") from None
    if not 0 < truncation <= 1:
        raise FactoryError(f"biggan: truncation={truncation} must be in (0, 1] (the port's statistics cover that range)")
    cfg, sd, sha, source = _weights(weights=weights, config=config, random_weights=random_weights, seed=seed,
                                   resolution=resolution)
    if resolution is not None and resolution != cfg.output_dim:
        raise FactoryError(f"biggan: resolution={resolution} but {source} is a {cfg.output_dim} px model; omit --resolution")
    model = load_weights(BigGAN(cfg), sd, source)  # frozen: gradients flow to z (directions), never to weights
    model.to(device=opts.device, dtype=opts.dtype)
    return BigGANGenerator(model, truncation=truncation, classes=parse_classes(classes, cfg.num_classes), opts=opts,
                           weights_sha256=sha, weights_source=source)


__all__ = ["BigGANConfig", "BigGANGenerator", "load_biggan", "parse_classes", "class_draws"]
