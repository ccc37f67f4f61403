"""Benchmark layouts (fake trees), evaluation on real PASCAL-S files, and the `trainers` CLI."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from trainers.cli import main
from trainers.eval.evaluate import evaluate_model, network_input_size
from trainers.eval.layouts import (
    BenchmarkError,
    discover,
    flowers_foreground,
    open_benchmark,
    parse_dataset_spec,
)
from trainers.eval.metrics import pysod_available
from trainers.model.checkpoint import save_model
from trainers.model.unet import ModelConfig, UNet

PAPER = ("maxF", "IoU", "accuracy", "MAE")


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def run8(tmp_path_factory):
    torch.manual_seed(0)
    return save_model(tmp_path_factory.mktemp("run") / "unet-w8", UNet(ModelConfig(width=8)), extra={"test": 1})


def _img(path: Path, w: int, h: int, seed: int = 0, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)
    Image.fromarray(arr).save(path, format=fmt)


def _mask(path: Path, arr: np.ndarray, mode: str = "L", fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8), mode=mode).save(path, format=fmt)


def _stem_mask(w: int, h: int, code: int) -> np.ndarray:
    """A mask whose foreground count identifies the stem: the first `code` pixels of row 0."""
    m = np.zeros((h, w), np.uint8)
    m.flat[:code] = 255
    return m


def make_ecssd(root: Path) -> dict[str, tuple[int, int, int]]:
    want = {"0003": (30, 20, 3), "0001": (21, 33, 1), "0002": (25, 25, 2)}  # stem -> (w, h, fg count)
    for i, (stem, (w, h, code)) in enumerate(want.items()):
        _img(root / "images" / f"{stem}.jpg", w, h, seed=i)
        _mask(root / "ground_truth_mask" / f"{stem}.png", _stem_mask(w, h, code))
    _mask(root / "ground_truth_mask" / "9999.png", _stem_mask(5, 5, 1))  # mask without image: ignored
    return want


def _check_stems(ds, want):
    got = {s.stem: s for s in ds}
    assert set(got) == set(want)
    for stem, (w, h, code) in want.items():
        assert got[stem].image.mode == "RGB" and got[stem].image.size == (w, h)
        assert got[stem].gt.dtype == bool and got[stem].gt.shape == (h, w)
        assert int(got[stem].gt.sum()) == code, stem


def test_ecssd_matches_by_stem(tmp_path):
    want = make_ecssd(tmp_path / "ECSSD")
    ds = open_benchmark("ecssd", tmp_path / "ECSSD")
    assert ds.name == "ECSSD" and len(ds) == 3
    _check_stems(ds, want)
    (tmp_path / "ECSSD" / "ground_truth_mask" / "0002.png").unlink()
    with pytest.raises(BenchmarkError, match=r"no mask for image '0002\.jpg'"):
        open_benchmark("ecssd", tmp_path / "ECSSD")


def make_duts(root: Path) -> dict:
    want = {"ILSVRC_b": (20, 30, 4), "ILSVRC_a": (31, 17, 2)}
    for i, (stem, (w, h, code)) in enumerate(want.items()):
        _img(root / "DUTS-TE" / "DUTS-TE-Image" / f"{stem}.jpg", w, h, seed=i)
        _mask(root / "DUTS-TE" / "DUTS-TE-Mask" / f"{stem}.png", _stem_mask(w, h, code))
    return want


def test_duts_te_with_or_without_parent(tmp_path):
    want = make_duts(tmp_path / "DUTS")
    _check_stems(open_benchmark("duts-te", tmp_path / "DUTS"), want)
    _check_stems(open_benchmark("duts-te", tmp_path / "DUTS" / "DUTS-TE"), want)


def make_omron(root: Path, nested: bool = True) -> dict:
    want = {"sun_b": (22, 18, 5), "im005": (18, 22, 1)}
    masks = root / "DUT-OMRON-gt-pixelwise.zip" / "pixelwiseGT-new-PNG" if nested else root / "pixelwiseGT-new-PNG"
    for i, (stem, (w, h, code)) in enumerate(want.items()):
        _img(root / "DUT-OMRON-image" / f"{stem}.jpg", w, h, seed=i)
        _mask(masks / f"{stem}.png", _stem_mask(w, h, code))
    return want


def test_dut_omron_nested_masks(tmp_path):
    for name, nested in (("a", True), ("b", False)):
        want = make_omron(tmp_path / name, nested=nested)
        _check_stems(open_benchmark("dut-omron", tmp_path / name), want)


def make_cub(root: Path) -> set[str]:
    """CUB_200_2011 with 5 images, ReDO split file beside images.txt, segmentations beside the folder."""
    base = root / "CUB_200_2011"
    entries = [(1, "001.Black_footed_Albatross/Black_Footed_Albatross_0001_1.jpg", "0"),
               (2, "001.Black_footed_Albatross/Black_Footed_Albatross_0002_2.jpg", "2"),
               (3, "002.Laysan_Albatross/Laysan_Albatross_0003_3.jpg", "1"),
               (10, "002.Laysan_Albatross/Laysan_Albatross_0010_10.jpg", "2"),
               (4, "003.Sooty_Albatross/Sooty_Albatross_0004_4.jpg", "0")]
    lines, split = [], []
    for i, (image_id, rel, s) in enumerate(entries):
        _img(base / "images" / rel, 60, 40, seed=i)
        soft = np.zeros((40, 60), np.uint8)
        soft[:, :10] = 255  # a strip the central crop removes
        soft[10:30, 20:40] = 200  # kept, and > 127
        soft[0:5, 25:35] = 127  # soft value just below the cut: background
        _mask(root / "segmentations" / Path(rel).with_suffix(".png"), soft)
        lines.append(f"{image_id} {rel}")
        split.append(f"{image_id} {s}")
    (base / "images.txt").write_text("\n".join(lines) + "\n")
    (base / "train_val_test_split.txt").write_text("\n".join(reversed(split)) + "\n")  # matched by id
    (base / "classes.txt").write_text("1 001.Black_footed_Albatross\n")
    return {"Black_Footed_Albatross_0002_2", "Laysan_Albatross_0010_10"}


def test_cub_test_split_and_center_crop(tmp_path):
    want = make_cub(tmp_path)
    for root in (tmp_path, tmp_path / "CUB_200_2011"):
        ds = open_benchmark("cub", root)
        samples = list(ds)
        assert {s.stem for s in samples} == want
        for s in samples:
            assert s.image.size == (128, 128) and s.gt.shape == (128, 128)
            # crop x in [10, 50): the strip is gone; the 20x20 box (x 20..40, y 10..30) scales by 3.2
            assert not s.gt[:, :5].any()
            assert s.gt[64, 64] and not s.gt[5, 64]
            assert abs(int(s.gt.sum()) - 64 * 64) < 2 * 128
    (tmp_path / "segmentations" / "002.Laysan_Albatross" / "Laysan_Albatross_0010_10.png").unlink()
    with pytest.raises(BenchmarkError, match="no mask for image '002.Laysan_Albatross/Laysan_Albatross_0010_10.jpg'"):
        open_benchmark("cub", tmp_path)


def make_flowers(root: Path) -> set[str]:
    from scipy.io import savemat

    for i in range(1, 7):
        _img(root / "jpg" / f"image_{i:05d}.jpg", 50, 40, seed=i)
        seg = np.zeros((40, 50, 3), np.uint8)
        seg[...] = (0, 0, 254)  # blue background
        seg[10:30, 15:35] = (200, 120, 60)
        seg[:, :5] = (230, 30, 90)  # foreground outside the central crop
        _mask(root / "segmim" / f"segmim_{i:05d}.jpg", seg, mode="RGB", fmt="JPEG")
    savemat(str(root / "setid.mat"), {"trnid": np.array([[5, 2]]), "valid": np.array([[4, 6]]),
                                      "tstid": np.array([[1, 3]])})
    return {"image_00002", "image_00005"}


def test_flowers_trnid_is_test_split(tmp_path):
    want = make_flowers(tmp_path / "flowers")
    ds = open_benchmark("flowers", tmp_path / "flowers")
    samples = list(ds)
    assert [s.stem for s in samples] == ["image_00005", "image_00002"] and set(want) == {s.stem for s in samples}
    for s in samples:
        assert s.gt.shape == (128, 128)
        assert s.gt[64, 64] and not s.gt[2, 2] and not s.gt[:, :3].any()
        frac = s.gt.mean()  # 20x20 box of a 40x40 crop, grown a little by JPEG ringing at its edges
        assert 0.2 < frac < 0.45


def test_flowers_rule_exact():
    seg = np.array([[[0, 0, 254], [0, 10, 10], [10, 0, 10], [10, 10, 254], [1, 1, 253], [200, 120, 60]]],
                   np.uint8)
    assert flowers_foreground(Image.fromarray(seg)).tolist() == [[False, False, False, False, True, True]]


def make_folder(root: Path) -> dict:
    graded = np.array([[0, 127, 128, 255]], np.uint8).repeat(3, axis=0)  # 3x4, >= 128 -> 6 px
    _img(root / "images" / "b.jpg", 4, 3, seed=1)
    _mask(root / "masks" / "b.png", graded)
    _img(root / "images" / "a.png", 6, 2, seed=2, fmt="PNG")
    _mask(root / "masks" / "a.png", _stem_mask(6, 2, 5))
    return {"b": (4, 3, 6), "a": (6, 2, 5)}


def test_folder_graded_masks(tmp_path):
    want = make_folder(tmp_path / "mine")
    _check_stems(open_benchmark("folder", tmp_path / "mine"), want)


def test_discover_finds_every_layout(tmp_path):
    make_ecssd(tmp_path / "ECSSD")
    make_duts(tmp_path / "DUTS")
    make_omron(tmp_path / "DUT-OMRON")
    make_cub(tmp_path / "CUB")
    make_flowers(tmp_path / "Flowers102")
    make_folder(tmp_path / "extra" / "pascal")
    found = discover(tmp_path)
    assert sorted(found) == [("cub", tmp_path / "CUB" / "CUB_200_2011"), ("dut-omron", tmp_path / "DUT-OMRON"),
                             ("duts-te", tmp_path / "DUTS" / "DUTS-TE"), ("ecssd", tmp_path / "ECSSD"),
                             ("flowers", tmp_path / "Flowers102"), ("folder", tmp_path / "extra" / "pascal")]
    assert found == sorted(found, key=lambda kp: str(kp[1]))  # deterministic walk order
    for kind, path in found:
        assert len(open_benchmark(kind, path)) >= 2


def test_dataset_spec_parsing():
    assert parse_dataset_spec("ECSSD=/data/x") == ("ecssd", Path("/data/x"))
    with pytest.raises(BenchmarkError, match="KIND=PATH"):
        parse_dataset_spec("/data/x")
    with pytest.raises(BenchmarkError, match="unknown dataset kind 'pascal'"):
        parse_dataset_spec("pascal=/data/x")


def test_network_input_size():
    # the authors' long side: 128 * long // short (integer division, not rounding)
    assert network_input_size(400, 300) == (170, 128)
    assert network_input_size(300, 400) == (128, 170)
    assert network_input_size(171, 128) == (171, 128)
    assert network_input_size(60, 60) == (128, 128)


def _finite_in_unit(m: dict) -> None:
    for k in PAPER:
        assert math.isfinite(m[k]) and 0.0 <= m[k] <= 1.0, k


def test_eval_pascal_s_120(shared, run8, tmp_path):
    data = shared / "data" / "pascal-s-120"
    if not (data / "images").is_dir():
        pytest.skip(f"{data} absent")
    out = tmp_path / "res.json"
    res = CliRunner().invoke(main, ["eval", "--model", str(run8), "--dataset", f"folder={data}",
                                    "--json", str(out), "--device", "cpu", "--no-pysod"])
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())["pascal-s-120"]
    assert got["n_images"] == 120 and got["kind"] == "folder"
    _finite_in_unit(got)
    assert 0 <= got["maxF_threshold"] <= 254
    assert not any(k.startswith("pysod_") for k in got)  # --no-pysod (covered in test_metrics.py)


def test_eval_model_is_batch_independent(run8, tmp_path):
    from trainers.model.checkpoint import load_model

    make_ecssd(tmp_path / "E")
    model = load_model(run8)
    ds = open_benchmark("ecssd", tmp_path / "E")
    a = evaluate_model(model, ds, device="cpu", batch_size=1, pysod=False)
    b = evaluate_model(model, ds, device="cpu", batch_size=8, pysod=False)
    for k in PAPER:
        assert a[k] == pytest.approx(b[k], abs=1e-6)


def test_predict_then_eval_predictions(run8, tmp_path):
    make_folder(tmp_path / "f")
    res = CliRunner().invoke(main, ["predict", "--model", str(run8), "--images", str(tmp_path / "f" / "images"),
                                    "--out", str(tmp_path / "preds"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "wrote 2 probability maps" in res.output
    for stem, size in (("a", (6, 2)), ("b", (4, 3))):
        with Image.open(tmp_path / "preds" / f"{stem}.png") as im:
            assert im.mode == "L" and im.size == size
    res = CliRunner().invoke(main, ["eval", "--predictions", str(tmp_path / "preds"), "--masks",
                                    str(tmp_path / "f" / "masks"), "--no-pysod", "--json", str(tmp_path / "p.json")])
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "p.json").read_text())["predictions"]
    _finite_in_unit(got)
    assert not any(k.startswith("pysod_") for k in got)


def test_benchmark_table(run8, tmp_path):
    make_ecssd(tmp_path / "data" / "ECSSD")
    make_cub(tmp_path / "data" / "CUB")
    out = tmp_path / "table.json"
    res = CliRunner().invoke(main, ["benchmark", "--model", str(run8), "--root", str(tmp_path / "data"),
                                    "--json", str(out), "--device", "cpu", "--no-pysod"])
    assert res.exit_code == 0, res.output
    assert "| E-BigBiGAN (paper) | .906 / .684 / .797 |" in res.output
    assert "| **unet-w8** |" in res.output and "not run" in res.output
    table = json.loads(out.read_text())
    assert [d["name"] for d in table["datasets"]] == ["CUB", "ECSSD"]
    assert [d["n_images"] for d in table["datasets"]] == [2, 3]
    for d in table["datasets"]:
        _finite_in_unit(d)
    assert table["published"][0]["scores"]["ECSSD"] == {"accuracy": 0.899, "IoU": 0.672, "maxF": 0.782}


@pytest.mark.parametrize("args, message", [
    (["eval", "--model", "RUN", "--dataset", "ecssd"], "dataset must be KIND=PATH"),
    (["eval", "--model", "RUN", "--dataset", "voc=/x"], "unknown dataset kind 'voc'"),
    (["eval", "--model", "RUN"], "--model needs at least one --dataset"),
    (["eval"], "nothing to evaluate"),
    (["eval", "--predictions", "P"], "--predictions and --masks go together"),
    (["eval", "--model", "RUN", "--dataset", "ecssd=MISSING"], "is not a folder"),
    (["benchmark", "--model", "RUN", "--root", "EMPTY"], "no benchmark found under"),
])
def test_cli_errors_are_one_line(run8, tmp_path, args, message):
    (tmp_path / "EMPTY").mkdir()
    args = [str(run8) if a == "RUN" else str(tmp_path / a) if a in ("MISSING", "EMPTY", "P") else
            a.replace("MISSING", str(tmp_path / "MISSING")) for a in args]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1, res.output
    assert res.output.startswith("Error: ") and message in res.output, res.output
    assert "Traceback" not in res.output


def test_help_has_examples():
    runner = CliRunner()
    for cmd in ([], ["eval"], ["predict"], ["benchmark"]):
        res = runner.invoke(main, cmd + ["--help"])
        assert res.exit_code == 0 and "Example" in res.output and "trainers " in res.output


def _pred_folder(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    for stem in ("a", "b"):
        (root / "p").mkdir(parents=True, exist_ok=True)
        (root / "m").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(90, 160, (12, 16)).astype(np.uint8)).save(root / "p" / f"{stem}.png")
        m = np.zeros((12, 16), np.uint8)
        m[3:9, 4:12] = 255
        Image.fromarray(m).save(root / "m" / f"{stem}.png")
    return root / "p", root / "m"


def test_eval_names_the_papers_and_pysods_measures(tmp_path):
    preds, masks = _pred_folder(tmp_path)
    base = ["eval", "--predictions", str(preds), "--masks", str(masks)]
    res = CliRunner().invoke(main, base + ["--no-pysod", "--json", str(tmp_path / "a.json")])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("predictions: "))
    assert "MAE=" in line and "(the paper's protocol" in line and "mean |p - gt|" in line
    assert not any(ln.startswith(("predictions pysod", "note:")) for ln in res.output.splitlines())
    if not pysod_available():
        pytest.skip("pysodmetrics not installed")
    res = CliRunner().invoke(main, base + ["--pysod", "--json", str(tmp_path / "b.json")])
    assert res.exit_code == 0, res.output
    py = next(ln for ln in res.output.splitlines() if ln.startswith("predictions pysod: "))
    assert "pysod_MAE=" in py and "pysodmetrics' own normalisation, not the paper's" in py and "min-max" in py
    assert any(ln.startswith("note: MAE is the paper's") for ln in res.output.splitlines())
    got = json.loads((tmp_path / "b.json").read_text())["predictions"]
    assert {"MAE", "pysod_MAE", "maxF", "pysod_maxF"} <= set(got)  # JSON keys unchanged
    assert got["MAE"] != pytest.approx(got["pysod_MAE"], abs=1e-3)  # low-contrast maps: the two differ


def test_short_side_feeds_the_network_at_that_size(tmp_path):
    """--short-side 64 on 64-px images: no resize, the maps are the network's own at 64 px; the default
    (the authors' 128) upscales first and gives other maps; eval records the size it used."""
    from trainers.model.checkpoint import load_model

    torch.manual_seed(1)
    net = UNet(ModelConfig(width=4))
    with torch.no_grad():
        net.head.weight.mul_(300.0)  # a random net's maps are nearly flat; this spreads them over [0, 1]
    run = save_model(tmp_path / "run", net)

    images = tmp_path / "f" / "images"
    for i in range(2):
        _img(images / f"{i}.png", 64, 64, seed=i)
        _mask(tmp_path / "f" / "masks" / f"{i}.png", _stem_mask(64, 64, 100 + i))
    maps = {}
    for side in ("64", "128"):
        res = CliRunner().invoke(main, ["predict", "--model", str(run), "--images", str(images),
                                        "--out", str(tmp_path / side), "--device", "cpu", "--short-side", side])
        assert res.exit_code == 0, res.output
        maps[side] = np.asarray(Image.open(tmp_path / side / "0.png"))
    net = load_model(run).eval()
    x = torch.from_numpy(np.asarray(Image.open(images / "0.png"), np.float32).copy()).permute(2, 0, 1) / 127.5 - 1
    with torch.no_grad():
        native = torch.sigmoid(net(x[None]))[0, 0].numpy()
    assert maps["64"].shape == (64, 64)
    assert np.abs(maps["64"].astype(float) - np.rint(native * 255)).max() <= 1
    assert np.abs(maps["64"].astype(float) - maps["128"].astype(float)).max() > 10
    assert maps["64"].std() > 10
    res = CliRunner().invoke(main, ["eval", "--model", str(run), "--dataset", f"folder={tmp_path / 'f'}",
                                    "--device", "cpu", "--no-pysod", "--short-side", "64",
                                    "--json", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    assert "shorter side at 64 px" in res.output
    got = json.loads((tmp_path / "e.json").read_text())
    assert [v["short_side"] for v in got.values()] == [64]
