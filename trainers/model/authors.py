"""The paper authors' released U-Net checkpoints (``u_net_imagenet.pth``, ``u_net_cub2002011.pth``,
``u_net_flowers.pth``): read, check, and map them onto our U-Net.

Their file is a plain ``torch.save(model.state_dict())`` of a milesial-style U-Net (n_channels=3,
2 logits, bilinear up-sampling, biased convolutions; shared/reference/unet-authors/README.md):
128 tensors named ``inc.double_conv.*``, ``downK.maxpool_conv.1.double_conv.*``,
``upK.conv.double_conv.*``, ``outc.conv.*``. Our ``UNet(AUTHORS_CONFIG)`` has the same tensors
under our names; ``authors_name`` maps ours to theirs, so every message names the key as it is
in their file.

Reading is ``torch.load(weights_only=True)`` (tensors and plain containers only; never an
arbitrary pickle), a DataParallel ``module.`` prefix is stripped, and every key, shape and dtype
must be exactly the architecture's (no ``strict=False``); any problem is one line naming the
file and the key. trainers/model/checkpoint.py uses this to serve ``--model FILE.pth`` and ``convert``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from trainers.errors import TrainersError
from trainers.model.unet import ModelConfig, UNet

AUTHORS_CONFIG = ModelConfig(width=64, out_channels=2, upsampling="bilinear", conv_bias=True, head="softmax")
SOURCE_FORMAT = "authors-unet-pth"  # recorded in model.json of a converted run
DP_PREFIX = "module."

_RULES = [  # our state-dict name -> theirs
    (re.compile(r"^inc\.(\d+)\.(.+)$"), r"inc.double_conv.\1.\2"),
    (re.compile(r"^downs\.(\d+)\.1\.(\d+)\.(.+)$"), lambda m: f"down{int(m[1]) + 1}.maxpool_conv.1.double_conv."
                                                               f"{m[2]}.{m[3]}"),
    (re.compile(r"^ups\.(\d+)\.conv\.(\d+)\.(.+)$"), lambda m: f"up{int(m[1]) + 1}.conv.double_conv.{m[2]}.{m[3]}"),
    (re.compile(r"^head\.(.+)$"), r"outc.conv.\1"),
]


class AuthorsCheckpointError(TrainersError, ValueError):
    """A .pth file that is not one of the authors' U-Net state dicts (message names file and key)."""


def authors_name(ours: str) -> str:
    """Our U-Net state-dict key -> the authors' key for the same tensor."""
    for pattern, repl in _RULES:
        if pattern.match(ours):
            return pattern.sub(repl, ours)
    raise KeyError(f"no authors' name for {ours!r}")


def expected_state() -> dict[str, tuple[tuple[int, ...], torch.dtype, str]]:
    """The authors' key -> (shape, dtype, our key), in their file's order (128 entries)."""
    with torch.device("meta"):
        sd = UNet(AUTHORS_CONFIG).state_dict()
    return {authors_name(k): (tuple(v.shape), v.dtype, k) for k, v in sd.items()}


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise AuthorsCheckpointError(f"checkpoint file {str(path)!r} does not exist") from None
    except Exception as e:  # UnpicklingError, RuntimeError (zip), EOFError ... from torch.load
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise AuthorsCheckpointError(f"{path}: not readable with torch.load(weights_only=True) "
                                     f"(only plain state dicts of tensors are accepted): {first}") from None


def read_authors_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The checked tensors of an authors' checkpoint, under OUR key names (ready for UNet.load_state_dict)."""
    path = Path(path)
    obj = _torch_load(path)
    if not isinstance(obj, dict):
        raise AuthorsCheckpointError(f"{path}: holds a {type(obj).__name__}, expected a state dict "
                                     f"(torch.save(model.state_dict()))")
    if obj and all(isinstance(k, str) and k.startswith(DP_PREFIX) for k in obj):
        obj = {k[len(DP_PREFIX):]: v for k, v in obj.items()}
    want = expected_state()
    for key, value in obj.items():
        if key not in want:
            raise AuthorsCheckpointError(f"{path}: unexpected key {key!r}; the authors' U-Net (bilinear, "
                                         f"2 logits) has {len(want)} tensors, e.g. 'inc.double_conv.0.weight'")
        if not torch.is_tensor(value):
            raise AuthorsCheckpointError(f"{path}: {key!r} is a {type(value).__name__}, not a tensor")
        shape, dtype, _ = want[key]
        if tuple(value.shape) != shape or value.dtype != dtype:
            raise AuthorsCheckpointError(f"{path}: tensor {key!r} is {value.dtype} {tuple(value.shape)}, the "
                                         f"authors' U-Net expects {dtype} {shape}")
    missing = [k for k in want if k not in obj]
    if missing:
        raise AuthorsCheckpointError(f"{path}: missing key {missing[0]!r}"
                                     + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return {ours: obj[theirs].contiguous() for theirs, (_, _, ours) in want.items()}


def load_authors_model(path: str | os.PathLike) -> UNet:
    """``UNet(AUTHORS_CONFIG)`` holding the checkpoint's weights, on CPU, in eval mode."""
    model = UNet(AUTHORS_CONFIG)
    model.load_state_dict(read_authors_state(path), strict=True)
    return model.eval()
