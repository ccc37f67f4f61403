"""The house's map: docs/architecture.md has one row per module of factory/ and trainers/ (none missing,
none extra, none twice), and (where ../shared/tools/house.py is present) the import graph keeps the rules."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


PACKAGES = ("factory", "trainers")


def module_tables(text: str) -> dict[str, list[tuple[int, list[str], str]]]:
    """The rows of the module tables under '### factory' and '### trainers': (line, first-cell names, row)."""
    rows: dict[str, list] = {p: [] for p in PACKAGES}
    pkg = None
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("#"):
            title = line[4:].strip() if line.startswith("### ") else ""
            pkg = title if title in PACKAGES else None
        elif pkg and line.startswith("|") and not re.match(r"\|\s*(module\s*\||-)", line):
            rows[pkg].append((n, re.findall(r"`([^`]+)`", line.split("|")[1]), line))
    return rows


def table_problems(text: str, root: Path = ROOT) -> list[str]:
    """What is wrong between the module tables and the modules on disk: a module without a row, a row naming
    no module, a module with two rows. A `pkg/` row covers the modules of that package it names in backticks
    (`name` or `name.py`)."""
    problems = []
    for pkg, rows in module_tables(text).items():
        base = root / pkg
        named: dict[str, list[int]] = {}
        if not rows:
            problems.append(f"no module table under '### {pkg}'")
        for n, entries, line in rows:
            if not entries:
                problems.append(f"line {n}: no `module` in the first cell")
            for entry in entries:
                if entry.endswith("/"):
                    if not (base / entry / "__init__.py").is_file():
                        problems.append(f"line {n}: `{entry}` is not a package of {pkg}/")
                        continue
                    words = set(re.findall(r"`([^`]+)`", line.split("|", 2)[2]))
                    for p in sorted((base / entry).glob("*.py")):
                        if p.stem in words or p.name in words:
                            named.setdefault(str(p.relative_to(base)), []).append(n)
                elif (base / entry).is_file() and entry.endswith(".py"):
                    named.setdefault(entry, []).append(n)
                else:
                    problems.append(f"line {n}: `{entry}` names no module of {pkg}/")
        on_disk = {str(p.relative_to(base)) for p in base.rglob("*.py") if p.name != "__init__.py"}
        problems += [f"{pkg}/{m} has no row" for m in sorted(on_disk - set(named))]
        problems += [f"{pkg}/{m} has {len(ls)} rows (lines {', '.join(map(str, ls))})"
                     for m, ls in sorted(named.items()) if len(ls) > 1]
    return problems


def test_architecture_has_one_row_per_module():
    problems = table_problems((ROOT / "docs" / "architecture.md").read_text())
    assert not problems, "docs/architecture.md's module tables and the code differ:\n" + "\n".join(problems)


def test_the_table_check_fails_on_a_broken_table():
    text = (ROOT / "docs" / "architecture.md").read_text()
    row = next(ln for ln in text.splitlines() if ln.startswith("| `fsio.py` |"))
    assert table_problems(text.replace(row + "\n", "")) == ["factory/fsio.py has no row"]
    assert any("has 2 rows" in p for p in table_problems(text.replace(row, row + "\n" + row)))
    ghost = row.replace("`fsio.py`", "`fsios.py`")
    [problem] = table_problems(text.replace(row, row + "\n" + ghost))
    assert re.fullmatch(r"line \d+: `fsios\.py` names no module of factory/", problem), problem
    cli = next(ln for ln in text.splitlines() if ln.startswith("| `cli/` |") and "trainers" in ln)
    assert table_problems(text.replace(cli, cli.replace("`model.py` (convert), ", ""))) == ["trainers/cli/model.py has no row"]


def test_import_graph_keeps_the_rules():
    shared = Path(os.environ.get("FACTORY_SHARED", ROOT.parent / "shared"))
    tool = shared / "tools" / "house.py"
    if not tool.exists():
        pytest.skip(f"{tool} absent (the house tool lives in ../shared beside the checkout)")
    out = subprocess.run([sys.executable, str(tool), str(ROOT)], capture_output=True, text=True, timeout=120)
    last = out.stdout.strip().splitlines()[-1]
    for rule in ("cycles 0", "private cross-imports 0", "over 600 lines 0", "trainers->factory beyond format 0"):
        assert rule in last, out.stdout[-3000:]


def test_ruff_is_clean():
    """`ruff check .` with the rules in pyproject.toml (scripts/test.sh runs it too, before pytest)."""
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert "No module named ruff" not in out.stderr, "ruff is missing: pip install -e '.[test]'"
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-1000:]
