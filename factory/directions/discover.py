"""Discovering candidate directions (Voynov & Babenko 2020): a deformator of K unit latent directions and a
CNN reconstructor trained together, resumable from atomic checkpoints; see the package docstring."""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from factory import format as fmt
from factory.device import pinned_threads, run_record, torch_device
from factory.directions.common import open_generator, seed_of
from factory.format import FactoryError
from factory.fsio import atomic_json, atomic_save_npy, atomic_write
from factory.progress import progress_bar

# ----------------------------------------------------------------- discover

class Reconstructor(nn.Module):
    """Small CNN on ``cat[G(z), G(z + eps d_k)]`` (6 channels; with ``diff`` also ``G(z + eps d_k) - G(z)``,
    9 channels): logits over K directions and eps."""

    def __init__(self, k: int, width: int = 32, diff: bool = False):
        super().__init__()
        self.diff = diff
        chans = [9 if diff else 6, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.logits = nn.Linear(chans[-1], k)
        self.shift = nn.Linear(chans[-1], 1)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [x0, x1, x1 - x0] if self.diff else [x0, x1]
        f = self.features(torch.cat(parts, dim=1)).mean(dim=(2, 3))
        return self.logits(f), self.shift(f).squeeze(1)


@dataclass
class DiscoverConfig:
    generator: str
    out: str
    n_directions: int
    generator_options: dict = field(default_factory=dict)  # load_generator's options (cli: GeneratorFlags.options())
    class_id: int | None = None  # class-conditional generators: the class of every latent
    steps: int = 2000
    batch: int = 32
    lr: float = 1e-3
    lr_directions: float | None = None  # default: lr
    shift_scale: float = 6.0
    min_shift: float = 0.5
    label_weight: float = 1.0
    shift_weight: float = 0.25
    width: int = 32
    deformator: str = "proj"  # "proj": unit columns of a free [D, K] matrix; "ortho": first K columns of expm(S - S^T)
    random_init: bool = True  # ortho: S ~ N(0, 1) (random rotation); False: S ~ 0.001 N(0, 1) (start at the axes)
    rec_diff: bool = False  # reconstructor also sees G(z + eps d) - G(z)
    lr_warmup_boost: float = 1.0  # lr multiplier at step 0, decaying linearly to 1 at boost_steps (0: off)
    boost_steps: int = 0
    seed: int = 2
    checkpoint_every: int = 200
    device: str | None = None
    threads: int = 1  # torch CPU threads, pinned: the floats of a CPU run can depend on the count
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if not (isinstance(self.n_directions, int) and self.n_directions > 0):
            raise FactoryError(f"--n-directions must be a positive number of directions, got {self.n_directions!r}")
        if not (isinstance(self.steps, int) and self.steps > 0):
            raise FactoryError(f"--steps must be positive, got {self.steps!r}")
        if not (isinstance(self.batch, int) and self.batch > 0):
            raise FactoryError(f"--batch must be positive, got {self.batch!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise FactoryError(f"--lr must be a positive learning rate, got {self.lr!r}")
        if not (isinstance(self.checkpoint_every, int) and self.checkpoint_every > 0):
            raise FactoryError(f"--checkpoint-every must be positive, got {self.checkpoint_every!r}")
        if self.deformator not in ("proj", "ortho"):
            raise FactoryError(f"--deformator must be 'proj' or 'ortho', got {self.deformator!r}")
        if not str(self.out).endswith(".npy"):
            raise FactoryError(f"--out must be a .npy file name (the JSON goes beside it), got {self.out!r}")

    def training_key(self) -> dict:
        """The part of the config that determines the trajectory (a checkpoint is resumed only if it matches)."""
        d = asdict(self)
        options = d.pop("generator_options")
        for k in ("out", "steps", "checkpoint_every", "device", "progress", "extra"):
            d.pop(k)
        if d["class_id"] is None:  # unconditional runs keep the key they always had
            d.pop("class_id")
        d["resolution"] = options.get("resolution")  # the weights file's name does not matter, its shapes do
        d.update({k: v for k, v in options.items() if k not in ("weights", "resolution")})
        return d


def _sample_shifts(k: int, batch: int, cfg: DiscoverConfig, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randint(0, k, (batch,), generator=g)
    eps = cfg.shift_scale * (2 * torch.rand(batch, generator=g) - 1)
    eps = torch.sign(eps) * eps.abs().clamp(min=cfg.min_shift)
    eps = torch.where(eps == 0, torch.full_like(eps, cfg.min_shift), eps)
    return idx, eps


def _unit_columns(W: torch.Tensor) -> torch.Tensor:
    return W / W.norm(dim=0, keepdim=True).clamp(min=1e-12)


def _directions_of(W: torch.Tensor, cfg: DiscoverConfig) -> torch.Tensor:
    """The ``[D, K]`` unit directions of the deformator parameter ``W``."""
    if cfg.deformator == "ortho":  # W is [D, D]; A = expm(W - W^T) is orthogonal
        return torch.linalg.matrix_exp(W - W.T)[:, : cfg.n_directions]
    return _unit_columns(W)


def _init_deformator(cfg: DiscoverConfig, D: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed_of(cfg.seed, 11))
    if cfg.deformator == "ortho":
        S = torch.randn(D, D, generator=g)
        return S if cfg.random_init else 0.001 * S
    return _unit_columns(torch.randn(D, cfg.n_directions, generator=g))


def _ckpt_paths(out: Path) -> tuple[Path, Path]:
    d = out.with_name(out.stem + ".ckpt")
    return d / "checkpoint.safetensors", d / "checkpoint.json"


@dataclass
class Training:
    """What a discover run trains and checkpoints: the deformator parameter ``W``, the reconstructor and
    their Adam optimizers (``{"directions": ..., "reconstructor": ...}``)."""

    W: torch.Tensor
    rec: Reconstructor
    opts: dict

    def flat_state(self) -> dict[str, torch.Tensor]:
        t = {"directions": self.W.detach().cpu().contiguous()}
        for k, v in self.rec.state_dict().items():
            t[f"reconstructor.{k}"] = v.detach().cpu().contiguous()
        for name, opt in self.opts.items():
            for pid, st in opt.state_dict()["state"].items():
                for key, val in st.items():
                    t[f"opt.{name}.{pid}.{key}"] = torch.as_tensor(val).detach().cpu().contiguous()
        return t

    def load_flat_state(self, t: dict[str, torch.Tensor]) -> None:
        W = self.W
        with torch.no_grad():
            W.copy_(t["directions"].to(W.device))
        self.rec.load_state_dict({k[len("reconstructor."):]: v for k, v in t.items() if k.startswith("reconstructor.")})
        for name, opt in self.opts.items():
            sd = opt.state_dict()
            state: dict = {}
            for k, v in t.items():
                if k.startswith(f"opt.{name}."):
                    _, _, pid, key = k.split(".", 3)
                    state.setdefault(int(pid), {})[key] = v if key == "step" else v.to(W.device)
            sd["state"] = state
            opt.load_state_dict(sd)


def _save_checkpoint(out: Path, tr: Training, cfg: DiscoverConfig, *, step: int, metrics: dict) -> None:
    from safetensors.torch import save

    st_path, js_path = _ckpt_paths(out)
    data = save(tr.flat_state())
    atomic_write(st_path, data)
    atomic_json(js_path, {"step": step, "training": cfg.training_key(), "metrics": metrics,
                           "safetensors_sha256": fmt.sha256_bytes(data)})


def _load_checkpoint(out: Path, tr: Training, cfg: DiscoverConfig, log) -> int:
    """Restore the last checkpoint when it belongs to this training config; returns the step to start from."""
    from safetensors.torch import load

    st_path, js_path = _ckpt_paths(out)
    if not js_path.is_file():
        return 0
    try:
        meta = json.loads(js_path.read_text())
        data = st_path.read_bytes()
    except (OSError, json.JSONDecodeError) as e:
        raise FactoryError(f"{js_path}: unreadable checkpoint ({e}); delete {js_path.parent} to start over") from None
    if meta.get("training") != cfg.training_key():
        raise FactoryError(f"{js_path.parent} holds a checkpoint of another training config; "
                           f"delete it or choose another --out")
    if fmt.sha256_bytes(data) != meta.get("safetensors_sha256"):
        raise FactoryError(f"{st_path} does not match its checkpoint.json; delete {js_path.parent} to start over")
    tr.load_flat_state(load(data))
    log(f"resuming from {st_path} at step {meta['step']}")
    return int(meta["step"])


def _open(cfg: DiscoverConfig, out: Path, log) -> tuple:
    """The frozen generator, the fresh (or resumed) training state and the step to start from."""
    device = torch_device(cfg.device)
    gen = open_generator(cfg.generator, device, cfg.generator_options, class_id=cfg.class_id)
    if hasattr(gen, "eval"):
        gen.eval()
    for p in getattr(gen, "parameters", lambda: [])():
        p.requires_grad_(False)
    K, D = cfg.n_directions, gen.dim_z
    torch.manual_seed(seed_of(cfg.seed, 10))  # reconstructor init only
    if cfg.deformator == "ortho" and K > D:
        raise FactoryError(f"--deformator ortho gives at most dim_z = {D} directions, got --n-directions {K}")
    rec = Reconstructor(K, cfg.width, diff=cfg.rec_diff).to(device)
    W = _init_deformator(cfg, D).to(device).requires_grad_(True)
    opts = {
        "directions": torch.optim.Adam([W], lr=cfg.lr_directions or cfg.lr),
        "reconstructor": torch.optim.Adam(rec.parameters(), lr=cfg.lr),
    }
    tr = Training(W, rec, opts)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FactoryError(f"--out {out}: folder not writable ({e.strerror or e})") from None
    start = _load_checkpoint(out, tr, cfg, log)
    return gen, device, tr, start


def _train_step(gen, tr: Training, cfg: DiscoverConfig, step: int) -> dict[str, float]:
    """One Adam step of both modules on the latents and shifts of ``(seed, step)``; the step's metrics."""
    K, D, device = cfg.n_directions, gen.dim_z, tr.W.device
    g = torch.Generator().manual_seed(seed_of(cfg.seed, 12, step))
    z = torch.randn(cfg.batch, D, generator=g).to(device)
    idx, eps = _sample_shifts(K, cfg.batch, cfg, g)
    idx, eps = idx.to(device), eps.to(device)
    with torch.no_grad():
        x0 = gen(z).float()
    dirs = _directions_of(tr.W, cfg)  # [D, K]
    x1 = gen(z + eps[:, None] * dirs[:, idx].T).float()
    logits, eps_hat = tr.rec(x0, x1)
    ce = F.cross_entropy(logits, idx)
    l1 = (eps_hat - eps).abs().mean()
    loss = cfg.label_weight * ce + cfg.shift_weight * l1
    for o in tr.opts.values():
        o.zero_grad(set_to_none=True)
    loss.backward()
    for o in tr.opts.values():
        o.step()
    acc = float((logits.argmax(1) == idx).float().mean())
    return {"loss": float(loss.detach()), "ce": float(ce.detach()), "l1": float(l1.detach()), "acc": acc}


def _train(gen, tr: Training, cfg: DiscoverConfig, *, out: Path, start: int) -> dict[str, float]:
    """Steps ``start..cfg.steps`` with the lr warm-up boost and periodic checkpoints; the metrics' EMA."""

    tr.rec.train()
    ema: dict[str, float] = {}
    bar = progress_bar(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"discover {cfg.n_directions} directions",
               unit="step", disable=not cfg.progress, dynamic_ncols=True)
    base_lrs = {n: [pg["lr"] for pg in o.param_groups] for n, o in tr.opts.items()}
    for step in bar:
        if cfg.boost_steps > 0:
            f = 1.0 + (cfg.lr_warmup_boost - 1.0) * max(0.0, 1.0 - step / cfg.boost_steps)
            for n, o in tr.opts.items():
                for pg, b in zip(o.param_groups, base_lrs[n]):
                    pg["lr"] = b * f
        for k, v in _train_step(gen, tr, cfg, step).items():
            ema[k] = v if k not in ema else 0.95 * ema[k] + 0.05 * v
        if cfg.progress:
            bar.set_postfix_str(f"acc {ema['acc']:.2f} loss {ema['loss']:.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            _save_checkpoint(out, tr, cfg, step=step + 1, metrics=dict(ema))
    bar.close()
    return ema


def discover(cfg: DiscoverConfig, log=None) -> dict:
    """Train K unit directions and a reconstructor (Voynov & Babenko 2020); write ``out`` [K, dim_z] + JSON beside.

    Resumes from ``<out stem>.ckpt/`` when a checkpoint of the same training config is there.
    """
    log = log or (lambda m: None)
    cfg.validate()
    with pinned_threads(cfg.threads):
        return _discover(cfg, log)


def _discover(cfg: DiscoverConfig, log) -> dict:
    out = Path(cfg.out)
    gen, device, tr, start = _open(cfg, out, log)
    t0 = time.perf_counter()
    ema = _train(gen, tr, cfg, out=out, start=start)
    val = _validate(gen, tr, cfg)
    dirs_np = _unit_columns(_directions_of(tr.W.detach(), cfg)).T.cpu().numpy().astype(np.float32)  # [K, D] rows
    _save_checkpoint(out, tr, cfg, step=cfg.steps, metrics=dict(ema))
    summary = {
        "kind": "factory.directions.discover",
        "method": f"Voynov & Babenko 2020 ({cfg.deformator} deformator, CNN reconstructor)",
        "shape": list(dirs_np.shape),
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("progress", "extra")},
        "generator": gen.identity(),
        "device": str(device),
        "run": run_record(device),
        "steps": cfg.steps,
        "train_metrics_ema": ema,
        "validation": val,
        "seconds_this_run": time.perf_counter() - t0,
        "checkpoint": str(_ckpt_paths(out)[0].parent),
    }
    atomic_save_npy(out, dirs_np)
    atomic_json(out.with_suffix(".json"), summary)
    return summary


@torch.no_grad()
def _validate(gen, tr: Training, cfg: DiscoverConfig, batches: int = 4) -> dict:
    K, D, device = cfg.n_directions, gen.dim_z, tr.W.device
    tr.rec.eval()
    dirs = _directions_of(tr.W, cfg)
    correct, l1, n = 0, 0.0, 0
    for b in range(batches):
        g = torch.Generator().manual_seed(seed_of(cfg.seed, 13, b))
        z = torch.randn(cfg.batch, D, generator=g).to(device)
        idx, eps = _sample_shifts(K, cfg.batch, cfg, g)
        idx, eps = idx.to(device), eps.to(device)
        logits, eps_hat = tr.rec(gen(z).float(), gen(z + eps[:, None] * dirs[:, idx].T).float())
        correct += int((logits.argmax(1) == idx).sum())
        l1 += float((eps_hat - eps).abs().sum())
        n += cfg.batch
    tr.rec.train()
    return {"accuracy": correct / n, "shift_l1": l1 / n, "samples": n}
