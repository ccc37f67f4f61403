"""Latent embeddings of real images by GAN inversion: ``z_i = argmin_z  L(G(z), x_i) + prior(z)``.

Works for every generator of the registry (they are differentiable in z with frozen weights),
so custom datasets need no encoder and no TensorFlow (paper eq. 6 samples near these rows).

- Images: every file of a folder or fsspec URL with an image suffix, in sorted name order;
  each is centre-cropped to a square and resized to the generator's resolution.
- Loss per image: pixel MSE at ``scales`` scales (2x average pooling each) plus ``grad_weight``
  times the MSE of the horizontal and vertical image gradients; no downloaded network.
- Prior (``prior_weight`` times, per coordinate): ``gaussian`` ``||z||^2 / (2 dim_z)``, the N(0, I)
  negative log-likelihood, i.e. a MAP estimate (the default: what the image does not determine goes to
  the prior's mode), or ``shell`` ``(||z||^2 / dim_z - 1)^2``, which keeps ||z|| in N(0, I)'s typical set
  and leaves undetermined coordinates at their random start. docs/embeddings.md measures both.
- Restarts: ``restarts`` seeded inits per image (row i, restart k: seed ``[seed, i, k]``), Adam
  with a cosine-decayed step; the lowest reconstruction loss seen over steps and restarts wins.
- Resume: images go in fixed chunks of ``batch``; each finished chunk is committed atomically
  under ``$FACTORY_HOME/embeddings/.NAME.invert/`` (z rows ``.npy``, then its ``.json``), so a
  killed run redoes at most one chunk, and on CPU the result equals an uninterrupted run bit for bit.
"""
from __future__ import annotations

import io
import json
import math
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from factory import format as fmt
from factory.format import FactoryError
from factory.fsio import atomic_json, atomic_save_npy, read_npy
from factory.generators import from_uint8
from factory.latents import embeddings as emb
from factory.progress import progress_bar

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
WORK_VERSION = 1
PRIORS = ("shell", "gaussian")
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]"  # always img/s


@dataclass(frozen=True)
class InvertSettings:
    """What decides the result (stored with the embeddings; a resumed run must match it)."""

    steps: int = 200
    batch: int = 64
    lr: float = 0.1
    restarts: int = 2
    seed: int = 0
    prior_weight: float = 0.5
    prior: str = "gaussian"
    grad_weight: float = 1.0
    scales: int = 3

    def check(self) -> None:
        for k in ("steps", "batch", "restarts", "scales"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise FactoryError(f"--{k} must be a positive integer, got {v!r}")
        if not self.lr > 0:
            raise FactoryError(f"--lr must be > 0, got {self.lr!r}")
        if self.prior_weight < 0 or self.grad_weight < 0:
            raise FactoryError("--prior-weight and --grad-weight must be >= 0")
        if self.prior not in PRIORS:
            raise FactoryError(f"--prior must be one of {', '.join(PRIORS)}, got {self.prior!r}")
        if self.seed < 0:
            raise FactoryError(f"--seed must be >= 0, got {self.seed!r}")


# ------------------------------------------------------------------------------------ images


def list_images(images: str) -> tuple[object, list[str]]:
    """(fsspec filesystem, sorted paths) of the image files of a folder or URL; FactoryError when none."""
    fs, root = fmt.get_fs(str(images))
    try:
        if not fs.exists(root):
            raise FactoryError(f"--images {images}: no such folder")
        if not fs.isdir(root):
            raise FactoryError(f"--images {images}: not a folder (give a folder or URL of image files)")
        names = fs.find(root)
    except OSError as e:
        raise FactoryError(f"--images {images}: cannot list the folder ({e})") from None
    paths = sorted(p for p in names if p.lower().endswith(IMAGE_SUFFIXES) and not Path(p).name.startswith("."))
    if not paths:
        raise FactoryError(
            f"--images {images}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder; point it at your photographs"
        )
    return fs, paths


def _open(fs, path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        data = fs.cat_file(path)
        img = Image.open(io.BytesIO(data))
        img.load()
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise FactoryError(f"image {path} is unreadable ({type(e).__name__}: {str(e)[:120]}); remove or re-save it") from None
    return img, data


def check_sizes(fs, paths: list[str], resolution: int, *, upscale: bool) -> None:
    """Every image readable and at least `resolution` on its short side (else an error, or a warning with upscale)."""
    from PIL import Image

    small = []
    for p in paths:
        try:
            with fs.open(p, "rb") as f:
                w, h = Image.open(f).size
        except Exception as e:  # noqa: BLE001 - PIL raises many types for a broken header
            raise FactoryError(f"image {p} is unreadable ({type(e).__name__}); remove or re-save it") from None
        if min(w, h) < resolution:
            small.append((p, w, h))
    if small and not upscale:
        p, w, h = small[0]
        raise FactoryError(
            f"{len(small)} image(s) are smaller than the generator's resolution {resolution} (e.g. {p}: {w}x{h}); "
            "pass --upscale to enlarge them, or use larger images"
        )
    if small:
        warnings.warn(f"{len(small)} image(s) smaller than {resolution} px are upscaled (e.g. {small[0][0]})", stacklevel=2)


def load_chunk(fs, paths: list[str], resolution: int) -> tuple[np.ndarray, list[str]]:
    """uint8 [n, R, R, 3] (centre crop to a square, bicubic resize) and the files' sha256."""
    from PIL import Image

    out, digests = np.empty((len(paths), resolution, resolution, 3), np.uint8), []
    for j, p in enumerate(paths):
        img, data = _open(fs, p)
        img = img.convert("RGB")
        w, h = img.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
        if s != resolution:
            img = img.resize((resolution, resolution), Image.Resampling.BICUBIC)
        out[j] = np.asarray(img)
        digests.append(fmt.sha256_bytes(data))
    return out, digests


# ------------------------------------------------------------------------------ optimisation


def reconstruction_loss(x: torch.Tensor, y: torch.Tensor, *, scales: int = 3, grad_weight: float = 1.0) -> torch.Tensor:
    """Per-image loss [B]: multi-scale pixel MSE plus grad_weight x MSE of the image gradients."""
    loss = torch.zeros(x.shape[0], device=x.device)
    xs, ys = x, y
    for s in range(scales):
        if s:
            xs, ys = torch.nn.functional.avg_pool2d(xs, 2), torch.nn.functional.avg_pool2d(ys, 2)
        loss = loss + (xs - ys).pow(2).mean((1, 2, 3))
        if min(xs.shape[-2:]) < 4:
            break
    if grad_weight:
        dx = (x[..., :, 1:] - x[..., :, :-1]) - (y[..., :, 1:] - y[..., :, :-1])
        dy = (x[..., 1:, :] - x[..., :-1, :]) - (y[..., 1:, :] - y[..., :-1, :])
        loss = loss + grad_weight * (dx.pow(2).mean((1, 2, 3)) + dy.pow(2).mean((1, 2, 3)))
    return loss


def prior_loss(z: torch.Tensor, kind: str = "shell") -> torch.Tensor:
    """Per-latent prior penalty [B]: ``shell`` (||z||^2 / dim_z - 1)^2, or ``gaussian`` ||z||^2 / (2 dim_z)
    (the N(0, I) negative log-likelihood per coordinate: a MAP estimate)."""
    if kind == "gaussian":
        return z.pow(2).mean(1) / 2
    return (z.pow(2).mean(1) - 1.0).pow(2)


def initial_latents(rows: range, restarts: int, dim_z: int, seed: int) -> np.ndarray:
    """[restarts * len(rows), dim_z] float32: restart k of row i from seed [seed, i, k] (restart-major)."""
    return np.stack([
        np.random.default_rng([seed, i, k]).standard_normal(dim_z).astype(np.float32)
        for k in range(restarts) for i in rows
    ])


def invert_batch(gen, target: torch.Tensor, rows: range, settings: InvertSettings) -> tuple[np.ndarray, np.ndarray]:
    """Invert a batch of target images [n, 3, R, R] in [-1, 1] on gen.device; return (z [n, dim_z] float32,
    pixel MSE on the [0, 1] scale [n] float64) of the best restart per image."""
    n, K, s = target.shape[0], settings.restarts, settings
    y = target.repeat(K, 1, 1, 1)
    z = torch.from_numpy(initial_latents(rows, K, gen.dim_z, s.seed)).to(gen.device).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=s.lr)
    best_loss = torch.full((n * K,), math.inf, device=gen.device)
    best_z = z.detach().clone()
    for step in range(s.steps + 1):
        for g in opt.param_groups:  # cosine decay to 5% of lr
            g["lr"] = s.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / max(1, s.steps))))
        with torch.enable_grad():
            x = gen(z)
            if not x.requires_grad:
                raise FactoryError(
                    f"generator {gen.identity().get('name', type(gen).__name__)!r} passes back no gradient in z "
                    "(it runs under torch.no_grad or detaches); inversion needs G differentiable in z"
                )
            rec = reconstruction_loss(x, y, scales=s.scales, grad_weight=s.grad_weight)
            better = rec.detach() < best_loss
            best_loss = torch.where(better, rec.detach(), best_loss)
            best_z = torch.where(better[:, None], z.detach(), best_z)
            if step == s.steps:
                break
            total = (rec + s.prior_weight * prior_loss(z, s.prior)).sum()
            (grad,) = torch.autograd.grad(total, z)
        z.grad = grad
        opt.step()
    pick = best_loss.view(K, n).argmin(0)
    zb = best_z.view(K, n, -1)[pick, torch.arange(n, device=gen.device)]
    with torch.no_grad():
        mse = (gen(zb) - target).pow(2).mean((1, 2, 3)) / 4.0  # [-1, 1] -> [0, 1] scale
    return zb.cpu().numpy().astype(np.float32), mse.double().cpu().numpy()


def psnr(mse: np.ndarray) -> np.ndarray:
    """PSNR in dB of images on the [0, 1] scale from their MSE."""
    return 10.0 * np.log10(1.0 / np.maximum(np.asarray(mse, np.float64), 1e-12))


# --------------------------------------------------------------------------------- the job


def _fingerprint(gen, images: str, paths: list[str], settings: InvertSettings) -> dict:
    return {
        "version": WORK_VERSION, "generator": gen.identity(), "settings": asdict(settings),
        "images": str(images), "files_sha256": fmt.sha256_bytes("\n".join(paths).encode()), "n": len(paths),
    }


def work_dir(name: str) -> Path:
    return emb.store_dir() / f".{name}.invert"


def _prepare_work(name: str, job: dict, *, overwrite: bool) -> Path:
    work = work_dir(name)
    job_file = work / "job.json"
    if job_file.exists():
        if json.loads(job_file.read_text()) == json.loads(json.dumps(job, default=str)):
            return work
        if not overwrite:
            raise FactoryError(
                f"an unfinished inversion {name!r} with other settings or images is in {work}; rerun it with the "
                "same flags to resume, or pass --overwrite to start over"
            )
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    atomic_json(job_file, json.loads(json.dumps(job, default=str)))
    return work


def _done_chunk(work: Path, k: int, n_rows: int) -> dict | None:
    meta = work / f"part-{k:06d}.json"
    if not meta.exists():
        return None
    info = json.loads(meta.read_text())
    return info if len(info["sha256"]) == n_rows else None


def _run_chunks(gen, fs, paths: list[str], work: Path, *, settings: InvertSettings, progress: bool) -> int:
    """Invert every chunk without a committed part; return how many were already done."""
    B, n = settings.batch, len(paths)
    chunks = list(range(math.ceil(n / B)))
    done = [k for k in chunks if _done_chunk(work, k, min(B, n - k * B)) is not None]
    bar = progress_bar(total=n, unit="img", desc="invert", disable=not progress, dynamic_ncols=True,
               smoothing=0.1, bar_format=BAR_FORMAT)
    try:
        bar.update(sum(min(B, n - k * B) for k in done))
        bar.unpause()  # the rate counts only the images inverted by this run
        for k in chunks:
            if k in done:
                continue
            rows = range(k * B, min(n, (k + 1) * B))
            bar.set_postfix_str(f"chunk {k + 1}/{len(chunks)}")
            pixels, digests = load_chunk(fs, paths[rows.start : rows.stop], gen.resolution)
            target = from_uint8(torch.from_numpy(pixels).to(gen.device))
            z, mse = invert_batch(gen, target, rows, settings)
            atomic_save_npy(work / f"part-{k:06d}.npy", z)
            atomic_json(work / f"part-{k:06d}.json", {"start": rows.start, "stop": rows.stop, "sha256": digests,
                                                       "mse": [float(v) for v in mse]})
            bar.update(len(rows))
    finally:
        bar.close()
    return len(done)


def _assemble(work: Path, paths: list[str], batch: int) -> tuple[np.ndarray, dict]:
    zs, table = [], {"file": [Path(p).name for p in paths], "sha256": [], "mse": []}
    for k in range(math.ceil(len(paths) / batch)):
        info = json.loads((work / f"part-{k:06d}.json").read_text())
        zs.append(read_npy(work / f"part-{k:06d}.npy"))
        table["sha256"] += info["sha256"]
        table["mse"] += info["mse"]
    table["psnr"] = [float(v) for v in psnr(np.array(table["mse"]))]
    return np.concatenate(zs), table


@dataclass(frozen=True)
class InvertResult:
    ref: emb.EmbeddingRef
    chunks_resumed: int
    mean_psnr: float


def invert(generator: str, images: str, name: str, *, generator_options: dict | None = None,
           settings: InvertSettings = InvertSettings(), device: str | None = None, overwrite: bool = False,
           upscale: bool = False, progress: bool = True) -> InvertResult:
    """Invert every image of `images` (folder or URL) into a named embedding store `name`."""
    from factory.device import torch_device
    from factory.generators import load_generator

    emb.check_name(name)
    settings.check()
    if emb.stored(name) and not overwrite:
        raise FactoryError(f"embeddings {name!r} already exist; choose another --name or pass --overwrite")
    fs, paths = list_images(images)
    gen = load_generator(generator, device=torch_device(device), **(generator_options or {}))
    check_sizes(fs, paths, gen.resolution, upscale=upscale)
    job = _fingerprint(gen, images, paths, settings)
    work = _prepare_work(name, job, overwrite=overwrite)
    resumed = _run_chunks(gen, fs, paths, work, settings=settings, progress=progress)
    z, table = _assemble(work, paths, settings.batch)
    attrs = {"source": str(images), "method": "inversion", "inversion": json.loads(json.dumps(job, default=str))}
    ref = emb.store_rows(name, z, attrs=attrs, rows=table, overwrite=overwrite)
    shutil.rmtree(work)
    return InvertResult(ref, resumed, float(np.mean(table["psnr"])))
