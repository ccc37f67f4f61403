"""Regeneration cannot be dodged (issue 38, item 2): a fresh seed by default, printed; draws spread over
every shard; `--shard` and `--regenerate all`; what a run can and cannot exclude, printed and true."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import cli, swap_shard

from factory.generate.regenerate import miss_probability, pick_rows

GEN = ["generate", "--generator", "shapes", "--resolution", "32", "--n", "40", "--shard-size", "10", "--workers", "0",
       "--quiet"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("forgery")
    for seed in (0, 1):
        assert cli(*GEN, "--seed", seed, "--out", base / f"seed{seed}").exit_code == 0
    return base / "seed0", base / "seed1"


@pytest.fixture()
def swapped(pair, tmp_path) -> Path:
    """Shard 1's rows taken from another seed's dataset, every hash and id recomputed as the writer does."""
    ds = tmp_path / "swapped"
    shutil.copytree(pair[0], ds)
    swap_shard(ds, pair[1], 1)
    return ds


def test_whole_shard_swap_fails_every_default_run(swapped):
    assert cli("verify", swapped).output.startswith("OK")  # every hash and id is self-consistent
    seeds = []
    for _ in range(3):
        r = cli("verify", swapped, "--regenerate", 8)
        assert r.exit_code == 1 and r.output.startswith("FAIL"), r.output
        assert "latents are not the spec's" in r.output
        seeds.append(int(re.search(r"--seed (\d+)", r.output).group(1)))
        assert "coverage: every shard checked" in r.output
    assert len(set(seeds)) == 3  # a fresh seed each run, printed so that it can be repeated
    again = cli("verify", swapped, "--regenerate", 8, "--seed", seeds[0])
    assert f"--seed {seeds[0]})" in again.output and again.exit_code == 1


def test_chosen_shards_and_all(swapped):
    r = cli("verify", swapped, "--regenerate", "all", "--shard", 0, "--shard", 2)
    assert r.exit_code == 0 and r.output.startswith("PASS") and ": 20 samples" in r.output, r.output
    assert "every sample of 2 shard(s) checked (only shard(s) 0, 2 of 4)" in r.output
    r = cli("verify", swapped, "--regenerate", 1, "--shard", 1)
    assert r.exit_code == 1 and "latents are not the spec's" in r.output
    r = cli("verify", swapped, "--regenerate", 1, "--shard", 9)
    assert r.exit_code == 1 and r.output.strip().splitlines() == [
        "Error: --shard 9: the dataset has no such shard with samples (shards 0..3)"]
    assert "neither a positive number" in cli("verify", swapped, "--regenerate", "some").output


def test_draws_cover_every_shard_and_the_printed_odds_hold():
    """Every shard gets a draw once N reaches the shard count, whatever the seed; the miss probability the
    coverage line prints is what fresh seeds give (a forgery of k rows in one shard, 2,000 seeds)."""
    entries = [{"shard": k, "first_row": 10 * k, "samples": 10} for k in range(4)]
    for seed in range(200):
        rows = pick_rows(entries, 8, seed)
        assert len(rows) == len(set(rows)) == 8
        assert {r // 10 for r in rows} == {0, 1, 2, 3}
        assert sorted({r // 10 for r in pick_rows(entries, 3, seed)}).__len__() == 3
    forged = {12, 15, 17}  # 3 rows of shard 1
    missed = np.mean([not forged & set(pick_rows(entries, 6, seed)) for seed in range(2000)])
    assert abs(missed - miss_probability(entries, 6, 3)) < 0.03
    assert miss_probability(entries, 8, 10) == 0.0 and miss_probability(entries, 2, 10) == pytest.approx(0.5)
    assert miss_probability(entries, None, 1) == 0.0
