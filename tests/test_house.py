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


# ------------------------------------------------------------------ the rules docs/architecture.md states

def positional_beyond_four(source: str, path: str = "<src>") -> list[str]:
    """Functions of `source` taking more than four parameters positionally (``self``/``cls`` not counted).
    Click commands (decorated functions of a `cli` package) are exempt: click passes their options by name."""
    import ast

    out = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if node.decorator_list and "/cli/" in path:
            continue
        pos = [a.arg for a in node.args.posonlyargs + node.args.args]
        if pos and pos[0] in ("self", "cls"):
            pos = pos[1:]
        if len(pos) > 4:
            out.append(f"{path}:{node.lineno} {node.name}({', '.join(pos)})")
    return out


def test_more_than_four_parameters_are_keyword_only():
    found = [f for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))
             for f in positional_beyond_four(p.read_text(), str(p.relative_to(ROOT)))]
    assert not found, "functions with more than four positional parameters (make the rest keyword-only):\n" + \
        "\n".join(found)


def test_the_keyword_only_check_fails_when_broken():
    assert positional_beyond_four("def f(a, b, c, d, e=1): pass") == ["<src>:1 f(a, b, c, d, e)"]
    assert positional_beyond_four("def f(a, b, c, d, *, e=1): pass") == []
    assert positional_beyond_four("class A:\n    def m(self, a, b, c, d): pass") == []
    assert positional_beyond_four("@click.command()\ndef f(a, b, c, d, e): pass", "factory/cli/x.py") == []


def docstring_entries(doc: str) -> dict[str, str]:
    """The module list of a package docstring: entry name (``errors.py``, ``data/``) -> its text (continuation
    lines, more indented, included)."""
    entries: dict[str, str] = {}
    last = None
    for line in doc.splitlines():
        m = re.match(r"^  (\S+)\s+(.*)$", line)
        if m and not line.startswith("   "):
            last = m.group(1)
            entries[last] = m.group(2)
        elif last and line.startswith("   ") and line.strip():
            entries[last] += " " + line.strip()
        else:
            last = None
    return entries


def docstring_problems(doc: str, root: Path) -> list[str]:
    """Modules of the package at `root` that its docstring's module list leaves out."""
    entries = docstring_entries(doc)
    problems = []
    for p in sorted(root.glob("*.py")):
        if p.name != "__init__.py" and p.name not in entries:
            problems.append(f"{p.name} is not listed")
    for d in sorted(x for x in root.iterdir() if (x / "__init__.py").is_file()):
        text = entries.get(f"{d.name}/")
        if text is None:
            problems.append(f"{d.name}/ is not listed")
            continue
        problems += [f"{d.name}/{p.name} is not listed" for p in sorted(d.glob("*.py"))
                     if p.name not in ("__init__.py", "__main__.py") and p.name not in text]
    return problems


def test_trainers_docstring_lists_every_module():
    import trainers

    problems = docstring_problems(trainers.__doc__, ROOT / "trainers")
    assert not problems, "trainers/__init__.py's module list differs from the code:\n" + "\n".join(problems)


def test_the_docstring_check_fails_when_broken():
    import trainers

    assert docstring_problems(trainers.__doc__.replace("samples.py", "sample.py"), ROOT / "trainers") == \
        ["data/samples.py is not listed"]
    assert docstring_problems(trainers.__doc__.replace("  fileio.py ", "  fileio ", 1), ROOT / "trainers") == \
        ["fileio.py is not listed"]


def commands_of(module) -> list[str]:
    import click

    return sorted(v.name for v in vars(module).values() if isinstance(v, click.Command))


def test_cli_dataset_docstring_lists_every_command():
    from factory.cli import dataset

    missing = [c for c in commands_of(dataset) if f"`factory {c}`" not in dataset.__doc__]
    assert commands_of(dataset) and not missing, f"factory/cli/dataset.py's docstring leaves out {missing}"


def library_calls(source: str) -> dict[str, list[str]]:
    """Per click command of a CLI module's `source`: the library functions it calls (names imported from
    factory or trainers outside the CLI), leaving out classes (options and configs: parsing), ``parse_*`` and
    ``format_*`` helpers (parsing, printing) and ``write_json`` (printing to a file)."""
    import ast

    tree = ast.parse(source)
    imported = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                and n.module.split(".")[0] in PACKAGES and ".cli" not in n.module for a in n.names}
    out = {}
    for n in tree.body:
        if isinstance(n, ast.FunctionDef) and any("command" in ast.unparse(d) for d in n.decorator_list):
            calls = {c.func.id for c in ast.walk(n) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)
                     and c.func.id in imported}
            out[n.name] = sorted(c for c in calls if not c[0].isupper()
                                 and not c.startswith(("parse_", "format_")) and c != "write_json")
    return out


# commands that choose one of two library functions by a flag (each path still calls one)
ONE_OF_TWO = {"eval_cmd": {"evaluate_datasets", "evaluate_predictions"}}


def test_cli_commands_call_one_library_function():
    found = []
    for p in sorted((ROOT / "factory" / "cli").glob("*.py")) + sorted((ROOT / "trainers" / "cli").glob("*.py")):
        for cmd, calls in library_calls(p.read_text()).items():
            if len(calls) > 1 and set(calls) != ONE_OF_TWO.get(cmd):
                found.append(f"{p.relative_to(ROOT)}: {cmd} calls {calls}")
    assert not found, "CLI commands that build their results themselves (move it into the library):\n" + \
        "\n".join(found)


def test_the_one_call_check_fails_when_broken():
    src = ("import click\nfrom factory.dataset.verify import verify\nfrom factory.dataset.signing import check_trust\n"
           "@click.command()\ndef v(d):\n    check_trust(d, [])\n    print(verify(d))\n")
    assert library_calls(src) == {"v": ["check_trust", "verify"]}


def test_functions_stay_short_and_models_hold_no_io():
    import ast

    long = [f"{p.relative_to(ROOT)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))
            for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > 90]
    assert not long, "functions over ~80 lines:\n" + "\n".join(long)
    io_words = re.compile(r"^\s*(import (os|io|json|pathlib|fsspec|safetensors)|from (pathlib|fsspec|safetensors|"
                          r"factory\.fsio|trainers\.fileio) )|\bopen\(", re.M)
    for model in ("trainers/model/unet.py", "factory/generators/biggan/model.py"):
        assert not io_words.search((ROOT / model).read_text()), f"{model} holds I/O"
    engine = (ROOT / "factory" / "generate" / "engine.py").read_text()
    assert "torch" not in engine and "nn.Module" not in engine, "the engine holds model code"


def test_tests_readme_maps_every_test_file():
    text = (ROOT / "tests" / "README.md").read_text()
    named = set(re.findall(r"`([\w/]+\.py)`", text))
    files = {str(p.relative_to(ROOT / "tests")) for p in (ROOT / "tests").rglob("test_*.py")}
    assert files - named == set(), f"tests/README.md's table leaves out {sorted(files - named)}"
    assert {n for n in named if n.startswith(("test_", "security/", "reliability/"))} - files == set()


def test_the_contract_is_a_face_and_one_reading_room_reads_tars():
    """factory/format/__init__.py defines nothing (it re-exports its rooms); only factory/format/ imports
    tarfile (the reading room and the tar writer); no module of trainers/data/ is over 400 lines."""
    import ast

    init = ast.parse((ROOT / "factory" / "format" / "__init__.py").read_text())
    defined = [type(n).__name__ for n in init.body
               if not isinstance(n, (ast.ImportFrom, ast.Import)) and not (isinstance(n, ast.Expr) and n is init.body[0])]
    assert not defined, f"factory/format/__init__.py defines {defined}; give it a room"
    tar_users = sorted(str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
                       if re.search(r"^\s*(import tarfile|from tarfile )", p.read_text(), re.M))
    assert all(p.startswith("factory/format/") for p in tar_users), tar_users
    big = [f"{p.name}: {n}" for p in (ROOT / "trainers" / "data").glob("*.py")
           if (n := len(p.read_text().splitlines())) > 400]
    assert not big, big
