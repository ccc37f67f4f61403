"""The platform that made a shard, and what follows from it.

A shard's sidecar and the manifest name the platform (device name, torch version, CPU capability,
precision, compile, library versions). Where two shards' platforms differ their bytes may differ
too (CUDA kernels, bf16, compiled graphs; docs/format.md, "Reproducibility"): `factory info` and
the card say "made on N platforms", and `factory generate --same-platform` refuses to mix them.
On CUDA the generate path pins deterministic kernels (`deterministic_kernels`), so one GPU gives
the same bytes run to run.
"""
from __future__ import annotations

import functools

from factory import format as fmt
from factory.format import FactoryError


@functools.lru_cache(maxsize=None)
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else the machine type."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown"


def device_name(device: str) -> str:
    """``cpu (MODEL)`` or the CUDA device's name (``NVIDIA H100 80GB HBM3``)."""
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({cpu_name()})"


def precision_of(identity: dict) -> tuple[str, bool]:
    """(precision, compile) of a generator identity: ``float32``, ``bfloat16``, ``float32+tf32``..."""
    p = identity.get("precision") or {}
    if not isinstance(p, dict):
        return str(p), False
    name = str(p.get("dtype") or "float32")
    if p.get("autocast"):
        name += f"+{p['autocast']}"
    return name, bool(p.get("compile"))


def platform_record(identity: dict, device: str) -> dict:
    """The platform of this process for a generator identity: what can change a kernel's last bits."""
    import numpy as np
    import PIL
    import torch

    precision, compiled = precision_of(identity)
    rec = {
        "device": device_name(device),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "precision": precision,
        "compile": compiled,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
    }
    if str(device).startswith("cuda"):
        rec["cuda"] = torch.version.cuda
        rec["cudnn"] = torch.backends.cudnn.version()
    return rec


def platform_id(record: dict) -> str:
    """A short content id of a platform record (``pf-`` + 12 hex; `factory verify` recomputes it)."""
    return fmt.platform_record_id(record)


def describe(record: dict) -> str:
    """One line: ``cpu (AMD EPYC), AVX512, torch 2.13.0+cpu, float32``."""
    parts = [record.get("device", "?"), record.get("cpu_capability", "?"), f"torch {record.get('torch', '?')}",
             record.get("precision", "?")]
    if record.get("compile"):
        parts.append("compiled")
    return ", ".join(str(p) for p in parts)


def deterministic_kernels(device: str) -> None:
    """On CUDA: deterministic cuDNN algorithms, no autotuning, a fixed cuBLAS workspace, so one GPU
    gives the same bytes run to run. A no-op on the CPU, whose kernels are deterministic already."""
    if not str(device).startswith("cuda"):
        return
    import os

    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts in this process
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def manifest_platforms(shards: list[dict]) -> tuple[list[dict], dict]:
    """(shard entries with ``platform`` as an id, ``{id: record}``) from sidecar copies that carry records."""
    table: dict = {}
    out = []
    for s in shards:
        rec = s.get("platform")
        if isinstance(rec, dict):
            pid = platform_id(rec)
            table[pid] = rec
            s = {**s, "platform": pid}
        out.append(s)
    return out, dict(sorted(table.items()))


def platform_counts(manifest: dict) -> dict[str, int]:
    """Shards per platform id of a manifest (empty for datasets made before the platform record)."""
    counts = fmt.value_counts(manifest.get("shards", []), "platform")
    return {pid: n for pid, n in counts.items() if isinstance(pid, str)}


def platforms_line(manifest: dict) -> str | None:
    """``made on 1 platform: cpu (...), AVX512, torch ..., float32`` or ``made on 2 platforms: ...``."""
    counts = platform_counts(manifest)
    if not counts:
        return None
    table = manifest.get("platforms") or {}
    if len(counts) == 1:
        (pid,) = counts
        return f"made on 1 platform: {describe(table.get(pid, {}))}"
    parts = [f"{describe(table.get(pid, {}))} ({n} shard{'s' * (n != 1)})" for pid, n in sorted(counts.items(), key=lambda x: -x[1])]
    return f"made on {len(counts)} platforms: " + "; ".join(parts)


def check_same_platform(existing: list[dict], here: dict, root: str) -> None:
    """``--same-platform``: refuse, in one line, to add shards made here to shards made on another platform."""
    others = {platform_id(r) for r in existing if isinstance(r, dict)} - {platform_id(here)}
    if others:
        other = next(r for r in existing if isinstance(r, dict) and platform_id(r) != platform_id(here))
        raise FactoryError(
            f"{root} has shards made on another platform ({describe(other)}; this one is {describe(here)}); "
            "--same-platform refuses to mix them: resume it there, or drop --same-platform")
