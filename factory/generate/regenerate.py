"""`factory verify --regenerate N`: N samples drawn at random, made again from the manifest's spec
alone (latent source and seed, generator and weights by sha256, direction, mask rule, codec) on the
generate path's own compute (`generate.worker.BatchPipeline`, `generate.encode` via
`submit_encoding`), and compared with what the dataset holds: latent, image, mask, statistics and
filter decisions.

Where this platform is the one that made a sample's shard (`factory.provenance`), everything must be
identical, byte for byte. Elsewhere (another GPU, bf16, compiled graphs, or a dataset without a
platform record) the latents must still be identical and the rest agree within `THRESHOLDS`.
"""
from __future__ import annotations

import inspect
import io
import tarfile
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
    samples: int = 0
    exact: bool = True  # the platform matched for every sample: bit identity was required
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
        what = f"{self.url}: {self.samples} samples of {self.dataset_id} regenerated from the spec"
        if not self.ok:
            return f"FAIL {what}: " + "; ".join(self.problems[:3])
        if self.exact:
            return (f"PASS {what} on the platform that made them ({self.platform}): latents, images, masks, "
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

def generator_options(identity: dict, weights: str | None) -> dict:
    """Keyword options that rebuild the generator an identity names (weights: a local file)."""
    from factory.generators import resolve

    fn = resolve(identity["name"])[0]
    params = inspect.signature(fn).parameters
    # identity entries that are loader options (config, truncation, classes, ...), as the loader takes them
    opts: dict = {k: v for k, v in identity.items()
                  if k in params and k not in ("name", "weights", "weights_sha256", "weights_source", "precision")}
    if opts.get("classes") == "all":
        opts["classes"] = None
    p = identity.get("precision") or {}
    for k in ("autocast", "channels_last", "compile", "fused"):
        if p.get(k) not in (None, False):
            opts[k] = p[k]
    if p.get("dtype") not in (None, "float32"):
        opts["dtype"] = p["dtype"]
    source = str(identity.get("weights_source") or "")
    if weights:
        opts["weights"] = weights
    elif source.startswith("random(seed="):
        opts.update(random_weights=True, seed=int(source[len("random(seed="):-1]))
    if any(q.kind is q.VAR_KEYWORD for q in params.values()):
        return opts
    return {k: v for k, v in opts.items() if k in params}


def weights_file(identity: dict, weights: str | None) -> str | None:
    """A local copy of the weights the identity names: --weights (checked by sha256), else this host's cache."""
    from factory.fsio import cache_dir, fetch_copy

    want = identity.get("weights_sha256")
    source = str(identity.get("weights_source") or "")
    if not want or not source or source.startswith("random("):
        return None
    if weights:
        local, got = fetch_copy(weights)
        if got != want:
            raise FactoryError(f"--weights {weights} has sha256 {got[:12]}…, the spec's generator was made with "
                               f"{want[:12]}… ({source}); pass that file")
        return local
    cached = cache_dir() / want / source
    if cached.is_file():
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
        vec = np.asarray(gen.named_directions()[spec_dir["name"]], np.float32)
    elif isinstance(manifest.get("direction"), dict) and "values" in manifest["direction"]:
        vec = np.asarray(manifest["direction"]["values"], np.float32)
    else:
        raise FactoryError(f"the manifest does not hold its direction ({spec_dir.get('file')}): pass --direction FILE")
    if fmt.sha256_bytes(vec.tobytes()) != spec_dir["sha256"]:
        raise FactoryError(f"direction sha256 {fmt.sha256_bytes(vec.tobytes())[:12]}… is not the spec's "
                           f"{spec_dir['sha256'][:12]}…: not the direction this dataset names")
    return vec


def latent_source(spec: dict, dim_z: int, latents: str | None):
    """The spec's latent source, rebuilt from its description (files and stores checked by sha256)."""
    from factory.latents import sources as lat

    d = spec["latents"]
    if d["kind"] == "gaussian":
        return lat.gaussian(dim_z, d["seed"])
    if d["kind"] == "truncated":
        return lat.truncated(dim_z, d["seed"], bound=d["bound"], scale=d["scale"])
    if d["kind"] == "embeddings":
        src = lat.from_embeddings(latents or d["name"], dim_z, d["seed"], d["z_noise"])
    elif latents:
        src = lat.from_file(latents, dim_z)
    else:
        raise FactoryError(f"the spec's latents are a file (sha256 {d['sha256'][:12]}…): pass --latents FILE")
    if src.sha256 != d["sha256"]:
        raise FactoryError(f"latents {latents or d.get('name')} have sha256 {src.sha256[:12]}…, the spec names "
                           f"{d['sha256'][:12]}…")
    return src


# ---------------------------------------------------------------- regenerate and compare

def pick_rows(n_total: int, n: int, seed: int) -> list[int]:
    rng = np.random.default_rng([seed, 0x7E6E])
    return sorted(int(i) for i in rng.choice(n_total, size=min(n, n_total), replace=False))


def batches_of(manifest: dict, rows: list[int], device: str, batch: int = 64) -> list[tuple[list[int], list[int]]]:
    """(rows to compute, rows wanted) per forward. On CUDA the kernels may depend on the batch's shape, so the
    batches the shard was made in (its sidecar's ``batch_size``) are made again whole; on the CPU (batch-size
    independent, tested) the wanted rows go in batches of `batch`."""
    if not str(device).startswith("cuda"):
        return [(rows[i:i + batch], rows[i:i + batch]) for i in range(0, len(rows), batch)]
    groups: dict[tuple, list[int]] = {}
    for r in rows:
        e = _entry_of(manifest, r)
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
                tar = tarfile.open(fileobj=io.BytesIO(fut.result() + b"\0" * 1024))
                sample = {fmt.split_member(m.name)[1]: tar.extractfile(m).read() for m in tar.getmembers()}
                sample.update({f"stat:{k[2:]}": one[k][0] for k in one if k.startswith("s_")})
                out[r] = sample
    return out


def decode_gray(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))


def compare(row: int, want: dict, got: dict, index_row: dict, exts: dict) -> dict:
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


def _entry_of(manifest: dict, row: int) -> dict:
    for s in manifest["shards"]:
        if s["first_row"] <= row < s["first_row"] + s["samples"]:
            return s
    raise fmt.FormatError(f"row {row} is in no shard of the manifest")


def stored_samples(res: fmt.Resolved, rows: list[int]) -> tuple[dict, dict]:
    """({row: {ext: bytes}}, {row: index row}) of the dataset's samples at `rows`: one range read per sample
    where the index has offsets (format 2), else their shards read whole."""
    from factory.dataset.reader import load_index, read_samples

    samples = read_samples(res, rows)
    shards = sorted({_entry_of(res.manifest, r)["shard"] for r in rows})
    index = {rec["row"]: rec for rec in load_index(res.root, res.manifest, shards=shards).to_pylist()
             if rec["row"] in samples}
    return samples, index


def regenerate(url: str, n: int = 8, *, seed: int = 0, weights: str | None = None, latents: str | None = None,
               direction: str | None = None, device: str | None = None,
               allow_remote_shards: bool = False) -> RegenerateReport:
    """Regenerate `n` random samples of a dataset from its manifest's spec and compare (see the module)."""
    from factory.device import pick_device
    from factory.generate.compute import cached_generator
    from factory.generate.plan import ShardJob
    from factory.provenance import describe, platform_id, platform_record

    if n < 1:
        raise FactoryError(f"--regenerate must be a positive number of samples, got {n}")
    res = fmt.open_dataset(url, allow_remote_shards=allow_remote_shards)
    m = res.manifest
    spec = m.get("spec") or {}
    rep = RegenerateReport(url=url, dataset_id=m["dataset_id"])
    if fmt.sha256_bytes(fmt.canonical_json(spec)) != m.get("spec_hash"):
        rep.problems.append("the manifest's spec_hash is not the sha256 of its spec (edited)")
        return rep
    ident = spec["generator"]
    options = generator_options(ident, weights_file(ident, weights))
    dev = pick_device(device)
    gen = cached_generator(ident["name"], options, dev)
    strip = lambda d: {k: v for k, v in d.items() if k != "weights_source"}  # noqa: E731
    if strip(gen.identity()) != strip(ident):
        diff = sorted(k for k in set(ident) | set(gen.identity()) if ident.get(k) != gen.identity().get(k))
        rep.problems.append(f"the generator rebuilt from the spec differs from it in {', '.join(diff)}")
        return rep
    job = ShardJob(root=res.root, spec=spec, spec_hash=m["spec_hash"], generator=ident["name"],
                   generator_options=options, direction=direction_vector(m, gen, direction), device=dev)
    src = latent_source(spec, gen.dim_z, latents)
    rows = pick_rows(m["samples"], n, seed)
    here = platform_record(ident, dev)
    rep.platform = describe(here)
    rep.exact = all(_entry_of(m, r).get("platform") == platform_id(here) for r in rows)
    got = recompute(job, m, rows, src)
    want, index = stored_samples(res, rows)
    exts = m["members"]
    rep.details = [compare(r, want[r], got[r], index.get(r, {}), exts) for r in rows]
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
            rep.problems.append(f"{len(bad)} of {rep.samples} samples differ on the platform that made them "
                                f"(first {bad[0]})")
        return
    for name, value in (("pixel", rep.pixels), ("mask", rep.masks), ("decision", rep.decisions)):
        t = THRESHOLDS[name + "s"]
        if value < t:
            rep.problems.append(f"{name} agreement {value:.2%} is below {t:.0%}")
