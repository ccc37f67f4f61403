"""docs/examples/: each example runs on a small view for a few steps and prints what it did."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import factory

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "docs" / "examples"


@pytest.fixture(scope="module")
def view(small_dataset, tmp_path_factory) -> tuple[str, int]:
    path = str(tmp_path_factory.mktemp("examples") / "view.json")
    v = factory.open(str(small_dataset)).filter(max_fg=0.5)
    v.save(path)
    return path, len(v)


def run_example(name: str, *args, tmp_path: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HOME=str(tmp_path / "hf"),
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    res = subprocess.run([sys.executable, str(EXAMPLES / name), *map(str, args)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout


def test_lightning_datamodule(view, tmp_path):
    out = run_example("lightning_datamodule.py", "--data", view[0], "--steps", "3", "--batch-size", "4",
                      tmp_path=tmp_path)
    assert "trained 3 steps on " in out and "hold-out" in out


def test_hf_datasets(view, tmp_path):
    out = run_example("hf_datasets.py", "--data", view[0], "--cache-dir", tmp_path / "cache", tmp_path=tmp_path)
    assert out.startswith(f"{view[1]} samples of {view[0]} in a Hugging Face dataset")
    assert "image (64, 64), mask (64, 64)" in out


def test_wids_view(view, tmp_path):
    out = run_example("wids_view.py", "--data", view[0], "--steps", "2", "--batch-size", "4", tmp_path=tmp_path)
    assert f"wids: {view[1]} samples of {view[0]} from 60 in 3 shards" in out and "trained 2 steps" in out


def smp_importable() -> bool:
    if importlib.util.find_spec("segmentation_models_pytorch") is None:
        return False
    try:
        import segmentation_models_pytorch  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not smp_importable(), reason="segmentation-models-pytorch is not installed: it needs torchvision "
                    "(timm imports it), which the test environment does not install (torch stays 2.13.0); "
                    "docs/python.md gives the venv in which this test runs")
def test_train_smp(view, tmp_path):
    out = run_example("train_smp.py", "--data", view[0], "--steps", "2", "--batch-size", "4", tmp_path=tmp_path)
    assert "trained smp.Unet(resnet18) 2 steps" in out
