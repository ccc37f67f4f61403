"""Generator protocol, registry and plug-in loading.

A generator is a torch-module-like object with:

- ``dim_z: int`` and ``resolution: int``;
- ``device: torch.device``;
- ``__call__(z) -> float32 [B, 3, H, W] in [-1, 1]`` for ``z`` float32 [B, dim_z] on its device;
- ``identity() -> dict``: what determines its outputs (name, config, weights sha256), stored in manifests;
- optionally ``named_directions() -> dict[str, np.ndarray]`` (unit vectors of width dim_z)
  and ``true_mask(z) -> bool [B, H, W]`` (ground truth, test worlds only);
- class-conditional generators (biggan) add ``labels(seed, start, stop) -> int64 [stop - start]``
  (sample i's class, a pure function of (seed, i)) and accept ``__call__(z, labels=y)``; the engine
  passes each sample's class to both images of its pair and records it (JSON ``class``, index column
  ``class``). Optionally ``latent_prior() -> {"kind": "truncated", "bound", "scale"}``: what
  ``--latents gaussian`` samples z from instead of N(0, I).

Generators come from three places, resolved in this order by ``load_generator(name, **options)``:

1. ``package.module:function`` -- any importable callable, no packaging needed;
2. built-ins, registered with ``@register("name")`` (shapes, bigbigan, biggan, dcgan);
3. plug-ins: entry points of the group ``factory.generators`` declared by installed
   distributions (``name = "package.module:function"`` in their pyproject.toml).

A name the user types (``--generator``) may take any of the three forms. A name read from a
dataset (a manifest's ``spec.generator.name``) maps to code only through 2 and 3: ``installed``
never imports a ``module:function`` a manifest spells, and an unknown name is one line. The
inverse of ``identity()`` belongs to the registry too: ``options_from_identity`` gives the
loader options that rebuild a generator from its identity (a built-in registers it with
``@register(..., from_identity=fn)``, which sets the factory's ``options_from_identity``
attribute; a plug-in's factory carries that attribute itself).

Each source is a *factory*: a callable taking keyword options (the engine always passes
``device=``; ``--weights``, ``--resolution``, ... add ``weights=``, ``resolution=``, ...) and
returning a generator. Every failure is one FactoryError line naming the generator and what
went wrong. ``describe_generators()`` lists what is available, with dim_z, resolution and
origin. The engine only ever calls load_generator. docs/generators.md has a complete plug-in.
"""
from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from factory.format import FactoryError

ENTRY_POINT_GROUP = "factory.generators"


@runtime_checkable
class Generator(Protocol):
    dim_z: int
    resolution: int
    device: torch.device

    def __call__(self, z: torch.Tensor) -> torch.Tensor: ...

    def identity(self) -> dict: ...


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """A generator's output, float [B, 3, H, W] in [-1, 1], as uint8 pixels [B, H, W, 3] (round half to
    even, clamped) on the same device: the one conversion of generated images to bytes."""
    return ((images.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def from_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels [B, H, W, 3] as float32 [B, 3, H, W] in [-1, 1] (the inverse of `to_uint8`)."""
    return pixels.permute(0, 3, 1, 2).float() / 127.5 - 1.0


@dataclass(frozen=True)
class GeneratorInfo:
    """One row of describe_generators().

    origin: "builtin", "entry point" or "module"; source: where the factory lives
    ("pkg.mod:function", prefixed with the distribution and version for entry points);
    dim_z / resolution: None when they depend on options (e.g. the weights file) or the factory
    could not be built without them -- then note says why.
    """

    name: str
    dim_z: int | None
    resolution: int | None
    origin: str
    source: str
    summary: str = ""
    note: str = ""


_REGISTRY: dict[str, Callable[..., Generator]] = {}
_INFO: dict[str, dict] = {
    # built-ins registered without metadata (their defaults; options change them)
    "shapes": dict(dim_z=120, resolution=128, summary="procedural test world with ground-truth masks",
                   note="options resolution= and dim_z= change these"),
    "bigbigan": dict(dim_z=120, resolution=128, summary="BigBiGAN-128 (the authors' BigBiGAN_x1.pth)"),
}


def register(name: str, *, dim_z: int | None = None, resolution: int | None = None, summary: str = "",
             note: str = "", from_identity: Callable[[dict], dict] | None = None):
    """Decorator registering a built-in factory; the keywords are what describe_generators shows
    without building it (leave dim_z/resolution None when they depend on the options);
    ``from_identity(identity) -> options`` is the inverse of the generator's ``identity()``."""

    def deco(fn):
        _REGISTRY[name] = fn
        if from_identity is not None:
            fn.options_from_identity = from_identity  # where a plug-in's factory carries its own
        info = {k: v for k, v in dict(dim_z=dim_z, resolution=resolution, summary=summary, note=note).items() if v}
        _INFO[name] = {**_INFO.get(name, {}), **info}
        return fn

    return deco


def _load_builtins() -> None:
    # Imported lazily so that `import factory.generators` stays cheap.
    from factory.generators import biggan, dcgan, shapes  # noqa: F401

    try:
        from factory.generators import bigbigan  # noqa: F401
    except ImportError as e:  # pragma: no cover - only while the module is missing
        if "bigbigan" not in str(e):
            raise


# ------------------------------------------------------------------------------------- plug-ins


def _one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0] if s else ''}".strip()[:300]


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: (ep.name, ep.value))


def _ep_source(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    who = f"{dist.metadata['Name']} {dist.version}" if dist is not None else "an installed distribution"
    return f"{who} ({ep.value})"


def _import_target(module: str, attr: str, what: str) -> Callable[..., Generator]:
    """Import ``module`` and walk the dotted ``attr``; `what` names the generator in errors."""
    try:
        obj = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            raise FactoryError(
                f"{what}: module {module!r} is not importable (no module named {e.name!r}); install it, "
                f"or put the folder holding it on PYTHONPATH"
            ) from None
        raise FactoryError(f"{what}: importing {module!r} failed: {_one_line(e)}") from e
    except Exception as e:  # whatever the module's own top level raises
        raise FactoryError(f"{what}: importing {module!r} failed: {_one_line(e)}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(obj) if not n.startswith("_"))[:8]
            raise FactoryError(
                f"{what}: {module!r} has no attribute {attr!r} (it defines: {', '.join(public) or 'nothing public'})"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise FactoryError(f"{what}: {module}:{attr} is a {type(obj).__name__}, not a callable returning a generator")
    return obj


def _parse_target(name: str) -> tuple[str, str]:
    module, _, attr = name.partition(":")
    if not (module and attr and all(p.isidentifier() for p in module.split(".") + attr.split("."))):
        raise FactoryError(
            f"generator {name!r}: a plug-in name must look like package.module:function (e.g. mypkg.gens:make_gan)"
        )
    return module, attr


def resolve(name: str) -> tuple[Callable[..., Generator], str, str]:
    """(factory, origin, source) for a generator name, importing whatever it needs; FactoryError
    (one line) for unknown names, unimportable modules, missing attributes, ambiguous entry points."""
    if not isinstance(name, str) or not name.strip():
        raise FactoryError(f"generator name must be a non-empty string, got {name!r}")
    if ":" in name:
        module, attr = _parse_target(name)
        return _import_target(module, attr, f"generator {name!r}"), "module", name
    _load_builtins()
    if name in _REGISTRY:
        fn = _REGISTRY[name]
        return fn, "builtin", f"{fn.__module__}:{fn.__qualname__}"
    eps = [ep for ep in _entry_points() if ep.name == name]
    if len({ep.value for ep in eps}) > 1:
        raise FactoryError(
            f"generator {name!r} is declared by several installed distributions: "
            f"{'; '.join(_ep_source(ep) for ep in eps)}; choose one with --generator package.module:function"
        )
    if eps:
        ep = eps[0]
        what = f"generator {name!r} (entry point from {_ep_source(ep)})"
        return _import_target(ep.module, ep.attr, what), "entry point", _ep_source(ep)
    raise FactoryError(
        f"unknown generator {name!r}; known generators: {', '.join(known_generators())} "
        f"(or package.module:function for a plug-in)"
    )


def installed(name: object) -> str:
    """`name` read from a dataset (a manifest or view), checked to be a built-in or an installed
    plug-in: nothing is imported (a ``module:function`` a manifest spells never is); one FactoryError
    line otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise FactoryError(f"the dataset names no generator (spec.generator.name is {str(name)[:40]!r}); "
                           "pass --generator")
    if ":" in name or name not in known_generators():
        raise FactoryError(f"generator {name[:80]!r} is not installed here; install the plug-in that provides it "
                           "or pass --generator")
    return name


def options_from_identity(name: str, identity: dict) -> dict:
    """The loader options (weights file aside) that rebuild, as generator `name`, the generator whose
    ``identity()`` is `identity`: the factory's ``options_from_identity`` attribute (what a built-in
    registered, or what a plug-in declares). One FactoryError line when there is none or it fails."""
    fn, origin, source = resolve(name)
    inverse = getattr(fn, "options_from_identity", None)
    if inverse is None:
        raise FactoryError(f"generator {name!r} ({source}) does not say how to rebuild it from its identity: "
                           "its factory has no options_from_identity (docs/generators.md)")
    if not isinstance(identity, dict):
        raise FactoryError(f"generator {name!r}: the identity must be an object, got {type(identity).__name__}")
    try:
        opts = inverse(identity)
    except FactoryError:
        raise
    except Exception as e:
        raise FactoryError(f"generator {name!r}: options_from_identity raised {_one_line(e)}") from e
    if not isinstance(opts, dict) or "device" in opts:
        raise FactoryError(f"generator {name!r}: options_from_identity must return a dict of options without device")
    return opts


def _check_generator(gen: object, what: str) -> None:
    def bad_int(v):
        return not isinstance(v, int) or isinstance(v, bool) or v < 1

    missing = [a for a in ("dim_z", "resolution", "device", "identity") if not hasattr(gen, a)]
    if missing or not callable(gen):
        lacks = ", ".join(missing + ([] if callable(gen) else ["__call__"]))
        raise FactoryError(f"{what} returned {type(gen).__name__!r}, not a generator: it lacks {lacks}")
    if bad_int(gen.dim_z) or bad_int(gen.resolution):
        raise FactoryError(
            f"{what}: dim_z and resolution must be positive integers, got {gen.dim_z!r} and {gen.resolution!r}"
        )


def known_generators() -> list[str]:
    """Names usable as load_generator(name): built-ins and installed entry points."""
    _load_builtins()
    return sorted(set(_REGISTRY) | {ep.name for ep in _entry_points()})


def load_generator(name: str, **options) -> Generator:
    """Build generator `name` (built-in, entry point or package.module:function) with its keyword
    options (device=, dtype=, weights=, ...). A plug-in that raises, or returns something that is
    not a generator, is reported as one FactoryError line naming it."""
    fn, origin, source = resolve(name)
    what = f"generator {name!r}" if origin != "entry point" else f"generator {name!r} (from {source})"
    if origin == "builtin":
        gen = fn(**options)
    else:
        try:
            gen = fn(**options)
        except FactoryError as e:
            raise FactoryError(f"{what}: {e}") from e
        except Exception as e:
            hint = ""
            if isinstance(e, TypeError) and "keyword argument" in str(e):
                hint = f" (it was given {', '.join(sorted(options)) or 'no options'}; a factory should accept **options)"
            raise FactoryError(f"{what} raised {_one_line(e)}{hint}") from e
    _check_generator(gen, what)
    return gen


def _describe(name: str, fn: Callable | None, *, origin: str, source: str, probe: bool, note: str = "") -> GeneratorInfo:
    info = dict(_INFO.get(name, {})) if origin == "builtin" else {}
    if fn is not None and origin != "builtin":
        for k in ("dim_z", "resolution"):  # declared on the factory (a function attribute or class attribute)
            v = getattr(fn, k, None)
            if isinstance(v, int) and not isinstance(v, bool):
                info[k] = v
        doc = (getattr(fn, "__doc__", None) or "").strip()
        info["summary"] = doc.splitlines()[0] if doc else ""
    if fn is not None and probe and origin != "builtin" and not ("dim_z" in info and "resolution" in info):
        try:
            gen = load_generator(source if origin == "module" else name, device="cpu")
            info.update(dim_z=gen.dim_z, resolution=gen.resolution)
        except FactoryError as e:
            note = note or f"not built without options: {e}"
    elif origin == "builtin" and info.get("dim_z") is None and not info.get("note"):
        info["note"] = "depends on the weights file"
    return GeneratorInfo(name=name, dim_z=info.get("dim_z"), resolution=info.get("resolution"), origin=origin,
                         source=source, summary=info.get("summary", ""), note=note or info.get("note", ""))


def describe_generators(extra: Iterable[str] = (), *, probe: bool = True) -> list[GeneratorInfo]:
    """Every available generator: built-ins, then installed entry points, then the names in `extra`
    (any form, e.g. "pkg.mod:make"; these must load).

    dim_z and resolution come from what a factory declares (``register(..., dim_z=, resolution=)``
    for built-ins; ``dim_z`` / ``resolution`` attributes on a plug-in's factory); otherwise, with
    probe=True, a plug-in is built once with ``device="cpu"`` and no other options to read them.
    A broken entry point is listed with the error in `note` rather than failing the listing, and
    one shadowed by a built-in of the same name is listed with a note saying so.
    """
    _load_builtins()
    rows = [_describe(n, fn, origin="builtin", source=f"{fn.__module__}:{fn.__qualname__}", probe=probe) for n, fn in sorted(_REGISTRY.items())]
    for ep in _entry_points():
        if ep.name in _REGISTRY:
            rows.append(GeneratorInfo(ep.name, None, None, "entry point", _ep_source(ep),
                                      note=f"shadowed by the built-in {ep.name!r}; use --generator {ep.value}"))
            continue
        try:
            fn, origin, source = resolve(ep.name)
        except FactoryError as e:
            rows.append(GeneratorInfo(ep.name, None, None, "entry point", _ep_source(ep), note=str(e)))
            continue
        rows.append(_describe(ep.name, fn, origin=origin, source=source, probe=probe))
    for name in extra:
        fn, origin, source = resolve(name)
        rows.append(_describe(name, fn, origin=origin, source=source, probe=probe))
    return rows
