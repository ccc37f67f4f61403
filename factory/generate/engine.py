"""Shard planning, execution on a dask cluster (or in-process), resume, progress, manifest.

The shard is the unit of work: shard k holds samples [k*S, min((k+1)*S, N)) and
is a pure function of (spec, k). Workers keep their generator between shards
and return a small status row; the client never receives pixels.
"""
from __future__ import annotations

import json
import sys

from factory import __version__
from factory import format as fmt
from factory.dataset.shards import read_sidecars
from factory.dataset.writer import DatasetLock, check_writable, prepare_output
from factory.errors import FactoryError
from factory.fsio import atomic_write, exists, remove_temp_files
from factory.generate.compute import cc_iterations_for
from factory.generate.config import GenerateConfig, encoder_mode
from factory.generate.distribute import run_shards
from factory.generate.encode import encoder_processes
from factory.generate.plan import Plan, make_plan


def generate(cfg: GenerateConfig, log=None) -> dict:
    """Run (or resume) a generation job; returns the manifest."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    encoder_mode()
    encoder_processes(4, 1)
    cc_iterations_for("cuda")  # the knobs fail here, before any work, rather than in every shard
    plan = make_plan(cfg)
    root = cfg.out.rstrip("/")
    cfg.out = root
    check_writable(root)
    with DatasetLock(root):
        remove_temp_files(root)
        manifest_url = fmt.join(root, fmt.MANIFEST)
        prepare_output(cfg, plan)
        done = {k: v for k, v in read_sidecars(root).items() if v.get("spec_hash") == plan.spec_hash}
        todo = [k for k in range(plan.n_shards) if k not in done]
        if not todo and exists(manifest_url):
            log(f"{root}: complete ({cfg.n} samples in {plan.n_shards} shards); nothing to do")
            return json.loads(fmt.read_bytes(manifest_url))
        if done:
            log(f"{root}: resuming, {len(done)} of {plan.n_shards} shards already committed")
        failures = run_shards(cfg, plan, todo, done)
        if failures:
            raise FactoryError(
                f"{len(failures)} shard(s) failed: " + "; ".join(f["error"] for f in failures[:5])
                + " — rerun the same command to retry them"
            )
        manifest = build_manifest(cfg, plan, done)
        from factory.dataset.card import write_card

        write_card(root, manifest)
        atomic_write(manifest_url, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return manifest


def build_manifest(cfg: GenerateConfig, plan: Plan, done: dict) -> dict:
    shards = [done[k] for k in range(plan.n_shards)]
    for s in shards:
        s.pop("spec_hash", None)
    latents_sha = fmt.sha256_bytes("".join(s["latents_sha256"] for s in shards).encode())
    ds_id = fmt.dataset_id(shards, latents_sha)
    return {
        "kind": fmt.DATASET_KIND,
        "format_version": fmt.FORMAT_VERSION,
        "dataset_id": ds_id,
        "samples": sum(s["samples"] for s in shards),
        "bytes": sum(s["bytes"] for s in shards),
        "dim_z": plan.dim_z,
        "resolution": plan.resolution,
        "spec_hash": plan.spec_hash,
        "spec": plan.spec,
        "recipe": cfg.recipe,
        "code_version": __version__,
        "latents": {"path": fmt.LATENTS, "sha256_of_shard_hashes": latents_sha},
        "members": {
            "image": fmt.IMAGE_CODECS[plan.spec["image_codec"]["image"]], "mask": fmt.EXT_MASK, "latent": fmt.EXT_LATENT, "meta": fmt.EXT_META,
            **({"raw_mask": fmt.EXT_RAW_MASK} if plan.spec["keep_raw_mask"] else {}),
        },
        "shards": shards,
    }
