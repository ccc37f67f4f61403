"""Smoke test of benchmarks/ablation.py (the paper's Table 4 on the shapes world) at a tiny size.

Runs the whole chain once (2 exports, 2 generates, 5 filters, 5 trainings of 3
steps, 5 evaluations on 10 images) in a subprocess with one torch thread
(9 s at load average ~3 and 37 s at 6.6 on the shared 2-core box; about
8 s of CPU time), and checks the shape of the JSON, not the numbers.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "ablation.py"
NAMES = ["Base", "+embeddings", "+size", "+histogram", "+CC"]


def test_ablation_smoke(tmp_path):
    out_json = tmp_path / "ablation.json"
    cmd = [sys.executable, str(SCRIPT), "--resolution", "64", "--n", "60", "--steps", "3", "--width", "4",
           "--batch", "8", "--test-n", "10", "--train-emb-n", "50", "--workers", "0", "--device", "cpu",
           "--out", str(tmp_path / "abl"), "--json", str(out_json)]
    # one intra-op thread: the tensors are tiny, and on a busy shared CPU a second spinning thread
    # made this test 4x slower (2 min 16 s vs 37 s wall at load average 6.6 on 2 cores)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    res = json.loads(out_json.read_text())
    rows = res["rows"]
    assert [row["name"] for row in rows] == NAMES
    for row in rows:
        for k in ("maxF", "IoU", "accuracy", "train_mask_iou"):
            v = row[k]
            assert isinstance(v, float) and math.isfinite(v) and 0.0 <= v <= 1.0, (row["name"], k, v)
        assert row["n_test_images"] == 10
        assert 8 <= row["train_samples"] <= row["view_samples"] <= row["candidates"] == 60
    # rows 2 -> 4 only add filters to the same emb dataset
    counts = [row["train_samples"] for row in rows]
    assert counts[1] >= counts[2] >= counts[3], counts
    assert [row["dataset"] for row in rows] == ["base", "emb", "emb", "emb", "emb"]
    assert [row["mask"] for row in rows] == ["raw", "raw", "raw", "raw", "clean"]
    assert rows[0]["predicate"] == rows[1]["predicate"] == "true"
    assert rows[4]["train_mask_iou_column"] == "true_iou" and rows[3]["train_mask_iou_column"] == "true_iou_raw"
    # the commands are replayable and the markdown table exists
    commands = (tmp_path / "abl" / "commands.sh").read_text()
    assert commands.count("trainers train") == 5 and commands.count("trainers eval") == 5
    assert "--embeddings" in commands and "--z-noise 0.0" in commands
    table = (tmp_path / "abl" / "ablation.md").read_text()
    assert all(f"| {name} |" in table for name in NAMES)
