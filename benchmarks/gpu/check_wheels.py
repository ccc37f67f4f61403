"""Is benchmarks/gpu/wheels.txt complete for the lent CUDA image? (no download)

Every top-level import of factory, trainers and benchmarks/*.py is resolved to the installed
distribution that provides it (importlib.metadata.packages_distributions), then that
distribution's own requirements are followed; each one must be named in wheels.txt or in
image.txt (what the lent machines' 'cuda' image already holds). Prints one line per missing
distribution and a summary line; exits 1 when something is missing.

    python benchmarks/gpu/check_wheels.py [--json FILE]
"""
from __future__ import annotations

import argparse
import ast
import importlib.metadata as md
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
# Imported by a benchmark that never runs on the GPU machine (it needs no wheel there).
CPU_ONLY = {"moto": "benchmarks/cache_bench.py's S3 stand-in (a CPU benchmark)",
            "duckdb": "benchmarks/scale_bench.py's baseline (a CPU benchmark)",
            "selenium": "benchmarks/browse_map_bench.py's browser (a CPU benchmark)",
            # an optional import: browse's map offers UMAP only where umap-learn is installed
            "umap": "factory/browse/latentmap.py's optional UMAP projection"}


# The lent image's Python (fetch_wheels.sh's PYV): requirement markers are read for it.
TARGET = {"extra": "", "python_version": "3.12", "python_full_version": "3.12.3"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def listed(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(norm(re.split(r"[=<>!~\[ ;]", line, maxsplit=1)[0]))
    return names


def top_imports() -> dict[str, set[str]]:
    """Top-level module -> files importing it (absolute imports, at any depth of the file)."""
    files = [f for pkg in ("factory", "trainers") for f in (ROOT / pkg).rglob("*.py")]
    files += sorted((ROOT / "benchmarks").glob("*.py"))
    found: dict[str, set[str]] = {}
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(f.relative_to(ROOT)))
    return found


def requirements(dist: str) -> list[str]:
    """The distribution's requirements without extras, for the target Python."""
    from packaging.requirements import Requirement

    out = []
    for text in md.requires(dist) or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(TARGET):
            out.append(norm(req.name))
    return out


def check() -> dict:
    own = {"factory", "trainers"} | {f.stem for f in (ROOT / "benchmarks").glob("*.py")}
    own |= {f.stem for f in (ROOT / "tests").glob("*.py")}
    have = listed(HERE / "wheels.txt") | listed(HERE / "image.txt")
    providers = md.packages_distributions()
    missing, unresolved, cpu_only, seen = {}, [], {}, set()
    todo = []
    for mod, files in sorted(top_imports().items()):
        if mod in sys.stdlib_module_names or mod in own or mod == "tomli":  # tomli: Python < 3.11 only
            continue
        if mod in CPU_ONLY:
            cpu_only[mod] = CPU_ONLY[mod]
            continue
        dists = providers.get(mod)
        if not dists:
            unresolved.append(f"{mod} (imported by {', '.join(sorted(files)[:3])})")
            continue
        todo += [(norm(d), f"import {mod} in {min(files)}") for d in dists]
    while todo:
        dist, why = todo.pop()
        if dist in seen:
            continue
        seen.add(dist)
        if dist not in have and dist != "gan-dataset-factory":
            missing[dist] = why
        if dist in have and dist in listed(HERE / "image.txt"):
            continue  # the image brings its own requirements
        try:
            todo += [(r, f"required by {dist}") for r in requirements(dist)]
        except md.PackageNotFoundError:
            unresolved.append(f"{dist} ({why}): not installed here")
    return {"missing": missing, "unresolved": unresolved, "cpu_only": cpu_only,
            "checked": len(seen)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="also write the report here")
    args = ap.parse_args()
    report = check()
    for dist, why in sorted(report["missing"].items()):
        print(f"missing from wheels.txt: {dist} ({why})")
    for line in report["unresolved"]:
        print(f"unresolved: {line}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    bad = len(report["missing"]) + len(report["unresolved"])
    print(f"wheels: {report['checked']} distributions checked, {bad} missing"
          f" ({len(report['cpu_only'])} CPU-only imports exempt)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
