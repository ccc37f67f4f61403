"""docs/cli.md is every command's `--help` as scripts/cli_reference.py prints it: a stale reference fails."""
from __future__ import annotations

import difflib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REGENERATE = "python scripts/cli_reference.py > docs/cli.md"


def test_cli_reference_is_current():
    """Generated in a narrow terminal (COLUMNS=40): the fixed width makes the bytes the same everywhere."""
    env = dict(os.environ, COLUMNS="40", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "scripts/cli_reference.py"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = (ROOT / "docs" / "cli.md").read_text()
    if doc != out.stdout:
        diff = "".join(difflib.unified_diff(doc.splitlines(True), out.stdout.splitlines(True),
                                            "docs/cli.md", "--help now", n=1))
        pytest.fail(f"docs/cli.md is stale; regenerate it with: {REGENERATE}\n{diff[:4000]}", pytrace=False)
    assert "## factory generate\n" in doc and "## trainers train\n" in doc
