"""docs/security.md: every property it states names a test in tests/security/ that exists."""
from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).parent
DOC = HERE.parent.parent / "docs" / "security.md"
REF = re.compile(r"`([a-z0-9_]+\.py)::(test_[A-Za-z0-9_]+)`")


def test_every_stated_property_names_an_existing_test():
    lines: list[str] = []  # one per bullet, its indented continuation lines joined
    for ln in DOC.read_text().splitlines():
        if ln.startswith("- "):
            lines.append(ln)
        elif ln.startswith("  ") and lines and ln.strip():
            lines[-1] += " " + ln.strip()
    assert lines, "docs/security.md states no property"
    missing = []
    for ln in lines:
        refs = REF.findall(ln)
        if not refs:
            missing.append(f"names no test: {ln}")
        for file, test in refs:
            path = HERE / file
            if not path.exists() or not re.search(rf"^def {test}\(", path.read_text(), re.M):
                missing.append(f"{file}::{test} does not exist")
    assert not missing, "\n".join(missing)
