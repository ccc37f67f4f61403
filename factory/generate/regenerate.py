"""`factory verify --regenerate N`: N samples drawn at random, made again from the manifest's spec
alone (latent source and seed, generator and weights by sha256, direction, mask rule, codec) on the
generate path's own compute (`generate.worker.BatchPipeline`, `generate.encode` via
`submit_encoding`), and compared with what the dataset holds: latent, image, mask, statistics and
filter decisions.

Nothing in the dataset chooses the code that runs: the spec's generator name maps to a built-in or an
installed plug-in (`generators.installed`), or the user names one (`--generator`). The draw cannot be
foreseen: a fresh seed by default (printed, so a run can be repeated with ``--seed``), spread over the
shards so that every shard is checked once N reaches their count (`pick_rows`); the report says what
a run can and cannot exclude (`coverage_line`).

Where identical bytes are promised, everything must be identical, byte for byte, whatever a shard's
platform record says: the shapes world on an x86-64 CPU, any generator on the platform that made the
shard (`factory.provenance`). Elsewhere (another GPU, bf16, compiled graphs) the latents must still be
identical and the rest agree within `THRESHOLDS`. A missing platform record is a problem, not a
reason to relax.
"""
from __future__ import annotations

import io
import math
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from factory import format as fmt
from factory.format import FactoryError

# Agreement required where the platform differs (fractions; latents are always exact).
THRESHOLDS = {"pixels": 0.99, "masks": 0.98, "decisions": 0.95}
PIXEL_TOLERANCE = 2  # grey levels within which two image values count as agreeing
DECISIONS = ("pass_area", "pass_hist_reference", "pass_hist_paper")


@dataclass
class RegenerateReport:
    url: str
    dataset_id: str
    seed: int = 0
    coverage: str = ""  # what the draw can and cannot exclude
    samples: int = 0
    exact: bool = True  # identical bytes were required (why_exact says why)
    why_exact: str = ""
    platform: str = ""
    latents_equal: int = 0
    bytes_equal: int = 0
    stats_equal: int = 0
    pixels: float = 1.0
    max_difference: int = 0
    masks: float = 1.0
    decisions: float = 1.0
    problems: list[str] = field(default_factory=list)
    details: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        what = f"{self.url}: {self.samples} samples of {self.dataset_id} regenerated from the spec (--seed {self.seed})"
        if not self.ok:
            return f"FAIL {what}: " + "; ".join(self.problems[:3])
        if self.exact:
            return (f"PASS {what}, bytes compared ({self.why_exact}; {self.platform}): latents, images, masks, "
                    "statistics and decisions identical")
        t = THRESHOLDS
        return (f"PASS {what} on another platform ({self.platform}): latents identical, {self.bytes_equal} of "
                f"{self.samples} samples byte-identical; pixel agreement "
                f"{self.pixels:.2%} (>= {t['pixels']:.0%} within {PIXEL_TOLERANCE} levels), max difference "
                f"{self.max_difference}, mask agreement {self.masks:.2%} (>= {t['masks']:.0%}), decision agreement "
                f"{self.decisions:.2%} (>= {t['decisions']:.0%})")

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items()} | {"ok": self.ok, "thresholds": THRESHOLDS,
                                                          "pixel_tolerance": PIXEL_TOLERANCE}


# ---------------------------------------------------------------- the spec's inputs

def generator_options(name: str, identity: dict, weights: str | None) -> dict:
    """Keyword options that rebuild, as generator `name`, the generator an identity names (the
    registry's inverse of ``identity()``); ``weights``: a local file checked by sha256."""
    from factory.generators import options_from_identity

    opts = options_from_identity(name, identity)
    if weights:
        opts = {k: v for k, v in opts.items() if k not in ("random_weights", "seed")} | {"weights": weights}
    return opts


def weights_file(identity: dict, weights: str | None) -> str | None:
    """A local copy of the weights the identity names: --weights (checked by sha256), else this host's cache."""
    from factory.fsio import cache_dir, fetch_copy
    from factory.generators.torchcore import needs_weights_file

    if not needs_weights_file(identity):
        return None
    want, source = str(identity["weights_sha256"]), str(identity["weights_source"])
    if weights:
        local, got = fetch_copy(weights)
        if got != want:
            raise FactoryError(f"--weights {weights} has sha256 {got[:12]}…, the spec's generator was made with "
                               f"{want[:12]}… ({source}); pass that file")
        return local
    cached = cache_dir() / want / source
    plain = re.fullmatch(r"[0-9a-f]{64}", want) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,200}", source)
    if plain and cached.is_file():  # names from the manifest: never a path outside the cache
        return str(cached)
    raise FactoryError(f"the spec's weights are not at hand: pass --weights FILE ({source}, sha256 {want[:12]}…)")


def direction_vector(manifest: dict, gen, direction: str | None) -> np.ndarray:
    """The spec's direction: a generator's named one, the manifest's stored values, or --direction, each
    checked against the spec's sha256."""
    spec_dir = manifest["spec"]["direction"]
    if direction:
        from factory.directions.io import load_direction_file

        vec = np.asarray(load_direction_file(direction, gen.dim_z), np.float32)
    elif "name" in spec_dir:
        named = gen.named_directions() if hasattr(gen, "named_directions") else {}
        if spec_dir["name"] not in named:
            raise FactoryError(f"the spec's direction {spec_dir['name'][:40]!r} is not one the generator names "
                               f"({', '.join(sorted(named)) or 'none'}): pass --direction FILE")
        vec = np.asarray(named[spec_dir["name"]], np.float32)
    elif isinstance(manifest.get("direction"), dict) and "values" in manifest["direction"]:
        vec = np.asarray(manifest["direction"]["values"], np.float32)
    else:
        raise FactoryError(f"the manifest does not hold its direction ({spec_dir.get('file')}): pass --direction FILE")
    if fmt.sha256_bytes(vec.tobytes()) != spec_dir["sha256"]:
        raise FactoryError(f"direction sha256 {fmt.sha256_bytes(vec.tobytes())[:12]}… is not the spec's "
                           f"{spec_dir['sha256'][:12]}…: not the direction this dataset names")
    return vec


def latent_source(spec: dict, dim_z: int, latents: str | None):
    """The spec's latent source, rebuilt from its description (files and stores checked by sha256). A
    name in the spec is looked up in this machine's embeddings store only, never read as a path or URL."""
    from factory.latents import embeddings
    from factory.latents import sources as lat

    d = spec["latents"]
    kind = d.get("kind")
    if kind == "gaussian":
        return lat.gaussian(dim_z, d["seed"])
    if kind == "truncated":
        return lat.truncated(dim_z, d["seed"], bound=d["bound"], scale=d["scale"])
    if kind not in ("embeddings", "file"):
        raise FactoryError(f"latent kind {str(kind)[:40]!r} is not known here (gaussian, truncated, embeddings, file)")
    want = d.get("sha256")
    if not (isinstance(want, str) and re.fullmatch(r"[0-9a-f]{64}", want)):
        raise FactoryError(f"the spec's latents ({kind}) carry no sha256: nothing to check a latents file against, "
                           "so this dataset cannot be regenerated")
    if kind == "embeddings":
        name = d.get("name")
        if not latents:
            if not (isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", name)
                    and embeddings.stored(name)):
                raise FactoryError(f"the spec's embeddings {str(name)[:40]!r} are not in this machine's store: "
                                   f"pass --latents FILE (sha256 {want[:12]}…)")
            latents = str(embeddings.store_dir() / f"{name}.zarr")
        src = lat.from_embeddings(latents, dim_z, d["seed"], d["z_noise"])
    elif latents:
        src = lat.from_file(latents, dim_z)
    else:
        raise FactoryError(f"the spec's latents are a file (sha256 {want[:12]}…): pass --latents FILE")
    if src.sha256 != want:
        raise FactoryError(f"latents {latents} have sha256 {src.sha256[:12]}…, the spec names {want[:12]}…")
    return src


# ---------------------------------------------------------------- regenerate and compare

def fresh_seed() -> int:
    """A seed nobody could know when the dataset was made (printed as ``--seed N`` so a run can be repeated)."""
    return secrets.randbelow(1 << 31)


def chosen_shards(manifest: dict, shards=()) -> list[dict]:
    """The shard entries to draw from: every shard, or those named (one line for an id the dataset lacks)."""
    entries = sorted((e for e in manifest["shards"] if e["samples"] > 0), key=lambda e: e["shard"])
    if not shards:
        return entries
    by_id = {e["shard"]: e for e in entries}
    missing = sorted(set(shards) - set(by_id))
    if missing:
        raise FactoryError(f"--shard {missing[0]}: the dataset has no such shard with samples "
                           f"(shards 0..{len(manifest['shards']) - 1})")
    return [by_id[k] for k in sorted(set(shards))]


def draws_per_shard(sizes: list[int], n: int, rng: np.random.Generator) -> list[int]:
    """How many of `n` samples each shard gives: as even as the shards allow (every shard once n reaches
    their count), the remainder to shards picked at random."""
    counts = [0] * len(sizes)
    left = min(n, sum(sizes))
    while left:
        room = [i for i, (c, s) in enumerate(zip(counts, sizes)) if c < s]
        share, extra = divmod(left, len(room))
        lucky = set(rng.choice(len(room), size=extra, replace=False).tolist()) if extra else set()
        for j, i in enumerate(room):
            add = min(share + (j in lucky), sizes[i] - counts[i])
            counts[i] += add
            left -= add
    return counts


def pick_rows(entries: list[dict], n: int | None, seed: int) -> list[int]:
    """`n` rows (None: all) drawn across `entries`, spread over the shards (`draws_per_shard`), at random
    within each; a pure function of the seed."""
    if n is None:
        return [r for e in entries for r in range(e["first_row"], e["first_row"] + e["samples"])]
    rng = np.random.default_rng([seed, 0x7E6E])
    counts = draws_per_shard([e["samples"] for e in entries], n, rng)
    rows: list[int] = []
    for e, c in zip(entries, counts):
        rows += (e["first_row"] + rng.choice(e["samples"], size=c, replace=False)).tolist()
    return sorted(int(r) for r in rows)


def none_drawn(size: int, k: int, m: int) -> float:
    """The probability that `m` rows drawn without replacement from `size` miss `k` given ones."""
    m, k = min(m, size), min(k, size)
    return math.comb(size - k, m) / math.comb(size, m) if m <= size - k else 0.0


def miss_probability(entries: list[dict], n: int | None, k: int) -> float:
    """The probability, over fresh seeds, that a run of `n` draws misses every sample of a forgery of `k`
    samples in one shard (the worst shard for the checker), the shard's draws dealt as `draws_per_shard`
    deals them."""
    if n is None or n >= sum(e["samples"] for e in entries):
        return 0.0
    base, extra = divmod(n, len(entries))
    p_extra = extra / len(entries)
    return max((1 - p_extra) * none_drawn(e["samples"], k, base) + p_extra * none_drawn(e["samples"], k, base + 1)
               for e in entries)


def coverage_line(entries: list[dict], n: int | None, every: int) -> str:
    """What a run can and cannot exclude, in one sentence."""
    K = len(entries)
    scope = "" if K == every else f" (only shard(s) {', '.join(str(e['shard']) for e in entries[:8])} of {every})"
    if n is None or n >= sum(e["samples"] for e in entries):
        return f"every sample of {K} shard(s) checked{scope}: no forgery in them can be missed"
    size = max(e["samples"] for e in entries)
    ks = sorted({1, max(1, size // 10)} - {size})
    parts = [f"{miss_probability(entries, n, k):.1%} ({k} sample{'s' * (k != 1)})" for k in ks]
    parts.append(f"{miss_probability(entries, n, size):.1%} (the whole shard)")
    checked = "every shard checked" if n >= K else f"{K - n} of {K} shards unchecked"
    return (f"{checked}{scope}; a forgery in 1 of {K} shards is missed with probability " + ", ".join(parts))


def batches_of(manifest: dict, rows: list[int], device: str, batch: int = 64) -> list[tuple[list[int], list[int]]]:
    """(rows to compute, rows wanted) per forward. On CUDA the kernels may depend on the batch's shape, so the
    batches the shard was made in (its sidecar's ``batch_size``) are made again whole; on the CPU (batch-size
    independent, tested) the wanted rows go in batches of `batch`."""
    if not str(device).startswith("cuda"):
        return [(rows[i:i + batch], rows[i:i + batch]) for i in range(0, len(rows), batch)]
    groups: dict[tuple, list[int]] = {}
    for r in rows:
        e = fmt.shard_entry(manifest, r)
        bs = int(e.get("batch_size") or batch)
        b0 = e["first_row"] + (r - e["first_row"]) // bs * bs
        groups.setdefault((b0, min(b0 + bs, e["first_row"] + e["samples"])), []).append(r)
    return [(list(range(b0, b1)), want) for (b0, b1), want in sorted(groups.items())]


def recompute(job, manifest: dict, rows: list[int], latents) -> dict[int, dict[str, bytes]]:
    """{row: {ext: bytes}} of the samples at `rows`, made as a worker makes them, plus their index row
    values under ``stat:NAME``."""
    from factory.device import pick_device
    from factory.generate.compute import cached_generator
    from factory.generate.worker import BatchPipeline, submit_encoding
    from factory.provenance import deterministic_kernels

    device = pick_device(job.device)
    deterministic_kernels(device)
    gen = cached_generator(job.generator, job.worker_options(), device)
    pipe = BatchPipeline(gen, job.spec, direction=job.direction, device=device, timers=None)
    out: dict[int, dict[str, bytes]] = {}
    S = job.spec["shard_size"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for part, wanted in batches_of(manifest, rows, device):
            z = np.concatenate([latents.rows(r, r + 1) for r in part])
            labels = None
            if "labels" in job.spec:  # class-conditional: sample i's class from (labels seed, i)
                labels = np.concatenate([gen.labels(job.spec["labels"]["seed"], r, r + 1) for r in part])
            zt, pair = pipe.launch(z, labels)
            host = pipe.collect(zt, pair, *pipe.queue_masks(zt, pair))
            for j, r in enumerate(part):
                if r not in wanted:
                    continue
                one = {k: (None if v is None else v[j:j + 1]) for k, v in host.items()}
                (fut,) = submit_encoding(pool, one, shard=r // S, row0=r, latents=z[j:j + 1],
                                         codec=job.spec["image_codec"],
                                         labels=None if labels is None else labels[j:j + 1])
                sample = fmt.record_members(fut.result(), f"regenerated sample {r}")
                sample.update({f"stat:{k[2:]}": one[k][0] for k in one if k.startswith("s_")})
                out[r] = sample
    return out


def decode_gray(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))


def compare(row: int, want: dict, got: dict, *, index_row: dict, exts: dict) -> dict:
    """One sample: whether latent, members and statistics match, how much pixels, masks and decisions agree."""
    key = fmt.sample_key(row)
    d: dict = {"key": key}
    if not all(e in want for e in (fmt.EXT_LATENT, exts["image"], fmt.EXT_MASK)):
        return dict(d, latent=False, bytes=False, stats=False, pixels=0.0, max_difference=255, masks=0.0,
                    decisions=False)
    lat_ok = want.get(fmt.EXT_LATENT) == got[fmt.EXT_LATENT]
    img_a, img_b = decode_gray(want[exts["image"]]), decode_gray(got[exts["image"]])
    m_a, m_b = decode_gray(want[fmt.EXT_MASK]) > 127, decode_gray(got[fmt.EXT_MASK]) > 127
    diff = np.abs(img_a.astype(np.int16) - img_b.astype(np.int16)) if img_a.shape == img_b.shape else None
    stats_ok = all(_same(index_row.get(k[5:]), v) for k, v in got.items() if k.startswith("stat:"))
    d.update(
        latent=lat_ok,
        bytes=all(want.get(e) == got[e] for e in got if not e.startswith("stat:")),
        stats=stats_ok,
        pixels=float((diff <= PIXEL_TOLERANCE).mean()) if diff is not None else 0.0,
        max_difference=int(diff.max()) if diff is not None else 255,
        masks=float((m_a == m_b).mean()) if m_a.shape == m_b.shape else 0.0,
        decisions=all(bool(index_row.get(k)) == bool(got[f"stat:{k}"]) for k in DECISIONS),
    )
    return d


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))


def stored_samples(res: fmt.Resolved, rows: list[int]) -> tuple[dict, dict]:
    """({row: {ext: bytes}}, {row: index row}) of the dataset's samples at `rows`: one range read per sample
    where the index has offsets (format 2), else their shards read whole."""
    from factory.dataset.reader import load_index, read_samples

    samples = read_samples(res, rows)
    shards = sorted({fmt.shard_entry(res.manifest, r)["shard"] for r in rows})
    index = {rec["row"]: rec for rec in load_index(res.root, res.manifest, shards=shards).to_pylist()
             if rec["row"] in samples}
    return samples, index


def verify_dataset(url: str, *, allow_remote_shards: bool = False, workers: int | None = None,
                   scheduler: str | None = None, index_only: bool = False, samples: int | str | None = None, options: dict | None = None):
    """`factory verify`: (the verify report, the regenerate report or None). ``samples``: None for no
    regeneration, else `regenerate`'s `n` (``"all"``: every sample); it runs only when verify found
    nothing wrong."""
    from factory.dataset.verify import verify

    rep = verify(url, allow_remote_shards=allow_remote_shards, workers=workers, index_only=index_only,
                 scheduler=scheduler)
    if not rep.ok or samples is None:
        return rep, None
    n = None if samples == "all" else samples
    return rep, regenerate(url, n, allow_remote_shards=allow_remote_shards, **(options or {}))


SPEC_NEEDS = ("generator", "latents", "direction", "shift_r", "mask_rule", "cc_ratio", "max_fg", "image_codec",
              "keep_raw_mask", "shard_size")
DERIVED = ("materialized-view", "relabelled")


def regenerable_spec(m: dict) -> dict:
    """The manifest's spec when it can be made again: one FactoryError line for a derived dataset or a
    spec that lacks what generate writes."""
    kind = (m.get("provenance") or {}).get("kind") if isinstance(m.get("provenance"), dict) else None
    if kind in DERIVED:
        raise FactoryError(f"dataset {m['dataset_id']} is derived ({kind}): its rows are renumbered copies, "
                           "so regenerate its parent dataset instead")
    spec = m.get("spec") or {}
    missing = [k for k in SPEC_NEEDS if k not in spec]
    if missing:
        raise FactoryError(f"the manifest's spec lacks {', '.join(missing)}: nothing to regenerate from "
                           "(not a dataset factory generate wrote)")
    if not isinstance(spec["generator"], dict) or not isinstance(spec["latents"], dict):
        raise FactoryError("the manifest's spec.generator and spec.latents must be objects")
    return spec


def bytes_promised(generator: str, spec: dict, device: str) -> bool:
    """Whether identical bytes are promised whatever a shard's platform record says: the shapes world
    regenerated on an x86-64 CPU (docs/format.md, "Reproducibility")."""
    import platform

    return (generator == "shapes" and spec["generator"].get("name") == "shapes" and str(device) == "cpu"
            and platform.machine().lower() in ("x86_64", "amd64"))


def record_problems(m: dict, rows: list[int]) -> list[str]:
    """Shards of `rows` without a usable platform record (reported; never a reason to relax). A dataset
    upgraded from format 1, made before the record existed, is the one honest case."""
    table = m.get("platforms") or {}
    bad = sorted({e["shard"] for e in (fmt.shard_entry(m, r) for r in rows) if e.get("platform") not in table})
    if not bad or (m.get("upgraded_from") or {}).get("format_version") == 1:
        return []
    return [f"shard(s) {', '.join(map(str, bad[:5]))} name no platform record the manifest lists (a generate run "
            "always writes one: stripped or edited)"]


def regenerate(url: str, n: int | None = 8, *, seed: int | None = None, shards=(), generator: str | None = None,
               weights: str | None = None, latents: str | None = None, direction: str | None = None,
               device: str | None = None, allow_remote_shards: bool = False) -> RegenerateReport:
    """Regenerate `n` samples (None: all) drawn across the dataset's shards (or `shards`) with `seed` (None:
    a fresh one) from its manifest's spec, and compare (see the module). `generator`: the user's choice of
    code for the spec's generator (any name load_generator takes); else the spec's name, built-in or
    installed plug-ins only."""
    from factory.device import pick_device
    from factory.generate.compute import cached_generator
    from factory.generate.plan import ShardJob
    from factory.generators import installed
    from factory.provenance import describe, platform_id, platform_record

    if n is not None and n < 1:
        raise FactoryError(f"--regenerate must be a positive number of samples or 'all', got {n}")
    seed = fresh_seed() if seed is None else seed
    res = fmt.open_dataset(url, allow_remote_shards=allow_remote_shards)
    m = res.manifest
    spec = regenerable_spec(m)
    entries = chosen_shards(m, shards)
    rep = RegenerateReport(url=url, dataset_id=m["dataset_id"], seed=seed,
                           coverage=coverage_line(entries, n, len(m["shards"])))
    if fmt.sha256_bytes(fmt.canonical_json(spec)) != m.get("spec_hash"):
        rep.problems.append("the manifest's spec_hash is not the sha256 of its spec (edited)")
        return rep
    ident = spec["generator"]
    name = generator or installed(ident.get("name"))
    options = generator_options(name, ident, weights_file(ident, weights))
    dev = pick_device(device)
    gen = cached_generator(name, options, dev)
    strip = lambda d: {k: v for k, v in d.items() if k != "weights_source"}  # noqa: E731
    if strip(gen.identity()) != strip(ident):
        diff = sorted(k for k in set(ident) | set(gen.identity()) if ident.get(k) != gen.identity().get(k))
        rep.problems.append(f"the generator rebuilt from the spec differs from it in {', '.join(diff)}")
        return rep
    job = ShardJob(root=res.root, spec=spec, spec_hash=m["spec_hash"], generator=name,
                   generator_options=options, direction=direction_vector(m, gen, direction), device=dev)
    src = latent_source(spec, gen.dim_z, latents)
    rows = pick_rows(entries, n, seed)
    here = platform_record(ident, dev)
    rep.platform = describe(here)
    rep.problems += record_problems(m, rows)
    promised = bytes_promised(name, spec, dev)
    rep.exact = promised or all(fmt.shard_entry(m, r).get("platform") == platform_id(here) for r in rows)
    rep.why_exact = ("the shapes world promises the same bytes on every x86-64 CPU" if promised
                     else "the platform that made them" if rep.exact else "")
    got = recompute(job, m, rows, src)
    want, index = stored_samples(res, rows)
    exts = m["members"]
    rep.details = [compare(r, want[r], got[r], index_row=index.get(r, {}), exts=exts) for r in rows]
    judge(rep, spec)
    return rep


def judge(rep: RegenerateReport, spec: dict) -> None:
    """Totals of the per-sample comparisons and the verdict (problems) against exactness or THRESHOLDS."""
    d = rep.details
    rep.samples = len(d)
    rep.latents_equal = sum(x["latent"] for x in d)
    rep.bytes_equal = sum(x["bytes"] for x in d)
    rep.stats_equal = sum(x["stats"] for x in d)
    rep.pixels = float(np.mean([x["pixels"] for x in d]))
    rep.max_difference = max(x["max_difference"] for x in d)
    rep.masks = float(np.mean([x["masks"] for x in d]))
    rep.decisions = float(np.mean([x["decisions"] for x in d]))
    if rep.latents_equal < rep.samples:
        lat = spec["latents"]
        rep.problems.append(f"{rep.samples - rep.latents_equal} of {rep.samples} latents are not the spec's "
                            f"({lat['kind']}, seed {lat.get('seed')}): the samples were not made as the manifest says")
    if rep.exact:
        bad = [x["key"] for x in d if not (x["bytes"] and x["stats"])]
        if bad:
            rep.problems.append(f"{len(bad)} of {rep.samples} samples differ where identical bytes are promised "
                                f"({rep.why_exact}; first {bad[0]})")
        return
    for name, value in (("pixel", rep.pixels), ("mask", rep.masks), ("decision", rep.decisions)):
        t = THRESHOLDS[name + "s"]
        if value < t:
            rep.problems.append(f"{name} agreement {value:.2%} is below {t:.0%}")
