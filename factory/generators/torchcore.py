"""What every torch generator adapter shares: option checks (precision, dtype, device, compile,
channels_last), reading a torch weights file safely, the state-dict diff and strict load with one-line
errors, the weights digest, and the per-call precision scope.

An adapter (dcgan, bigbigan, ...) reads its own file layout and builds its own module; everything
else goes through here so that every generator refuses, names and fingerprints weights the same way.
"""
from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from factory.format import FactoryError
from factory.fsio import ReadError, read_torch_file, sha256_file

PRECISIONS = ("fp32", "tf32", "bf16")  # what --dtype offers; "fp32" (or None) is the exact path
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float64": torch.float64, "fp64": torch.float64,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def one_line(e: BaseException, limit: int = 200) -> str:
    """``TypeName: first line of the message``, at most `limit` characters."""
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0] if s else ''}".strip()[:limit]


# ---------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class TorchOptions:
    """The checked run options of a torch generator."""

    device: torch.device
    dtype: torch.dtype
    autocast: str | None  # None (exact fp32 path), "tf32" or "bf16"
    channels_last: bool
    compile: bool | str


def check_options(*, device: Any = "cpu", dtype: Any = None, autocast: str | None = None,
                  channels_last: bool = False, compile: bool | str = False, prefix: str = "") -> TorchOptions:
    """Check the run options every torch generator takes; FactoryError (one line, starting with
    `prefix`, e.g. ``"dcgan: "``) for a bad one. autocast: None | "fp32" | "tf32" | "bf16" ("fp32"
    becomes None); dtype: a torch dtype or a name of DTYPES (None: float32); device: anything
    torch.device takes, cuda only where CUDA is available; compile: bool or a torch.compile mode."""
    if autocast not in (None, *PRECISIONS):
        raise FactoryError(f"{prefix}autocast={autocast!r}; choose one of {(None, *PRECISIONS)}")
    dt = torch.float32 if dtype is None else (DTYPES.get(dtype) if isinstance(dtype, str) else dtype)
    if not isinstance(dt, torch.dtype) or dt not in DTYPES.values():
        raise FactoryError(f"{prefix}dtype={dtype!r}; choose one of float32, float64, bfloat16, float16")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise FactoryError(f"{prefix}bad device {device!r} ({e}); use 'cpu' or 'cuda'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FactoryError(f"{prefix}device={device!r} but CUDA is not available here; use device='cpu'")
    if not isinstance(compile, (bool, str)):
        raise FactoryError(f"{prefix}compile={compile!r}; pass True, False or a torch.compile mode")
    return TorchOptions(dev, dt, None if autocast == "fp32" else autocast, bool(channels_last), compile)


def compiled(module: nn.Module, compile: bool | str):
    """`module`, or its torch.compile (static shapes) when `compile` is True or a mode name."""
    if not compile:
        return module
    return torch.compile(module, mode=compile if isinstance(compile, str) else None, dynamic=False)


@contextlib.contextmanager
def precision_scope(device: torch.device, autocast: str | None, *, deterministic: bool = False):
    """Scope one forward call: on CUDA, TF32 on only for autocast="tf32" (cuDNN convolutions default
    to TF32 otherwise) and, with `deterministic`, cuDNN pinned to deterministic algorithms; bf16
    autocast for autocast="bf16". The global switches are restored afterwards."""
    amp = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if autocast == "bf16"
           else contextlib.nullcontext())
    if device.type != "cuda":
        with amp:
            yield
        return
    b = torch.backends
    old = (b.cudnn.deterministic, b.cudnn.benchmark, b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32)
    if deterministic:
        b.cudnn.deterministic, b.cudnn.benchmark = True, False
    b.cudnn.allow_tf32 = b.cuda.matmul.allow_tf32 = autocast == "tf32"
    try:
        with amp:
            yield
    finally:
        b.cudnn.deterministic, b.cudnn.benchmark, b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32 = old


# ---------------------------------------------------------------------------------- weights files


def read_torch_weights(path: str | Path, *, hint: str = "") -> Any:
    """The object in a torch file (``torch.load(weights_only=True)`` on the CPU), or one FactoryError
    line naming the file: a pickle that references code is refused, a corrupt file is named so
    (then `hint`, e.g. "download it again", ends the message)."""
    try:
        return read_torch_file(path)
    except ReadError as e:
        tail = f"; {hint}" if hint else ""
        if e.reason == "objects":
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e.cause))
            what = f" ({found.group(1)})" if found else ""
            raise FactoryError(
                f"{path}: refused: the checkpoint's pickle references code or objects other than tensors{what}, "
                f"which weights_only loading does not run; save the generator's state_dict() instead"
            ) from None
        raise FactoryError(f"{path}: corrupt or truncated torch checkpoint ({one_line(e.cause)}){tail}") from None


def weights_digest(path: str | Path) -> str:
    """sha256 of a weights file (what a generator's identity records)."""
    return sha256_file(path)


def state_dict_digest(sd: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the keys and float bytes of a state dict, in order (random weights' identity)."""
    h = hashlib.sha256()
    for k, v in sd.items():
        h.update(k.encode())
        h.update(v.numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------- state dicts


@dataclass
class StateDictDiff:
    """How a state dict differs from a model's: keys it lacks, keys the model lacks, shape mismatches."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shapes: list[str] = field(default_factory=list)  # "key (file [..], model [..])"

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shapes)

    def summary(self) -> str:
        """The differences in one line (the first few of each kind)."""
        problems = []
        if self.missing:
            problems.append(f"{len(self.missing)} missing keys: {', '.join(self.missing[:4])}")
        if self.unexpected:
            problems.append(f"{len(self.unexpected)} unexpected keys: {', '.join(self.unexpected[:4])}")
        if self.shapes:
            problems.append(f"{len(self.shapes)} shape mismatches: {'; '.join(self.shapes[:3])}")
        return " | ".join(problems)


def state_dict_diff(sd: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                    optional: Iterable[str] = ()) -> StateDictDiff:
    """Compare `sd` with `expected` (a model's state_dict(); meta tensors do): keys in `optional`
    may be absent."""
    optional = set(optional)
    return StateDictDiff(
        missing=[k for k in expected if k not in sd and k not in optional],
        unexpected=[k for k in sd if k not in expected],
        shapes=[f"{k} (file {list(sd[k].shape)}, model {list(expected[k].shape)})"
                for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)],
    )


def check_state_dict(sd: Mapping[str, torch.Tensor], model: nn.Module, *, source: str, what: str,
                     optional: Iterable[str] = (), hint: str = "") -> dict[str, torch.Tensor]:
    """Every key and shape of `model`, nothing else (keys in `optional` may be absent and are then
    taken from the model); floating, finite parameters. FactoryError: ``{source} does not match
    {what}: <diff>{hint}``. Returns the state dict completed for ``load_state_dict(strict=True)``."""
    expected = model.state_dict()
    optional = {k for k in optional if k in expected}
    diff = state_dict_diff(sd, expected, optional)
    if diff:
        raise FactoryError(f"{source} does not match {what}: {diff.summary()}{hint}")
    out = dict(sd)
    for k in optional:
        out.setdefault(k, expected[k])
    for k, v in out.items():
        if k in optional:
            continue
        if not v.is_floating_point():
            raise FactoryError(f"{source}: {k} has dtype {v.dtype}, expected floating point")
        if not torch.isfinite(v).all():
            raise FactoryError(f"{source}: {k} contains NaN or inf values")
    return out


def load_strict(model: nn.Module, sd: Mapping[str, torch.Tensor], *, source: str, what: str,
                optional: Iterable[str] = (), hint: str = "") -> nn.Module:
    """check_state_dict, then ``load_state_dict(strict=True)``, eval mode and no weight gradients
    (gradients flow to z, never to weights). Returns `model`."""
    model.load_state_dict(check_state_dict(sd, model, source=source, what=what, optional=optional, hint=hint),
                          strict=True)
    return model.eval().requires_grad_(False)


# ------------------------------------------------------------------ identity and its inverse

_RANDOM_SOURCE = re.compile(r"^random\(seed=(\d{1,19})\)$")
_PRECISION_OPTIONS = ("autocast", "channels_last", "compile", "fused")


def check_z(gen: Any, z: Any) -> None:
    """FactoryError (one line) unless ``z`` is a [B, gen.dim_z] tensor."""
    if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != gen.dim_z:
        shape = list(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise FactoryError(f"{gen.name} expects z of shape [B, {gen.dim_z}], got {shape}")


def weights_identity(gen: Any, **more: Any) -> dict:
    """The identity a weights-backed torch generator writes: its name, config, weights sha256 and the weights
    file's name only (the sha256 identifies it), then ``more`` (precision, ...), in that order."""
    from dataclasses import asdict

    from factory.fsio import file_name

    return {"name": gen.name, "config": asdict(gen.config), "weights_sha256": gen.weights_sha256,
            "weights_source": file_name(gen.weights_source), **more}


def random_source(seed: int) -> str:
    """The ``weights_source`` an identity records for seeded random weights (``random(seed=N)``)."""
    return f"random(seed={int(seed)})"


def identity_options(identity: dict, *, keys: tuple[str, ...] = ("config",), what: str) -> dict:
    """The loader options that rebuild the torch generator an ``identity`` describes (the weights file
    aside: the caller passes it as ``weights=``): the entries named in ``keys`` (objects, numbers, lists
    or strings only: a manifest never names a file to read), the precision's dtype and fast paths, and
    the seed of random weights (``random_source``'s inverse). FactoryError (one line) for a malformed one."""
    opts: dict = {}
    for k in keys:
        v = identity.get(k)
        if v is None:
            continue
        if k == "config" and not isinstance(v, dict):
            raise FactoryError(f"{what}: the identity's config must be an object, got {type(v).__name__}")
        if not isinstance(v, (dict, list, str, int, float, bool)):
            raise FactoryError(f"{what}: the identity's {k} must be plain JSON, got {type(v).__name__}")
        opts[k] = v
    p = identity.get("precision") or {}
    if not isinstance(p, dict):
        raise FactoryError(f"{what}: the identity's precision must be an object, got {type(p).__name__}")
    for k in _PRECISION_OPTIONS:
        if p.get(k) not in (None, False):
            opts[k] = p[k]
    if p.get("dtype") not in (None, "float32"):
        opts["dtype"] = p["dtype"]
    m = _RANDOM_SOURCE.match(str(identity.get("weights_source") or ""))
    if m:
        opts.update(random_weights=True, seed=int(m.group(1)))
    return opts


def needs_weights_file(identity: dict) -> bool:
    """Whether an identity names a weights file (by sha256) rather than seeded random weights."""
    return bool(identity.get("weights_sha256") and identity.get("weights_source")
                and not _RANDOM_SOURCE.match(str(identity["weights_source"])))
