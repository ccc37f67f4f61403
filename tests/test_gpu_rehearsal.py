"""The GPU benchmark's one command, rehearsed on the CPU (benchmarks/gpu/run.sh, REHEARSAL=1).

A moved module, a renamed flag or a wheel missing from benchmarks/gpu/wheels.txt fails here rather
than on the lent GPU machine, whose lease has room for one run.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = ["wheels", "e2e", "trace", "parity", "generate", "verify", "encode", "masks", "tests",
         "repeat", "directions", "generator"]
CUDA_ONLY = {"tests", "directions", "generator"}


def test_rehearsal_runs_every_step_without_failure(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, REHEARSAL="1", OUT=str(out), BUDGET="900", CUDA_VISIBLE_DEVICES="",
               FACTORY_HOME=str(tmp_path / "home"), WHEELS=str(tmp_path / "no-wheels"))
    run = subprocess.run(["bash", str(ROOT / "benchmarks/gpu/run.sh")], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=900, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = (out / "summary.txt").read_text().splitlines()
    status = {line.split()[0]: line.split(None, 1)[1] for line in lines}
    assert list(status) == STEPS, lines
    for name in STEPS:
        if name in CUDA_ONLY:
            assert status[name] == "skipped: no CUDA", (name, status[name], run.stdout[-3000:])
        else:
            assert status[name].startswith("ran "), (name, status[name], run.stdout[-3000:])
    assert "0 missing" in status["wheels"]
    assert "candidates/s" in status["e2e"]
    assert "PASS" in status["verify"]
    assert "identical" in status["repeat"]
    assert (out / "trace" / "trace.json.gz").is_file()
    assert (out / "ds" / "manifest.json").is_file()
