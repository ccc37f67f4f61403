"""The compute of one batch on the generator's device: the per-process generator cache, G(z) and
G(z + r h) in one forward, masks with connected-components cleanup and statistics (with the
sync-free labelling knob and its exact redo), stage timers and device->host copies."""
from __future__ import annotations

import json
import time
from collections import Counter

from factory.generate.config import CC_RATIO
from factory.settings import settings

# One generator per worker process, kept between shards.
_WORKER_CACHE: dict = {}


def cached_generator(name: str, options: dict, device: str):
    key = (name, json.dumps(options, sort_keys=True, default=str), device)
    if key not in _WORKER_CACHE:
        from factory.generators import load_generator

        _WORKER_CACHE.clear()  # one generator per worker process
        _WORKER_CACHE[key] = load_generator(name, device=device, **options)
    return _WORKER_CACHE[key]


class Timers(dict):
    def add(self, name: str, seconds: float) -> None:
        self[name] = self.get(name, 0.0) + seconds


# Process-wide event counts (read by `factory bench`): "cc_redo_batches".
counters: Counter[str] = Counter()


def sync_device(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def generate_pair(gen, z, direction, shift_r: float, *, labels=None):
    """G(z) and G(z + r h) in one forward of 2B (asynchronous on CUDA); ``labels`` [B] (class-conditional
    generators) condition both images of a pair alike."""
    import torch

    zz = torch.cat([z, z + shift_r * direction[None, :]], 0)
    with torch.no_grad():
        both = gen(zz) if labels is None else gen(zz, labels=torch.cat([labels, labels], 0))
    return both[: z.shape[0]], both[z.shape[0]:]


CC_SYNC_FREE_ITERATIONS = 8


def cc_iterations_for(device: str) -> int | None:
    """Labelling updates per batch without a host check (``FACTORY_CC_ITERATIONS``), or None.

    ``auto`` (default): 8 on CUDA, where each convergence check would stall the GPU
    queue while the CPU waits (natural masks converge in 3-6 updates; batches with an
    unconverged image are redone exactly), and host checks on the CPU, where there
    is no queue to stall and extra updates would cost time. ``0``: always check.
    """
    v = settings().cc_iterations
    if v == "auto":
        return CC_SYNC_FREE_ITERATIONS if str(device).startswith("cuda") else None
    return v or None


def masks_and_stats(gen, z, img, shifted, *, mask_rule: str, max_fg: float, operators=None,
                    cc_iterations: int | None = None, cc_ratio: float = CC_RATIO):
    """Masks, CC cleanup and statistics on the generator's device; image quantised to uint8 HWC.

    ``operators``: the spec's ``operators`` entry (or a [2,3,4] array) for ``mask_rule="operators"``.
    ``cc_ratio``: the spec's cleanup ratio (a component is kept when its area is above it times the largest).
    ``cc_iterations``: see ``cc_iterations_for``; then ``stats["cc_converged"]`` says which rows are exact.
    """
    import torch

    from factory.stats import process_batch

    ops = None
    if mask_rule == "operators":
        if isinstance(operators, dict):
            operators = operators["values"]
        ops = torch.as_tensor(operators, dtype=torch.float32, device=img.device)
    raw, clean, stats = process_batch(img, shifted, rule=mask_rule, max_fg=max_fg, ratio=cc_ratio,
                                      cc_iterations=cc_iterations, operators=ops)
    if hasattr(gen, "true_mask"):
        truth = gen.true_mask(z).to(clean.device)
        for name, m in (("true_iou", clean), ("true_iou_raw", raw)):
            inter = (truth & m).flatten(1).sum(1).float()
            union = (truth | m).flatten(1).sum(1).float()
            stats[name] = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    from factory.generators import to_uint8

    return to_uint8(img), clean, raw, stats


def needs_redo(converged) -> bool:
    """Whether a sync-free pass left an image unconverged (``cc_converged`` is None when host-checked)."""
    return converged is not None and not bool(converged.all())


def exact_masks_and_stats(gen, z, pair, *, mask_rule: str, max_fg: float, operators=None,
                          timers: Timers | None = None, cc_ratio: float = CC_RATIO):
    """Rare: an image needs more labelling updates than the sync-free pass ran. Redo the batch exactly
    (host-checked labelling); counted in ``counters["cc_redo_batches"]`` and timed as ``cc_redo``."""
    t0 = time.perf_counter()
    out = masks_and_stats(gen, z, *pair, mask_rule=mask_rule, max_fg=max_fg, operators=operators,
                          cc_iterations=None, cc_ratio=cc_ratio)
    counters["cc_redo_batches"] += 1
    if timers is not None:
        timers.add("cc_redo", time.perf_counter() - t0)
    return out


def compute_batch(gen, z, direction, *, shift_r: float, mask_rule: str, max_fg: float, operators=None,
                  timers: Timers | None = None, cc_ratio: float = CC_RATIO):
    """Both forwards, masks and statistics for one batch, all on the generator's device, as a worker
    computes them: sync-free labelling where ``cc_iterations_for`` says so, and the exact redo of a batch
    it leaves unconverged.

    Returns (image uint8 [B,H,W,3], clean mask bool, raw mask bool, stats dict of tensors).
    """
    dev = str(z.device)
    rule = dict(mask_rule=mask_rule, max_fg=max_fg, operators=operators, cc_ratio=cc_ratio)
    t0 = time.perf_counter()
    pair = generate_pair(gen, z, direction, shift_r)
    if timers is not None:
        sync_device(dev)
        timers.add("generator", time.perf_counter() - t0)
    t1 = time.perf_counter()
    out = masks_and_stats(gen, z, *pair, **rule, cc_iterations=cc_iterations_for(dev))
    if timers is not None:
        sync_device(dev)
        timers.add("masks_stats", time.perf_counter() - t1)
    if needs_redo(out[3].pop("cc_converged", None)):
        out = exact_masks_and_stats(gen, z, pair, **rule, timers=timers)
    return out


def to_host(tensors: dict, pinned: bool) -> dict:
    """Queue device->host copies (into pinned memory on CUDA) and return the host tensors."""
    import torch

    out = {}
    for k, t in tensors.items():
        if pinned:
            h = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            h.copy_(t, non_blocking=True)
            out[k] = h
        else:
            out[k] = t.cpu()
    return out
