"""docs/cli.md is every command's `--help` as scripts/cli_reference.py prints it: a stale reference fails."""
from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REGENERATE = "python scripts/cli_reference.py > docs/cli.md"


def test_cli_reference_is_current(monkeypatch):
    """Generated in a narrow terminal (COLUMNS=40): the fixed width makes the bytes the same everywhere. The
    script's `reference()` is what it prints, called in this process (the commands are imported already)."""
    monkeypatch.setenv("COLUMNS", "40")
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "scripts" / "cli_reference.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    printed = script.reference()
    doc = (ROOT / "docs" / "cli.md").read_text()
    if doc != printed:
        diff = "".join(difflib.unified_diff(doc.splitlines(True), printed.splitlines(True),
                                            "docs/cli.md", "--help now", n=1))
        pytest.fail(f"docs/cli.md is stale; regenerate it with: {REGENERATE}\n{diff[:4000]}", pytrace=False)
    assert "## factory generate\n" in doc and "## trainers train\n" in doc
