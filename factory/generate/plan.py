"""Planning a generation job: resolve the direction and latent source, build the spec (what
determines the bytes) and its hash, and the `ShardJob` that workers run for each shard."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from factory import format as fmt
from factory.format import FactoryError
from factory.fsio import fetch_copy, is_url, local_copy
from factory.generate.config import (
    CC_RATIO,
    DEFAULT_BATCH,
    GenerateConfig,
    image_codec_spec,
)


@dataclass(frozen=True)
class ShardJob:
    """What a worker needs to make any shard of a plan (small and picklable: it travels with each
    task, beside the latent source, itself a small spec). The direction is one vector; operators
    travel in the spec; a weights file travels as its path or URL and sha256 (`worker_options`)."""

    root: str
    spec: dict
    spec_hash: str
    generator: str
    generator_options: dict
    direction: np.ndarray
    batch_size: int = DEFAULT_BATCH
    device: str | None = None
    threads: int | None = None
    weights_sha256: str | None = None
    same_platform: dict | None = None  # --same-platform: the platform record every shard must match

    def worker_options(self) -> dict:
        """The generator options on this worker: the weights file as a local copy checked by sha256
        (a URL downloaded once per host, see `fsio.local_copy`)."""
        if not self.weights_sha256:
            return self.generator_options
        return {**self.generator_options, "weights": local_copy(self.generator_options["weights"], self.weights_sha256)}


@dataclass
class Plan:
    """A resolved, validated job: spec (hashable content) plus what workers need to run it."""

    spec: dict
    spec_hash: str
    n_shards: int
    dim_z: int
    resolution: int
    direction: np.ndarray
    latent_source: object
    generator_name: str
    generator_options: dict
    weights_sha256: str | None = None

    def job(self, root: str, *, batch_size: int = DEFAULT_BATCH, device: str | None = None,
            threads: int | None = None) -> ShardJob:
        """The shard job of this plan, writing into `root`."""
        return ShardJob(root=root, spec=self.spec, spec_hash=self.spec_hash, generator=self.generator_name,
                        generator_options=self.generator_options, direction=self.direction,
                        batch_size=batch_size, device=device, threads=threads, weights_sha256=self.weights_sha256)


def resolve_weights(options: dict) -> tuple[dict, str | None]:
    """(options to load the generator with here, sha256 of the weights file or None). A weights URL
    is copied once into $FACTORY_HOME/cache; workers get the path or URL and check the sha256."""
    weights = options.get("weights")
    if not isinstance(weights, (str, os.PathLike)):
        return options, None
    weights = os.fspath(weights) if is_url(weights) else os.path.expanduser(weights)
    if not (is_url(weights) or os.path.isfile(weights)):
        return options, None  # the generator names the missing file
    local, digest = fetch_copy(weights)
    return {**options, "weights": local}, digest


def resolve_direction(gen, direction: str | None, generator_name: str) -> tuple[np.ndarray, dict]:
    named = gen.named_directions() if hasattr(gen, "named_directions") else {}
    if direction is None:
        if "background" in named:
            direction = "background"
        else:
            raise FactoryError(
                f"generator {generator_name!r} has no built-in segmenting direction; pass --direction FILE "
                "(.npy or the authors' bg_direction.pth)"
            )
    if direction in named:
        vec = np.asarray(named[direction], np.float32)
        return vec, {"name": direction, "sha256": fmt.sha256_bytes(vec.tobytes())}
    looks_like_file = os.sep in direction or direction.endswith((".npy", ".pth", ".pt"))
    if not looks_like_file and not os.path.exists(direction):
        known = ", ".join(sorted(named)) or "none"
        raise FactoryError(
            f"unknown direction {direction!r} for generator {generator_name!r} (known: {known}); "
            "or pass a direction file (.npy / .pth)"
        )
    from factory.directions.io import load_direction_file

    vec = np.asarray(load_direction_file(direction, gen.dim_z), np.float32)
    return vec, {"file": os.path.basename(direction), "sha256": fmt.sha256_bytes(vec.tobytes())}


def resolve_latents(cfg: GenerateConfig, dim_z: int, prior: dict | None = None):
    """The job's latent source; ``prior`` is the generator's ``latent_prior()`` (e.g. BigGAN's truncated
    normal), used in place of N(0, I) for ``--latents gaussian``."""
    from factory.latents.sources import from_embeddings, from_file, gaussian, truncated

    if cfg.embeddings:
        return from_embeddings(cfg.embeddings, dim_z, cfg.seed, cfg.z_noise)
    if cfg.latents == "gaussian":
        if prior and prior.get("kind") == "truncated":
            return truncated(dim_z, cfg.seed, bound=prior["bound"], scale=prior["scale"])
        return gaussian(dim_z, cfg.seed)
    src = from_file(cfg.latents, dim_z)
    if cfg.n > src.rows_available:
        raise FactoryError(
            f"--n {cfg.n} exceeds the {src.rows_available} rows of latents file {cfg.latents}; lower --n"
        )
    return src


def make_plan(cfg: GenerateConfig) -> Plan:
    from factory.generators import load_generator

    cfg.validate()
    load_options, weights_sha256 = resolve_weights(cfg.generator_options)
    gen = load_generator(cfg.generator, device="cpu", **load_options)
    direction, dir_desc = resolve_direction(gen, cfg.direction, cfg.generator)
    src = resolve_latents(cfg, gen.dim_z, gen.latent_prior() if hasattr(gen, "latent_prior") else None)
    spec = {
        "format_version": fmt.FORMAT_VERSION,
        "generator": gen.identity(),
        "n": cfg.n,
        "shard_size": cfg.shard_size,
        "latents": src.describe(),
        "direction": dir_desc,
        "shift_r": float(cfg.shift_r),
        "mask_rule": cfg.mask_rule,
        "cc_ratio": CC_RATIO,
        "max_fg": float(cfg.max_fg),
        "image_codec": image_codec_spec(cfg),
        "keep_raw_mask": bool(cfg.keep_raw_mask),
    }
    if hasattr(gen, "labels"):  # class-conditional: sample i's class from (seed, i), recorded with it
        spec["labels"] = {"seed": cfg.seed}
    if cfg.mask_rule == "operators":  # only then, so that other specs (and their hashes) are unchanged
        from factory.directions.operators import load_operators

        ops = load_operators(cfg.operators)
        spec["operators"] = {"file": os.path.basename(cfg.operators), "sha256": fmt.sha256_bytes(ops.tobytes()),
                             "values": ops.tolist()}
    spec_hash = fmt.sha256_bytes(fmt.canonical_json(spec))
    n_shards = (cfg.n + cfg.shard_size - 1) // cfg.shard_size
    return Plan(spec, spec_hash, n_shards, gen.dim_z, gen.resolution, direction, src, cfg.generator,
                dict(cfg.generator_options), weights_sha256)
