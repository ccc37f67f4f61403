"""Generator flags -> generator options: the one mapping shared by `factory generate` and `factory bench`."""
from __future__ import annotations

GENERATOR_HELP = ("Generator: shapes | bigbigan | dcgan | an installed plug-in's name | package.module:function "
                  "(`factory generators list` shows them).")
MODEL_FLAGS = ("weights", "generator_config", "random_weights", "dtype", "channels_last", "compile_")


def generator_options(flags: dict, *, model_flags: bool = True) -> dict:
    """Keyword options for `load_generator` from a command's generator flags (its click parameters:
    weights, generator_config, random_weights, resolution, dtype, channels_last, compile_; absent ones
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
    return options
