"""Teacher masks: `trainers relabel` (maps), `factory relabel` (derived dataset), agreement columns,
`--mask-source`, resume after SIGKILL with the same bytes."""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from helpers import one_thread
from PIL import Image
from scipy import ndimage

from factory import format as fmt
from factory.cli import main as factory_main
from trainers.cli import main as trainers_main

REPO = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _ok(res):
    assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    """A 120-sample shapes dataset (3 shards), a tiny teacher trained on it, its maps and the derived dataset."""
    from factory.generate.config import GenerateConfig
    from factory.generate.engine import generate
    from trainers.train import TrainConfig, train

    root = tmp_path_factory.mktemp("relabel")
    parent = root / "parent"
    generate(GenerateConfig(n=120, out=str(parent), generator="shapes", generator_options={"resolution": 64},
                            shard_size=40, workers=0, progress=False))
    run = root / "teacher"
    with one_thread():
        train(TrainConfig(data=str(parent), out=str(run), steps=30, batch_size=8, width=8, workers=0, seed=0,
                          lr=1e-2, holdout_permille=0, checkpoint_every=0, val_every=0, device="cpu", progress=False))
    maps, derived = root / "maps", root / "derived"
    _ok(CliRunner().invoke(trainers_main, ["relabel", "--model", str(run), "--data", str(parent), "--out", str(maps),
                                           "--device", "cpu", "--batch-size", "16"]))
    _ok(CliRunner().invoke(factory_main, ["relabel", str(parent), "--maps", str(maps), "--out", str(derived)]))
    return {"root": root, "parent": parent, "run": run, "maps": maps, "derived": derived}


def _members(ds: Path) -> dict[str, bytes]:
    """name -> bytes of every tar member of a dataset (stock tarfile)."""
    out = {}
    for tar in sorted((ds / "shards").glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf:
                out[m.name] = tf.extractfile(m).read()
    return out


def _index(ds: Path) -> dict[str, np.ndarray]:
    """The index as column -> numpy array, in row order."""
    t = pq.read_table(ds / "index")
    t = t.take(np.argsort(t.column("row").to_numpy()))
    return {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names if c != "hist"}


def _gray(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "L"
        return np.asarray(im)


def test_derived_dataset_verifies_keeps_bytes_and_lineage(work):
    _ok(CliRunner().invoke(factory_main, ["verify", str(work["derived"])]))
    parent, derived = _members(work["parent"]), _members(work["derived"])
    for name, body in parent.items():
        if not name.endswith(".json"):  # image, mask, latent byte for byte (KEY.json gains parent_* fields)
            assert derived[name] == body, name
    teacher = {n for n in derived if n.endswith(".teacher.png")}
    assert len(teacher) == 120 and set(derived) - set(parent) == teacher
    man = json.loads((work["derived"] / "manifest.json").read_text())
    pman = json.loads((work["parent"] / "manifest.json").read_text())
    prov = man["provenance"]
    assert prov["kind"] == "relabelled" and prov["parent"]["dataset_id"] == pman["dataset_id"]
    weights = hashlib.sha256((work["run"] / "model.safetensors").read_bytes()).hexdigest()
    assert prov["teacher"]["sha256"] == weights
    assert man["members"]["teacher"] == "teacher.png"
    maps = json.loads((work["maps"] / "maps.json").read_text())
    assert maps["parent"]["dataset_id"] == pman["dataset_id"] and maps["teacher"]["sha256"] == weights
    assert "relabelled" in (work["derived"] / "README.md").read_text()
    info = _ok(CliRunner().invoke(factory_main, ["info", str(work["derived"])])).output
    assert f"relabelled   by teacher teacher (sha256 {weights})" in info


def test_stock_webdataset_reads_teacher_masks(work):
    import webdataset as wds

    shard = work["derived"] / "shards" / "000000.tar"
    samples = list(wds.WebDataset([str(shard)], shardshuffle=False))
    assert len(samples) == 40
    t = _gray(samples[0]["teacher.png"])
    assert t.shape == (64, 64) and t.dtype == np.uint8


def test_agreement_columns_match_the_members(work):
    idx = _index(work["derived"])
    members = _members(work["derived"])
    assert {"teacher_iou", "teacher_conf_fg", "teacher_conf_bg", "teacher_fg_ratio", "teacher_components"} <= set(idx)
    for col in ("teacher_iou", "teacher_fg_ratio", "teacher_conf_fg", "teacher_conf_bg"):
        v = idx[col][~np.isnan(idx[col])]
        assert idx[col].dtype == np.float32 and ((v >= 0) & (v <= 1)).all()
    assert idx["teacher_components"].dtype == np.int32 and (idx["teacher_components"] >= 0).all()
    assert len(np.unique(idx["teacher_iou"])) > 1
    for i, key in enumerate(idx["key"]):
        r = {c: v[i] for c, v in idx.items()}
        m = _gray(members[f"{key}.mask.png"]) > 127
        p = _gray(members[f"{key}.teacher.png"]).astype(np.float64) / 255
        t = p >= 0.5
        union = (m | t).sum()
        iou = (m & t).sum() / union if union else 1.0
        assert r["teacher_iou"] == pytest.approx(iou, abs=1e-6)
        assert r["teacher_fg_ratio"] == pytest.approx(t.mean(), abs=1e-6)
        fg = p[m].mean() if m.any() else np.nan  # NaN where the mask (or its complement) is empty
        bg = (1 - p[~m]).mean() if (~m).any() else np.nan
        assert r["teacher_conf_fg"] == pytest.approx(fg, abs=1e-5, nan_ok=True)
        assert r["teacher_conf_bg"] == pytest.approx(bg, abs=1e-5, nan_ok=True)
        assert r["teacher_components"] == ndimage.label(t, structure=np.ones((3, 3)))[1]


def test_filter_on_agreement(work, tmp_path):
    idx = _index(work["derived"])
    seen = np.unique(idx["teacher_iou"][~np.isnan(idx["teacher_iou"])])  # a middle value: some rows on each side
    for thr in (0.5, float(seen[len(seen) // 2])):
        out = tmp_path / f"v{thr}.json"
        _ok(CliRunner().invoke(factory_main, ["filter", str(work["derived"]), "--where", f"teacher_iou >= {thr}",
                                              "--out", str(out)]))
        view = json.loads(out.read_text())
        got = fmt.AcceptedRows(view["accepted"], view["format_version"]).all_rows().tolist()
        want = sorted(idx["row"][idx["teacher_iou"] >= np.float32(thr)].tolist())
        assert got == want
    assert 0 < len(want) < 120


def test_mask_source_trains_and_decodes(work, tmp_path):
    from trainers.data.stream import iter_batches, open_index

    members = _members(work["derived"])
    for source in ("teacher", "intersection"):
        batch = next(iter_batches(open_index(str(work["derived"]), split="all", mask_source=source), 8))
        for r, mask in zip(batch["row"].tolist(), batch["mask"][:, 0].numpy()):
            t = _gray(members[f"{r:010d}.teacher.png"]) >= 128
            m = _gray(members[f"{r:010d}.mask.png"]) > 127
            np.testing.assert_array_equal(mask > 0.5, t if source == "teacher" else t & m)
    run = tmp_path / "round2"
    _ok(CliRunner().invoke(trainers_main, [
        "train", "--data", str(work["derived"]), "--out", str(run), "--mask-source", "teacher", "--steps", "2",
        "--batch-size", "4", "--width", "8", "--workers", "0", "--device", "cpu", "--holdout-permille", "100",
        "--val-max", "4", "--no-progress"]))
    card = json.loads((run / "card.json").read_text())
    assert card["recipe"]["mask_source"] == "teacher" and card["data"]["mask_source"] == "teacher"
    res = CliRunner().invoke(trainers_main, ["train", "--data", str(work["parent"]), "--out", str(tmp_path / "x"),
                                             "--mask-source", "teacher", "--steps", "1", "--device", "cpu"])
    assert res.exit_code == 1 and "has no teacher masks" in res.output and len(res.output.strip().splitlines()) == 1


def test_relabel_of_a_view_and_mismatched_maps(work, view_of, tmp_path):
    view, _ = view_of(work["parent"], tmp_path / "odd.json", lambda r: r % 2 == 1)
    maps, derived = tmp_path / "maps", tmp_path / "derived"
    res = CliRunner().invoke(factory_main, ["relabel", str(view), "--maps", str(work["maps"]), "--out", str(derived)])
    assert res.exit_code == 1 and "make maps of this parent with trainers relabel" in res.output
    _ok(CliRunner().invoke(trainers_main, ["relabel", "--model", str(work["run"]), "--data", str(view), "--out",
                                           str(maps), "--device", "cpu", "--no-progress"]))
    _ok(CliRunner().invoke(factory_main, ["relabel", str(view), "--maps", str(maps), "--out", str(derived)]))
    _ok(CliRunner().invoke(factory_main, ["verify", str(derived)]))
    idx = _index(derived)
    assert idx["parent_row"].tolist() == list(range(1, 120, 2))
    parent, got = _members(work["parent"]), _members(derived)
    full = _index(work["derived"])
    for key, prow, iou in zip(idx["key"], idx["parent_row"], idx["teacher_iou"]):
        assert got[f"{key}.png"] == parent[f"{int(prow):010d}.png"]
        # the same teacher on the same image, in other batches: equal up to a pixel at the 0.5 boundary
        assert iou == pytest.approx(full["teacher_iou"][int(prow)], abs=0.02)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_relabel_resumes_after_sigkill_with_the_same_bytes(work, tmp_path):
    ref, maps = tmp_path / "ref", tmp_path / "maps"
    _ok(CliRunner().invoke(trainers_main, ["relabel", "--model", str(work["run"]), "--data", str(work["parent"]),
                                           "--out", str(ref), "--device", "cpu", "--batch-size", "1"]))
    cmd = [sys.executable, "-m", "trainers.cli", "relabel", "--model", str(work["run"]), "--data",
           str(work["parent"]), "--out", str(maps), "--device", "cpu", "--batch-size", "1", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (maps / "parts" / "000000.json").exists():
            assert proc.poll() is None, "relabel ended before its first part"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (maps / "maps.json").exists()  # killed mid-run
    _ok(CliRunner().invoke(trainers_main, ["relabel", "--model", str(work["run"]), "--data", str(work["parent"]),
                                           "--out", str(maps), "--device", "cpu", "--batch-size", "1"]))
    assert _files(maps) == _files(ref)
    res = CliRunner().invoke(trainers_main, ["relabel", "--model", str(work["run"]), "--data", str(work["parent"]),
                                             "--out", str(maps), "--device", "cpu", "--batch-size", "2"])
    assert res.exit_code == 1 and "choose another --out" in res.output
    # the derived dataset resumes too: drop its last shard and rerun
    derived = tmp_path / "derived"
    _ok(CliRunner().invoke(factory_main, ["relabel", str(work["parent"]), "--maps", str(maps), "--out", str(derived)]))
    before = _files(derived)
    for name in ("done/000002.json", "shards/000002.tar", "manifest.json"):
        (derived / name).unlink()
    res = _ok(CliRunner().invoke(factory_main, ["relabel", str(work["parent"]), "--maps", str(maps), "--out",
                                                str(derived)]))
    assert "resuming, 2 of 3" in res.output
    assert _files(derived) == before


def test_one_relabel_writer_per_folder(work, tmp_path):
    """A folder another live process is relabelling into is refused in one line; a lock left by a
    dead process is taken over."""
    import socket

    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / ".lock").write_text(f"{socket.gethostname()} {os.getpid()}")  # alive: this test process
    args = ["relabel", "--model", str(work["run"]), "--data", str(work["parent"]), "--out", str(maps),
            "--device", "cpu", "--batch-size", "16"]
    res = CliRunner().invoke(trainers_main, args)
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "being written by another trainers relabel" in res.output
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (maps / ".lock").write_text(f"{socket.gethostname()} {dead.stdout.strip()}")
    _ok(CliRunner().invoke(trainers_main, args))
    assert (maps / "maps.json").exists() and not (maps / ".lock").exists()


def test_public_api_reads_teacher_maps(work):
    import factory

    ds = factory.open(str(work["derived"]))
    members = _members(work["derived"])
    key = ds.keys()[7]
    s = ds.sample(key)
    teacher = _gray(members[f"{key}.teacher.png"])
    assert s["teacher"].dtype == np.float32 and np.array_equal(s["teacher"], teacher.astype(np.float32) / 255)
    assert np.array_equal(s["mask"], _gray(members[f"{key}.mask.png"]) > 127)
    data = ds.torch(split="all", mask_source="teacher", access="random")
    _, mask = data[7]
    assert np.array_equal(mask[0].numpy() > 0.5, teacher >= 128)
