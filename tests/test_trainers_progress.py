"""What `trainers` prints while it works (trainers/progress.py): the start-up line, progress lines off a
terminal with an ETA that follows the recent rate, the CPU warning, the default loader workers, the
progress flags in `train --help`, and the rate lines of eval / predict / relabel counters."""
from __future__ import annotations

import json
import os
import warnings

import pytest
import torch
from click.testing import CliRunner

import trainers.progress
import trainers.train
from trainers.cli import main
from trainers.model.unet import ModelConfig, UNet
from trainers.progress import (
    CPU_RUN_FLAGS,
    MAX_DEFAULT_WORKERS,
    Progress,
    available_cpus,
    cpu_advice,
    default_workers,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _train_args(small_dataset, out, *extra):
    return ["train", "--data", str(small_dataset), "--out", str(out), "--steps", "5", "--batch-size", "4",
            "--width", "8", "--holdout-permille", "100", "--val-max", "4", "--device", "cpu",
            "--shuffle-window", "20", *extra]


# ----------------------------------------------------------------------------- 12: --help


def test_train_help_shows_one_percent_sign():
    res = CliRunner().invoke(main, ["train", "--help"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # click wraps the help text
    assert "int(sha256(key),16) % 1000 < this" in text and "%%" not in text
    assert "--progress-every SECONDS" in text and "CPUs per rank, max 8" in text


# ----------------------------------------------------------------------------- 13: loader workers


@pytest.mark.parametrize("cpus, ranks, want", [(2, 1, 2), (1, 1, 1), (16, 1, MAX_DEFAULT_WORKERS),
                                               (16, 8, 2), (2, 4, 0)])
def test_default_workers_follow_the_machine(monkeypatch, cpus, ranks, want):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    assert available_cpus() == cpus
    assert default_workers(ranks) == want


def test_default_workers_never_make_torch_warn():
    loader = torch.utils.data.DataLoader(list(range(4)), num_workers=default_workers())
    assert default_workers() <= available_cpus()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "suggested max number of worker" is a UserWarning
        loader.check_worker_number_rationality()


# ----------------------------------------------------------------------------- 10: start-up and progress


def test_train_cli_startup_line_and_progress_lines_off_a_terminal(small_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)  # a 1-CPU machine: 1 worker
    res = CliRunner().invoke(main, _train_args(small_dataset, tmp_path / "run", "--progress-every", "0"))
    assert res.exit_code == 0, res.output
    err = res.stderr
    first = err.splitlines()[0]
    assert first.startswith("train: device cpu") and "1 rank x batch 4 = 4 samples/step" in first
    assert "U-Net width 8" in first and "1 loader worker per rank (auto: 1 CPU;" in first and "5 steps" in first
    lines = [ln for ln in err.splitlines() if ln.startswith("train: step ")]
    assert len(lines) == 5 and lines[-1].startswith("train: step 5/5 ")  # --progress-every 0: every step
    assert all(" s/step " in ln and " ETA " in ln and " loss " in ln for ln in lines)
    assert "\r" not in err and "warning" not in err  # plain lines, no bar; a tiny run gets no CPU warning
    assert json.loads((tmp_path / "run" / "card.json").read_text())["training"]["history"][0]["workers"] == 1


def test_progress_lines_every_n_seconds_not_every_step(capsys):
    p = Progress(total=10, initial=0, global_batch=4, every=3600, tty=False)
    for _ in range(10):
        p.update(0.5)
    p.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("train: step 3/10 ")  # first report after 3 steps, then 1 h


def test_eta_follows_the_recent_rate(capsys, monkeypatch):
    """After a slow start (a busy machine), the ETA is made from the steps since the last line."""
    clock = iter([0.0] + [1.0 + 10.0 * i for i in range(10)] + [101.0 + i for i in range(10)])
    monkeypatch.setattr(trainers.progress.time, "perf_counter", lambda: next(clock))
    p = Progress(total=100, initial=0, global_batch=4, every=5, tty=False)
    for _ in range(20):
        p.update(0.5)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("train: step 2/100  10 s/step"), lines
    # steps 11-16 took 1 s each (the average since the start would say 7 s/step, ETA 9.8 min)
    assert lines[-1].startswith("train: step 16/100  1 s/step") and "ETA 84 s" in lines[-1], lines


def test_cpu_warning_for_the_papers_settings(small_dataset, tmp_path, monkeypatch):
    # pretend one forward pass takes 100 s (the paper's batch 95 / width 64 takes minutes per step on a CPU)
    monkeypatch.setattr(trainers.train, "time_forward", lambda net, device, resolution: 100.0)
    res = CliRunner().invoke(main, _train_args(small_dataset, tmp_path / "run", "--workers", "0", "--no-progress"))
    assert res.exit_code == 0, res.output
    warn = [ln for ln in res.stderr.splitlines() if "warning" in ln]
    assert len(warn) == 1 and "20.0 min per step" in warn[0] and "5 steps about 1.7 h" in warn[0]
    assert CPU_RUN_FLAGS in warn[0]


def test_cpu_advice_only_for_long_runs():
    paper = cpu_advice(sec_per_step=75.0, steps_left=12_000, batch_size=95, width=64)
    assert "batch 95 at width 64" in paper and "10.4 days" in paper and "--batch-size 8 --width 16" in paper
    assert cpu_advice(sec_per_step=0.3, steps_left=2_000, batch_size=8, width=16) is None


def test_time_forward_changes_nothing():
    torch.manual_seed(0)
    net = UNet(ModelConfig(width=8)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    assert trainers.train.time_forward(net, device=torch.device("cpu"), resolution=32) > 0
    assert net.training and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_rate_lines_for_piped_counters(capsys, monkeypatch):
    """eval / predict / relabel counters: piped, whole lines with done/total, rate and ETA."""
    from trainers.progress import RateLine, count_bar

    clock = iter([0.0, 5.0, 10.0, 12.0, 13.0])
    monkeypatch.setattr(trainers.progress.time, "perf_counter", lambda: next(clock))
    line = RateLine(40, what="eval", unit="img", every=10)
    line.update(10)  # t = 5: not yet due
    line.update(10)  # t = 10: 20 img in 10 s
    line.close()     # t = 12: the final line
    err = capsys.readouterr().err.splitlines()
    assert err == ["eval: 20/40 img (50%), 2.0 img/s, ETA 10 s", "eval: 20/40 img (50%), 1.7 img/s, ETA 12 s"]
    assert isinstance(count_bar(3, what="eval", unit="img"), RateLine)  # capsys: stderr is not a terminal
