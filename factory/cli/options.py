"""The generator flags: one option group (`--generator ... --compile`) shared by every command that builds
a generator (`generate`, `directions discover`, `directions score`, `embeddings invert`, `bench`); the
command receives them as one `GeneratorFlags` (keyword ``gen``) and passes ``gen.options()`` on."""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import click

GENERATOR_HELP = ("Generator: shapes | bigbigan | biggan | dcgan | an installed plug-in's name | package.module:function "
                  "(`factory generators list` shows them).")
# click parameter name -> GeneratorFlags field
PARAMS = {"generator": "name", "weights": "weights", "generator_config": "config", "random_weights": "random_weights",
          "resolution": "resolution", "dtype": "dtype", "channels_last": "channels_last", "compile_": "compile",
          "classes": "classes", "truncation": "truncation"}


@dataclass(frozen=True)
class GeneratorFlags:
    """The generator flags as given on the command line (or by a recipe)."""

    name: str = "shapes"
    weights: str | None = None
    config: str | None = None
    random_weights: bool = False
    resolution: int | None = None
    dtype: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    classes: str | None = None
    truncation: float | None = None

    def options(self) -> dict:
        """Keyword options for `load_generator` (device aside): only the flags that were given."""
        options = {}
        if self.weights:
            options["weights"] = self.weights
        if self.config:
            options["config"] = self.config
        if self.random_weights:
            options["random_weights"] = True
        if self.resolution:
            options["resolution"] = self.resolution
        if self.dtype != "fp32":
            options["autocast"] = self.dtype
        if self.channels_last:
            options["channels_last"] = True
        if self.compile:
            options["compile"] = True
        if self.classes is not None:
            options["classes"] = self.classes
        if self.truncation is not None:
            options["truncation"] = self.truncation
        return options

    def updated(self, params: dict) -> GeneratorFlags:
        """These flags with the values of click parameter names in `params` (e.g. a recipe's)."""
        return dataclasses.replace(self, **{PARAMS[k]: v for k, v in params.items() if k in PARAMS})


FLAGS = [
    click.option("--generator", default="shapes", show_default=True, help=GENERATOR_HELP),
    click.option("--weights", help="Generator weights file, a path or URL (bigbigan: BigBiGAN_x1.pth or .safetensors; "
                                   "biggan: the port's checkpoint folder or its pytorch_model.bin, config.json beside; "
                                   "dcgan: a PyTorch-examples checkpoint)."),
    click.option("--generator-config", help="Generator config JSON (default: the generator's full config)."),
    click.option("--random-weights", is_flag=True, help="bigbigan, biggan, dcgan: deterministic random weights (benchmarks only)."),
    click.option("--resolution", type=int, help="shapes: image size, 128 (default) or 64; biggan with --random-weights: "
                                                "128, 256 or 512."),
    click.option("--dtype", type=click.Choice(["fp32", "tf32", "bf16"]), default="fp32", show_default=True,
                 help="bigbigan, biggan, dcgan: precision (fp32 is the exact path; bf16 is ~20x faster on a GPU)."),
    click.option("--channels-last", is_flag=True, help="bigbigan, biggan, dcgan: channels_last memory format (GPU)."),
    click.option("--compile", "compile_", is_flag=True,
                 help="bigbigan, biggan, dcgan: torch.compile the generator (GPU, ~15 s once per worker)."),
    click.option("--classes", help="biggan: the classes samples are drawn from, uniformly, one per sample from "
                                   "(--seed, index): e.g. 1,207,151-268 (default: all); recorded as the index column 'class'."),
    click.option("--truncation", type=float, help="biggan: truncation in (0, 1] (z = t * TruncatedNormal(-2, 2) and the "
                                                  "matching batch-norm statistics; default 1)."),
]


# The cluster option of every command that runs shard tasks on dask (`generate`, `verify`, `filter`, `upgrade`).
SCHEDULER = click.option("--scheduler", "--cluster", "scheduler", metavar="ADDRESS",
                         help="Address of an existing dask scheduler (tcp://host:8786): run the shards as tasks on "
                              "its workers; see docs/cluster.md.")


# Local worker processes for the shard tasks of `verify`, `filter` and `upgrade` (`generate` has its own default).
LOCAL_WORKERS = click.option("--workers", type=int, default=0, show_default=True,
                             help="Local dask worker processes to run the shard tasks on (0: in this process).")


def generator_flags(command):
    """Decorate a click command's function with the generator flags (--generator ... --compile, in this
    order); the function receives them as one `GeneratorFlags`, keyword ``gen``."""

    @functools.wraps(command)
    def wrapper(*args, **kw):
        gen = GeneratorFlags(**{field: kw.pop(param) for param, field in PARAMS.items()})
        return command(*args, gen=gen, **kw)

    for flag in reversed(FLAGS):
        wrapper = flag(wrapper)
    return wrapper
