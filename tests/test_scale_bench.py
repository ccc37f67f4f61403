"""Smoke test of benchmarks/scale_bench.py at 3,000 rows (3 shards, one index part): the skeleton builds, every
measured command runs, and `factory filter` accepts exactly the rows duckdb's query selects on the same
Parquet files (the baseline must answer the same question)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_scale_bench_smoke(tmp_path):
    pytest.importorskip("duckdb", reason="the scale benchmark's baseline: pip install -e '.[bench]'")
    out = tmp_path / "scale.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "scale_bench.py"), "--sizes", "3000",
                        "--root", str(tmp_path / "skel"), "--repeats", "1", "--json", str(out)], cwd=REPO, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())["3000"]
    accepted = int(re.search(r"([\d,]+) of 3,000 accepted", res["filter"]["stdout"]).group(1).replace(",", ""))
    assert 0 < accepted < 3000 and accepted == int(res["duckdb_filter"]["stdout"]), res["filter"]["stdout"]
    assert int(res["duckdb_verify"]["stdout"]) == 3000
    assert res["verify_index"]["stdout"].startswith("OK ")
    for access in ("stream", "random"):
        assert "first batch (32, 3, 32, 32)" in res[f"first_batch_{access}"]["stdout"]
    for k, v in res.items():
        assert k == "view_bytes" or (v["wall_s"] > 0 and v["peak_mb"] > 0), k
    assert 0 < res["view_bytes"] < 3000
    assert "| factory filter |" in r.stdout
    m = json.loads((tmp_path / "skel" / "3000" / "manifest.json").read_text())
    assert m["format_version"] == 4 and m["index"]["parts"][0]["path"] == "index/000000-000002.parquet"
    assert "shards" not in m and m["shard_table"]["rows"] == 3  # the factory's own manifest writer: format 4
