"""BigGAN checkpoint files as `pytorch-pretrained-biggan` distributes them: a folder (or its files) with
``config.json`` and ``pytorch_model.bin`` (a plain state dict, read with weights_only=True) or a
``.safetensors`` file of the same keys. Reading strictly (unknown config keys, missing or unexpected
weights, wrong shapes are one-line errors naming them), deterministic random weights, and writing a
checkpoint folder in the same layout."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import torch

from factory.format import FactoryError
from factory.fsio import atomic_write
from factory.generators.biggan.model import BigGAN, BigGANConfig
from factory.generators.torchcore import load_strict, one_line, read_torch_weights

WEIGHTS_NAME = "pytorch_model.bin"
SAFETENSORS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
HINT = ("a BigGAN checkpoint is the folder of `pytorch-pretrained-biggan` (config.json + pytorch_model.bin, "
        "e.g. biggan-deep-128; docs/generators.md says where to get it)")


def locate(weights: str | Path, config: Any = None) -> tuple[Path, Any]:
    """(weights file, config) for ``weights`` = a checkpoint folder or its weights file; the config is
    ``config`` when given (a file, a dict, or 128/256/512 for the port's presets), else config.json beside."""
    path = Path(weights).expanduser()
    if path.is_dir():
        found = [path / n for n in (WEIGHTS_NAME, SAFETENSORS_NAME) if (path / n).is_file()]
        if not found:
            raise FactoryError(f"biggan: {path} holds neither {WEIGHTS_NAME} nor {SAFETENSORS_NAME}; {HINT}")
        path = found[0]
    elif not path.is_file():
        raise FactoryError(f"biggan: weights not found: {path}; {HINT}")
    if config is None:
        beside = path.parent / CONFIG_NAME
        if not beside.is_file():
            raise FactoryError(f"biggan: no {CONFIG_NAME} beside {path}; put the port's {CONFIG_NAME} there "
                               "or pass it with --generator-config")
        config = beside
    return path, config


def read_config(config: Any) -> BigGANConfig:
    """A BigGANConfig from a config.json path, a dict, a BigGANConfig, or 128/256/512 (the port's presets)."""
    if isinstance(config, BigGANConfig):
        return config
    if isinstance(config, int) or (isinstance(config, str) and config.strip() in ("128", "256", "512")):
        return BigGANConfig.preset(int(config))
    source = "config"
    if isinstance(config, (str, Path)):
        source = str(config)
        try:
            config = json.loads(Path(config).expanduser().read_text())
        except OSError as e:
            raise FactoryError(f"biggan: cannot read config {source}: {e.strerror or e}") from None
        except ValueError as e:
            raise FactoryError(f"biggan: config {source} is not valid JSON ({e})") from None
    try:
        return BigGANConfig.from_dict(config, source)
    except TypeError as e:
        raise FactoryError(f"{source}: not a BigGAN config ({one_line(e)})") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain state dict from a torch file (weights_only=True) or a .safetensors file."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise FactoryError(f"{path}: empty file, not a checkpoint (an interrupted download?); {HINT}")
    if path.suffix == ".safetensors" or head[8:9] == b"{":
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise FactoryError(f"{path}: corrupt or truncated safetensors file ({one_line(e)})") from None
    else:
        obj = read_torch_weights(path, hint=HINT)
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) for k in obj):
        raise FactoryError(f"{path}: not a state dict (got {type(obj).__name__}); {HINT}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise FactoryError(f"{path}: not a plain state dict: entries {bad[:3]} are not tensors")
    return dict(obj)


def load_weights(model: BigGAN, sd: Mapping[str, torch.Tensor], source: str) -> BigGAN:
    """Load exactly the model's keys and shapes (floating, finite) into it, eval mode and frozen, spectral
    norm folded; else one line naming the missing / unexpected keys and shape mismatches."""
    load_strict(model, sd, source=source, what=f"BigGAN ({model.cfg.short()})",
                hint="; is config.json the one shipped with these weights?")
    model.fold_spectral_norm()
    return model


@torch.no_grad()
def random_state_dict(cfg: BigGANConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic random weights of the right shapes, for tests and benchmarks: Gaussian weights
    scaled by fan-in, spectral-norm vectors from three power iterations (so ``u . W v`` is the top
    singular value), positive variances, every truncation row distinct."""
    g = torch.Generator().manual_seed(int(seed))
    out: dict[str, torch.Tensor] = {}
    keys = BigGAN(cfg).state_dict()
    for k, v in keys.items():
        if k.endswith(("weight_u", "weight_v")):
            continue
        if k.endswith("running_vars"):
            t = 0.5 + torch.rand(v.shape, generator=g)
        elif k.endswith("running_means"):
            t = 0.1 * torch.randn(v.shape, generator=g)
        elif k.endswith("gamma"):
            t = torch.full(v.shape, 0.5)
        elif k == "generator.bn.weight":
            t = 1 + 0.1 * torch.randn(v.shape, generator=g)
        elif v.dim() == 1:  # biases
            t = 0.05 * torch.randn(v.shape, generator=g)
        else:
            t = torch.randn(v.shape, generator=g) / math.sqrt(max(1, v[0].numel()))
        out[k] = t.float()
    for k in keys:
        if k.endswith("weight_u"):
            w = out[k[: -len("u")] + "orig"]
            w = w.reshape(w.shape[0], -1)
            u = torch.nn.functional.normalize(torch.randn(w.shape[0], generator=g), dim=0)
            for _ in range(3):
                vec = torch.nn.functional.normalize(torch.mv(w.t(), u), dim=0)
                u = torch.nn.functional.normalize(torch.mv(w, vec), dim=0)
            out[k], out[k[:-1] + "v"] = u, vec
    return out


def save_checkpoint(folder: str | Path, cfg: BigGANConfig, sd: Mapping[str, torch.Tensor], *,
                    safetensors: bool = False) -> Path:
    """Write config.json and the weights (pytorch_model.bin, or model.safetensors) into ``folder``, the
    port's layout; returns the weights file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / CONFIG_NAME, (json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n").encode())
    tensors = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    if safetensors:
        from safetensors.torch import save

        path = folder / SAFETENSORS_NAME
        atomic_write(path, save(tensors))
    else:
        import io

        buf = io.BytesIO()
        torch.save(tensors, buf)
        path = folder / WEIGHTS_NAME
        atomic_write(path, buf.getvalue())
    return path
