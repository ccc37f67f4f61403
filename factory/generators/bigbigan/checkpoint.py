"""BigBiGAN weights files: recognising a checkpoint's format, reading it safely (weights_only torch or
safetensors), checking it against the model, inferring its config, inspecting a file (`factory weights
inspect`), and deterministic random weights."""
from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn as nn

from factory.format import FactoryError
from factory.generators.bigbigan.model import BigBiGAN, BigBiGANConfig
from factory.generators.torchcore import check_state_dict as torchcore_check
from factory.generators.torchcore import one_line, read_torch_weights, weights_digest

WEIGHTS_HINT = (
    "get the authors' BigBiGAN_x1.pth with `factory weights fetch bigbigan` "
    "(saved under $FACTORY_HOME/weights, default ~/.cache/factory/weights) and pass its path as weights="
)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def sniff_checkpoint(path: Path) -> str:
    """'safetensors' | 'torch-zip' | 'torch-legacy'; FactoryError for anything else."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise FactoryError(f"cannot read weights file {path}: {e.strerror or e}") from None
    if size == 0:
        raise FactoryError(f"{path}: empty file, not a checkpoint (an interrupted download?); {WEIGHTS_HINT}")
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if len(head) >= 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n < size:
            return "safetensors"
    if head[:1] == b"\x80" and len(head) > 1 and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch-legacy"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        what = "an HTML page (a download that returned an error or login page?)"
    elif text.startswith((b"{", b"[")):
        what = "a JSON/text file"
    else:
        what = f"an unknown format (first bytes {head[:8]!r})"
    raise FactoryError(f"{path}: not a checkpoint: it is {what}; {WEIGHTS_HINT}")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a plain state dict from a torch file (weights_only=True) or a .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise FactoryError(f"weights file not found: {path}; {WEIGHTS_HINT}")
    kind = sniff_checkpoint(path)
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise FactoryError(
                f"{path}: corrupt or truncated safetensors file ({one_line(e)}); download it again"
            ) from None
    else:
        obj = read_torch_weights(path, hint="download it again")
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise FactoryError(f"{path}: not a plain state dict (got {type(obj).__name__}); {WEIGHTS_HINT}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise FactoryError(f"{path}: not a plain state dict: entries {bad[:3]} are not tensors")
    return obj


def match_terms(cfg: BigBiGANConfig, source: str) -> dict[str, str]:
    """How a state-dict mismatch names the model and the fix (torchcore's `what` and `hint`)."""
    return {"what": f"BigBiGAN ({cfg.short()})",
            "hint": f"; `factory weights inspect {source}` tells which config a file matches"}


def check_state_dict(sd: Mapping[str, torch.Tensor], model: nn.Module, cfg: BigBiGANConfig, source: str) -> None:
    """Every key and shape of the model, nothing else, floating and finite; one FactoryError line."""
    torchcore_check(sd, model, source=source, **match_terms(cfg, source))


def infer_config(sd: Mapping[str, torch.Tensor]) -> BigBiGANConfig:
    """The BigBiGANConfig whose shapes a state dict has (FactoryError if it is not BigGAN-shaped)."""
    try:
        n_classes, shared_dim = sd["shared.weight"].shape
        g_ch = sd["output_layer.0.gain"].shape[0]
        z_chunk = sd["linear.weight"].shape[1]
        n_blocks = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
        c0 = sd["blocks.0.0.conv1.weight"].shape[1]
        bw = int(round(math.sqrt(sd["linear.weight"].shape[0] / c0)))
        attn = [i for i in range(n_blocks) if f"blocks.{i}.1.gamma" in sd]
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise FactoryError(f"not a BigGAN generator state dict (missing or odd {e})") from None
    resolution = bw * 2 ** n_blocks
    return BigBiGANConfig(
        G_ch=int(g_ch), dim_z=int(z_chunk * (n_blocks + 1)), shared_dim=int(shared_dim),
        resolution=resolution, n_classes=int(n_classes), bottom_width=bw,
        G_attn="_".join(str(bw * 2 ** (i + 1)) for i in attn) or "0",
    )


@torch.no_grad()
def random_state_dict(model: BigBiGAN, seed: int) -> dict[str, torch.Tensor]:
    """Deterministic random weights of the right shapes (u0 unit vectors, positive stored_var)."""
    g = torch.Generator().manual_seed(int(seed))
    out = {}
    for k, v in model.state_dict().items():
        shape = v.shape
        if k.endswith(".u0"):
            t = torch.randn(shape, generator=g)
            t = t / t.norm()
        elif k.endswith(".sv0"):
            t = torch.ones(shape)
        elif k.endswith("stored_var"):
            t = 0.5 + torch.rand(shape, generator=g)
        elif k.endswith("stored_mean"):
            t = 0.1 * torch.randn(shape, generator=g)
        elif k.endswith("gamma"):
            t = torch.full(shape, 0.5)
        elif k == "output_layer.0.gain":
            t = 1 + 0.1 * torch.randn(shape, generator=g)
        elif k.endswith(".bias") and len(shape) == 1:
            t = 0.05 * torch.randn(shape, generator=g)
        else:
            fan_in = max(1, int(np.prod(shape[1:]))) if len(shape) > 1 else 1
            t = torch.randn(shape, generator=g) / math.sqrt(fan_in)
        out[k] = t.float()
    return out


def inspect_weights(path: str | Path) -> dict:
    """What a weights file is: format, keys, parameter count, sha256, the BigBiGAN config it matches."""
    path = Path(path).expanduser()
    sd = read_state_dict(path)
    fmt = sniff_checkpoint(path)
    buffer_suffixes = (".u0", ".sv0", ".stored_mean", ".stored_var")
    n_params = sum(v.numel() for k, v in sd.items() if not k.endswith(buffer_suffixes))
    n_buffers = sum(v.numel() for k, v in sd.items() if k.endswith(buffer_suffixes))
    info = {
        "path": str(path),
        "format": fmt,
        "bytes": path.stat().st_size,
        "sha256": weights_digest(path),
        "keys": len(sd),
        "parameters": n_params,
        "buffer_elements": n_buffers,
        "dtypes": sorted({str(v.dtype).replace("torch.", "") for v in sd.values()}),
    }
    try:
        cfg = infer_config(sd)
        with torch.device("meta"):
            model = BigBiGAN(cfg)
        check_state_dict(sd, model, cfg, str(path))
    except FactoryError as e:
        info["matches"] = None
        info["problem"] = str(e)
        return info
    full = BigBiGANConfig()
    info["config"] = {"G_ch": cfg.G_ch, "dim_z": cfg.dim_z, "shared_dim": cfg.shared_dim,
                      "resolution": cfg.resolution, "G_attn": cfg.G_attn, "n_classes": cfg.n_classes}
    if cfg == full:
        info["matches"] = "BigBiGAN-128 (full model, the layout of the authors' BigBiGAN_x1.pth)"
    else:
        info["matches"] = f"reduced BigBiGAN ({cfg.short()}, G_attn={cfg.G_attn})"
    return info
