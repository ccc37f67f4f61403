"""Generator flags -> generator options: the one set of flags of the commands that build a generator
(`generate`, `embeddings invert`), and the one mapping to options (also used by `bench`)."""
from __future__ import annotations

import click

GENERATOR_HELP = ("Generator: shapes | bigbigan | biggan | dcgan | an installed plug-in's name | package.module:function "
                  "(`factory generators list` shows them).")
MODEL_FLAGS = ("weights", "generator_config", "random_weights", "dtype", "channels_last", "compile_")


def generator_options(flags: dict, *, model_flags: bool = True) -> dict:
    """Keyword options for `load_generator` from a command's generator flags (its click parameters:
    weights, generator_config, random_weights, resolution, dtype, channels_last, compile_, classes, truncation; absent ones
    count as not given). Flags left at their defaults add nothing. ``model_flags=False`` ignores the
    flags of MODEL_FLAGS (`factory bench` does so for generators other than bigbigan)."""
    given = {k: v for k, v in flags.items() if model_flags or k not in MODEL_FLAGS}
    options = {}
    if given.get("weights"):
        options["weights"] = given["weights"]
    if given.get("generator_config"):
        options["config"] = given["generator_config"]
    if given.get("random_weights"):
        options["random_weights"] = True
    if given.get("resolution"):
        options["resolution"] = given["resolution"]
    if given.get("dtype", "fp32") != "fp32":
        options["autocast"] = given["dtype"]
    if given.get("channels_last"):
        options["channels_last"] = True
    if given.get("compile_"):
        options["compile"] = True
    if given.get("classes") is not None:
        options["classes"] = given["classes"]
    if given.get("truncation") is not None:
        options["truncation"] = given["truncation"]
    return options


def generator_flags(command):
    """Decorate a click command with the generator flags (--generator ... --compile), in this order."""
    flags = [
        click.option("--generator", default="shapes", show_default=True, help=GENERATOR_HELP),
        click.option("--weights", help="Generator weights file, a path or URL (bigbigan: BigBiGAN_x1.pth or .safetensors; "
                                       "biggan: the port's checkpoint folder or its pytorch_model.bin, config.json beside; "
                                       "dcgan: a PyTorch-examples checkpoint)."),
        click.option("--generator-config", help="Generator config JSON (default: the generator's full config)."),
        click.option("--random-weights", is_flag=True, help="bigbigan, biggan, dcgan: deterministic random weights (benchmarks only)."),
        click.option("--resolution", type=int, help="shapes: image size, 128 (default) or 64."),
        click.option("--dtype", type=click.Choice(["fp32", "tf32", "bf16"]), default="fp32", show_default=True,
                     help="bigbigan, biggan, dcgan: precision (fp32 is the exact path; bf16 is ~20x faster on a GPU)."),
        click.option("--channels-last", is_flag=True, help="bigbigan, biggan, dcgan: channels_last memory format (GPU)."),
        click.option("--compile", "compile_", is_flag=True, help="bigbigan, biggan, dcgan: torch.compile the generator (GPU, ~15 s once per worker)."),
        click.option("--classes", help="biggan: the classes samples are drawn from, uniformly, one per sample from "
                                       "(--seed, index): e.g. 1,207,151-268 (default: all); recorded as the index column 'class'."),
        click.option("--truncation", type=float, help="biggan: truncation in (0, 1] (z = t * TruncatedNormal(-2, 2) and the "
                                                      "matching batch-norm statistics; default 1)."),
    ]
    for flag in reversed(flags):
        command = flag(command)
    return command
