"""trainers.train: exact stop-and-resume, loss goes down, the CLI's run folder, 2-rank gloo DDP."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from trainers.data.stream import LoaderState, open_index, plan_epoch
from trainers.train import TrainConfig, TrainError, train

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: tiny convolutions on a busy 2-core machine are faster without OpenMP contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)



def _cfg(small_dataset, out, **kw) -> TrainConfig:
    base = dict(data=str(small_dataset), out=str(out), steps=8, batch_size=4, width=8, workers=0, seed=1,
                holdout_permille=100, val_max=8, checkpoint_every=3, val_every=0, device="cpu", progress=False,
                shuffle_window=20)
    base.update(kw)
    return TrainConfig(**base)


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "model.safetensors")


class _Kill(Exception):
    pass


def test_stop_and_resume_is_bit_identical(small_dataset, tmp_path):
    ref = tmp_path / "ref"
    train(_cfg(small_dataset, ref))

    run = tmp_path / "run"

    def kill_at_5(step, batch, loss):
        if step == 5:
            raise _Kill()

    with pytest.raises(_Kill):
        train(_cfg(small_dataset, run), hook=kill_at_5)
    state = json.loads((run / "checkpoints" / "step-00000003" / "state.json").read_text())
    assert state["step"] == 3 and state["loader"] == {"seed": 1, "epoch": 0, "consumed": 12}
    with pytest.raises(TrainError, match="--resume"):
        train(_cfg(small_dataset, run))
    # resume with 2 loader workers: the batches (hence the weights) do not depend on the worker count
    train(_cfg(small_dataset, run, resume=True, workers=2))
    # compare tensors, not file bytes: the header's metadata order of safetensors files is not stable
    a, b = _weights(run), _weights(ref)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    card = json.loads((run / "card.json").read_text())
    assert card["training"]["steps"] == 8
    assert [h["start_step"] for h in card["training"]["history"]] == [0, 3]
    with pytest.raises(TrainError, match="different recipe"):
        train(_cfg(small_dataset, run, resume=True, steps=10, lr=0.5))


def test_training_decreases_the_loss(small_dataset, tmp_path):
    losses = []
    train(_cfg(small_dataset, tmp_path / "run", steps=14, lr=3e-3, checkpoint_every=0, batch_size=8),
          hook=lambda step, batch, loss: losses.append(loss))
    assert len(losses) == 14
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.02, losses


def test_train_cli_writes_model_and_card(small_dataset, tmp_path):
    from trainers.cli import main
    from trainers.model.checkpoint import load_model

    out = tmp_path / "cli-run"
    args = ["train", "--data", str(small_dataset), "--out", str(out), "--steps", "2", "--batch-size", "4",
            "--width", "8", "--workers", "0", "--holdout-permille", "100", "--device", "cpu", "--no-progress"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    for name in ("model.safetensors", "model.json", "card.json"):
        assert (out / name).is_file()
    model = load_model(out)
    assert model.config.width == 8 and model.extra["step"] == 2
    card = json.loads((out / "card.json").read_text())
    manifest = json.loads((small_dataset / "manifest.json").read_text())
    assert card["data"]["dataset_id"] == manifest["dataset_id"] and card["data"]["view_id"] is None
    assert card["data"]["holdout"]["rule"] == "int(sha256(key).hexdigest(), 16) % 1000 < 100"
    assert card["recipe"]["lr"] == 1e-3 and card["recipe"]["lr_step"] == 8000
    assert set(card["validation"]["metrics"]) >= {"bce", "IoU", "accuracy"}
    assert card["code"]["trainers"]
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "already holds a run; pass --resume" in again.output


def test_cli_prints_a_bad_manifest_as_one_line(tmp_path):
    from trainers.cli import main

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text("{")
    res = CliRunner().invoke(main, ["train", "--data", str(bad), "--out", str(tmp_path / "run"), "--steps", "1"])
    assert res.exit_code == 1, res.output
    assert res.output.startswith("Error: manifest ") and "not valid JSON" in res.output
    assert res.output.count("\n") == 1 and "Traceback" not in res.output


def test_the_group_prints_every_factory_error_as_one_line():
    """The one error wrapper: any FactoryError (FormatError, TrainersError, ...) raised by a subcommand."""
    import click

    from factory.format import FormatError
    from trainers.cli import TrainersGroup

    @click.group(cls=TrainersGroup)
    def group():
        pass

    @group.command()
    def broken():
        raise FormatError("shard 000003.tar is not in the manifest; rerun factory verify")

    res = CliRunner().invoke(group, ["broken"])
    assert res.exit_code == 1 and res.output == "Error: shard 000003.tar is not in the manifest; rerun factory verify\n"


def test_two_rank_gloo_ddp(small_dataset, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "trainers.cli", "train", "--data", str(small_dataset), "--out", str(out), "--steps", "3",
           "--batch-size", "4", "--width", "8", "--workers", "0", "--seed", "2", "--holdout-permille", "0",
           "--shuffle-window", "20", "--device", "cpu", "--no-progress", "--checkpoint-every", "0", "--audit"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    a = [json.loads((out / "audit" / f"rank-{r}.json").read_text()) for r in range(2)]
    assert [x["world_size"] for x in a] == [2, 2]
    assert len(a[0]["rows"]) == len(a[1]["rows"]) == 3
    r0 = {x for b in a[0]["rows"] for x in b}
    r1 = {x for b in a[1]["rows"] for x in b}
    assert len(r0) == len(r1) == 12 and r0.isdisjoint(r1)
    idx = open_index(str(small_dataset), split="train", holdout_permille=0)
    plan = plan_epoch(idx, LoaderState(2, 0, 0), world_size=2, batch_size=4, workers=1, shuffle_window=20)
    assert a[0]["rows"] == [b.tolist() for b in plan[0][0][:3]]
    assert a[1]["rows"] == [b.tolist() for b in plan[1][0][:3]]
    assert a[0]["state_sha256"] == a[1]["state_sha256"]  # identical final weights on both ranks
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["world_size"] == 2 and card["training"]["global_batch"] == 8
