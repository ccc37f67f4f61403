"""`generate()`: plan a job, prepare its output folder (the DatasetWriter), run the shards still
missing (in this process or on dask), then write the manifest.

The shard is the unit of work: shard k holds samples [k*S, min((k+1)*S, N)) and is a pure
function of (spec, k), where the spec is `Plan.spec` (built by `make_plan` from the parts of
`GenerateConfig` that determine the bytes). Workers keep their generator between shards and
return a small status row; the client never receives pixels.
"""
from __future__ import annotations

import sys

from factory import __version__
from factory import format as fmt
from factory.dataset.compact import compact, drop_fragments, should_compact
from factory.dataset.writer import DatasetWriter
from factory.device import pick_device
from factory.format import FactoryError
from factory.generate.compute import cc_iterations_for
from factory.generate.config import GenerateConfig, encoder_mode
from factory.generate.distribute import run_shards
from factory.generate.encode import encoder_processes
from factory.generate.plan import Plan, make_plan
from factory.provenance import check_same_platform, manifest_platforms, platform_record

OTHER_SPEC = ("{root} holds a dataset with another spec ({diff}); "
              "use another --out, rerun the original command to resume, or pass --overwrite")


def output_writer(cfg: GenerateConfig, plan: Plan) -> DatasetWriter:
    """The writer of `cfg.out` for `plan` (enter it to lock and prepare the folder)."""
    return DatasetWriter(cfg.out, spec=plan.spec, spec_hash=plan.spec_hash, samples=cfg.n, dim_z=plan.dim_z,
                         shard_size=cfg.shard_size, other_spec=OTHER_SPEC, overwrite=cfg.overwrite)


def generate(cfg: GenerateConfig, log=None) -> dict:
    """Run (or resume) a generation job; returns the manifest."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    encoder_mode()
    encoder_processes(4, 1)
    cc_iterations_for("cuda")  # the knobs fail here, before any work, rather than in every shard
    plan = make_plan(cfg)
    cfg.out = cfg.out.rstrip("/")
    with output_writer(cfg, plan) as writer:
        done, todo, manifest = writer.resume(log)
        if manifest is not None:
            drop_fragments(cfg.out, manifest)  # a run killed after its compacted manifest
            return manifest
        if cfg.same_platform and not cfg.scheduler:  # here, before any work (cluster workers check each shard)
            here = platform_record(plan.spec["generator"], pick_device(cfg.device))
            check_same_platform([d.get("platform") for d in done.values()], here, cfg.out)
        failures = run_shards(cfg, plan, todo, done)
        if failures:
            raise FactoryError(failure_summary(failures, todo, done))
        if cfg.same_platform:
            check_one_platform(cfg.out, [d.get("platform") for d in done.values()])
        manifest = build_manifest(cfg, plan, writer.shard_entries(done))
        if should_compact(manifest):  # many shards: the index as a few large parts (format 3)
            manifest = compact(cfg.out, manifest, log=log)
        writer.finish(manifest)
        drop_fragments(cfg.out, manifest)
    return manifest


def failure_summary(failures: list[dict], todo: list[int], done: dict) -> str:
    """One line for a job's failed shards: the distinct errors (first 3), how many shards were not
    started, and the log file holding every failure's traceback."""
    from factory.fsio import write_failure_log

    causes: dict[str, str] = {}  # the same cause in many shards is named once, by its first shard
    for f in failures:
        causes.setdefault(f["error"].split("): ", 1)[-1], f["error"])
    errors = list(causes.values())
    shards = ", ".join(str(f["shard"]) for f in failures[:8]) + (", ..." if len(failures) > 8 else "")
    left = len([k for k in todo if k not in done]) - len(failures)
    log = write_failure_log("generate", failures)
    return (f"{len(failures)} shard(s) failed ({shards}): " + "; ".join(errors[:3])
            + (f"; {len(errors) - 3} other error(s)" if len(errors) > 3 else "")
            + (f"; {left} shard(s) not started" if left > 0 else "")
            + " — rerun the same command to resume" + (f" (details in {log})" if log else ""))


def build_manifest(cfg: GenerateConfig, plan: Plan, shards: list[dict]) -> dict:
    """manifest.json of a finished job from its shard entries (see DatasetWriter.shard_entries)."""
    latents_sha = fmt.sha256_bytes("".join(s["latents_sha256"] for s in shards).encode())
    ds_id = fmt.dataset_id(shards, latents_sha)
    shards, platforms = manifest_platforms(shards)
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
        **({"direction": {"sha256": plan.spec["direction"]["sha256"], "values": plan.direction.tolist()}}
           if "file" in plan.spec["direction"] else {}),  # what `verify --regenerate` shifts along
        "platforms": platforms,
        "shards": shards,
    }


def check_one_platform(root: str, records: list) -> None:
    """``--same-platform`` at the end of a job: workers of two platforms (a mixed cluster) are one line."""
    records = [r for r in records if isinstance(r, dict)]
    for r in records[1:]:
        check_same_platform(records[:1], r, root)
