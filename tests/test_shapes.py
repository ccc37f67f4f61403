"""The `shapes` test world: determinism, continuity, semantics of its directions, failure proportions, export, CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from factory.format import FactoryError
from factory.generators import load_generator
from factory.generators.shapes import DIRECTION_NAMES
from factory.generators.shapes import export as tw

GRAY = torch.tensor([0.2989, 0.5870, 0.1140])
R_SHIFT = 5.0


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def g64():
    return load_generator("shapes", resolution=64)


@pytest.fixture(scope="module")
def gauss_table(g64):
    return _filter_table(g64, _z(400, 5))


def _z(n, seed, dim_z=120):
    return torch.randn(n, dim_z, generator=torch.Generator().manual_seed(seed))


def _gray(x):
    return torch.einsum("bchw,c->bhw", x, GRAY)


def _lum_mask(g, z, name="background"):
    h = torch.from_numpy(g.named_directions()[name])
    return _gray(g(z)) < _gray(g(z + R_SHIFT * h))


def _iou(a, b):
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def _cc_clean(m: np.ndarray):
    """8-connected components; keep those > 0.2 x the largest. Returns (clean, n_raw, n_clean)."""
    from scipy import ndimage

    lab, n = ndimage.label(m, structure=np.ones((3, 3)))
    if n == 0:
        return m.copy(), 0, 0
    area = np.bincount(lab.ravel())[1:]
    keep = np.zeros(n + 1, bool)
    keep[1:] = area > 0.2 * area.max()
    return keep[lab], n, int(keep[1:].sum())


def _hist_pass(shifted: np.ndarray) -> bool:
    """Authors' rule: 12-bin histogram of all RGB values, width-3 zero-padded box sum, >= 2 local maxima."""
    h = np.histogram(shifted.ravel(), bins=12, range=(-1, 1))[0].astype(np.float64)
    s = np.convolve(np.pad(h, 1), np.ones(3), "valid")
    p = np.pad(s, 1)
    return int(((s >= p[:-2]) & (s >= p[2:])).sum()) >= 2


def _filter_table(g, z):
    """Per sample: IoU raw, IoU clean, pass area, pass hist, has spurious components."""
    h = torch.from_numpy(g.named_directions()["background"])
    x, xs, gt = g(z), g(z + R_SHIFT * h), g.true_mask(z)
    raw = _gray(x) < _gray(xs)
    rows = []
    for i in range(z.shape[0]):
        clean, n_raw, n_clean = _cc_clean(raw[i].numpy())
        clean_t = torch.from_numpy(clean)[None]
        rows.append((
            float(_iou(raw[i : i + 1], gt[i : i + 1])), float(_iou(clean_t, gt[i : i + 1])),
            clean.mean() < 0.5, _hist_pass(xs[i].numpy()), n_raw > n_clean,
        ))
    return np.array(rows, dtype=np.float64)


# ---------------------------------------------------------------- generator


def test_protocol_shape_range_dtype(g64):
    from factory.generators import Generator

    assert isinstance(g64, Generator)
    assert g64.dim_z == 120 and g64.resolution == 64 and g64.device == torch.device("cpu")
    x = g64(_z(5, 0))
    assert x.shape == (5, 3, 64, 64) and x.dtype == torch.float32
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0 and torch.isfinite(x).all()
    m = g64.true_mask(_z(5, 0))
    assert m.shape == (5, 64, 64) and m.dtype == torch.bool
    g128 = load_generator("shapes")
    assert g128(_z(2, 0)).shape == (2, 3, 128, 128)
    ident = g64.identity()
    assert ident["name"] == "shapes" and ident["resolution"] == 64 and ident["dim_z"] == 120
    assert ident["world_version"] and len(ident["weights_sha256"]) == 64
    assert g128.identity()["weights_sha256"] == ident["weights_sha256"]


def test_determinism_and_batch_independence(g64):
    z = _z(20, 1)
    a = g64(z)
    b = load_generator("shapes", resolution=64)(z.clone())
    assert torch.equal(a, b)
    assert torch.allclose(g64(z[3:4]), a[3:4], atol=1e-5)
    assert torch.equal(g64.true_mask(z), g64.true_mask(z))
    other = load_generator("shapes", resolution=64, seed=1)
    assert not torch.allclose(other(z), a)
    assert other.identity()["weights_sha256"] != g64.identity()["weights_sha256"]


def test_continuity(g64):
    z = _z(16, 2)
    dz = _z(16, 3)
    dz = dz / dz.norm(dim=1, keepdim=True)
    x = g64(z)
    d_small = (g64(z + 1e-3 * dz) - x).abs().max(dim=1).values.flatten(1).max(1).values
    d_tiny = (g64(z + 1e-4 * dz) - x).abs().max(dim=1).values.flatten(1).max(1).values
    assert float(d_small.max()) < 0.05
    assert float(d_tiny.max()) < 0.01
    # a big step changes the picture
    assert float((g64(z + 3 * dz) - x).abs().mean()) > 0.05


def test_named_directions_orthonormal(g64):
    named = g64.named_directions()
    assert list(named) == list(DIRECTION_NAMES)
    m = np.stack([named[k] for k in DIRECTION_NAMES])
    assert m.dtype == np.float32 and m.shape == (len(DIRECTION_NAMES), 120)
    np.testing.assert_allclose(m @ m.T, np.eye(len(m)), atol=1e-5)


def test_background_direction_segments_and_distractors_do_not(g64):
    z = _z(120, 4)
    gt = g64.true_mask(z)
    iou = {name: _iou(_lum_mask(g64, z, name), gt) for name in DIRECTION_NAMES}
    rows = _filter_table(g64, z)
    keep = (rows[:, 2] > 0) & (rows[:, 3] > 0)
    assert float(np.mean(rows[keep, 1])) > 0.8  # filtered background masks are good
    assert float(np.median(iou["background"])) > 0.7
    for name in DIRECTION_NAMES[1:]:
        assert float(iou[name].mean()) < 0.4, name
    # moving along `background` lightens the object and darkens the background
    h = torch.from_numpy(g64.named_directions()["background"])
    dg = _gray(g64(z + R_SHIFT * h)) - _gray(g64(z))
    assert float(dg[gt].mean()) > 0.2 and float(dg[~gt].mean()) < -0.1


def test_failure_proportions_and_filters_help(gauss_table):
    rows = gauss_table
    iou_raw, iou_clean, p_area, p_hist, spur = rows.T
    p_area, p_hist = p_area > 0, p_hist > 0
    assert 0.13 <= 1 - p_area.mean() <= 0.27
    assert 0.08 <= 1 - p_hist[p_area].mean() <= 0.22
    assert 0.18 <= spur.mean() <= 0.42
    # each stage raises the mean IoU on what it keeps
    assert iou_clean.mean() > iou_raw.mean() + 0.005
    assert iou_clean[p_area].mean() > iou_clean.mean() + 0.02
    assert iou_clean[p_area & p_hist].mean() > iou_clean[p_area].mean() + 0.02


def test_embedding_distribution_has_fewer_failures(g64, gauss_table):
    emb = torch.from_numpy(tw.sample_embedding_latents(g64, 200, seed=0))
    near = emb + 0.5 * _z(200, 6)
    r_emb, r_near, r_gauss = _filter_table(g64, emb), _filter_table(g64, near), gauss_table
    keep = lambda r: r[:, 2].astype(bool) & r[:, 3].astype(bool)  # noqa: E731
    assert keep(r_emb).mean() > keep(r_gauss).mean() + 0.15
    assert r_near[keep(r_near), 1].mean() > r_gauss[keep(r_gauss), 1].mean() + 0.01
    assert r_near[:, 0].mean() > r_gauss[:, 0].mean() + 0.05


def test_bad_options():
    with pytest.raises(FactoryError, match="dim_z"):
        load_generator("shapes", dim_z=10)
    with pytest.raises(FactoryError, match="unknown option"):
        load_generator("shapes", weights="x.pth")
    with pytest.raises(FactoryError, match=r"\[B, 120\]"):
        load_generator("shapes", resolution=64)(torch.zeros(2, 7))


# ---------------------------------------------------------------- export + directions


def test_export_layout_and_roundtrip(tmp_path):
    out = tw.export(6, seed=3, resolution=64, out_dir=tmp_path / "bench")
    stems = [f"{i:04d}" for i in range(1, 7)]
    assert sorted(p.stem for p in (out / "images").iterdir()) == stems
    assert sorted(p.name for p in (out / "ground_truth_mask").iterdir()) == [s + ".png" for s in stems]
    emb = np.load(out / "embeddings.npy")
    assert emb.shape == (6, 120) and emb.dtype == np.float32
    g = load_generator("shapes", resolution=64)
    x = g(torch.from_numpy(emb))
    gt = g.true_mask(torch.from_numpy(emb)).numpy()
    for i, s in enumerate(stems):
        img = np.asarray(Image.open(out / "images" / f"{s}.png"))
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        expect = (x[i].permute(1, 2, 0).numpy() + 1) * 127.5
        assert np.abs(img.astype(np.float64) - expect).max() <= 0.5 + 1e-3
        m = np.asarray(Image.open(out / "ground_truth_mask" / f"{s}.png"))
        assert m.shape == (64, 64) and set(np.unique(m)) <= {0, 255}
        np.testing.assert_array_equal(m == 255, gt[i])
    info = json.loads((out / "testworld.json").read_text())
    assert info["generator"]["name"] == "shapes" and info["n"] == 6
    # deterministic in the seed
    again = tw.export(6, seed=3, resolution=64, out_dir=tmp_path / "again")
    np.testing.assert_array_equal(np.load(again / "embeddings.npy"), emb)
    with pytest.raises(FactoryError, match="not an empty folder"):
        tw.export(2, seed=0, resolution=64, out_dir=out)
    with pytest.raises(FactoryError, match="positive integer"):
        tw.export(0, seed=0, resolution=64, out_dir=tmp_path / "zero")


def test_directions_file(tmp_path):
    npy, meta = tw.directions(tmp_path / "dirs.npy")
    arr = np.load(npy)
    doc = json.loads(meta.read_text())
    assert meta.name == "dirs.json" and doc["names"] == list(DIRECTION_NAMES)
    assert arr.shape == (len(DIRECTION_NAMES), 120) and arr.dtype == np.float32
    named = load_generator("shapes", resolution=64).named_directions()
    for row, name in zip(arr, doc["names"]):
        np.testing.assert_array_equal(row, named[name])


# ---------------------------------------------------------------- CLI


def test_cli(tmp_path):
    from factory.cli.testworld import testworld

    r = CliRunner()
    res = r.invoke(testworld, ["export", "--n", "3", "--seed", "1", "--resolution", "64", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "b" / "images").iterdir())) == 3
    res = r.invoke(testworld, ["directions", "--out", str(tmp_path / "d.npy")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "d.json").exists()
    res = r.invoke(testworld, ["export", "--n", "0", "--out", str(tmp_path / "c")])
    assert res.exit_code == 1
    assert res.output == "Error: n must be a positive integer (number of images), got 0\n"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = r.invoke(testworld, ["export", "--n", "2", "--resolution", "64", "--out", str(blocker / "sub")])
    assert res.exit_code == 1 and res.output.startswith("Error: cannot write under") and "Traceback" not in res.output
    res = r.invoke(testworld, ["directions", "--out", str(blocker / "d.npy")])
    assert res.exit_code == 1 and res.output.startswith("Error: cannot write")
    for args in (["--help"], ["export", "--help"], ["directions", "--help"]):
        res = r.invoke(testworld, args)
        assert res.exit_code == 0 and "Example:" in res.output


def test_cli_attached_to_main():
    from factory.cli import main

    res = CliRunner().invoke(main, ["testworld", "--help"])
    assert res.exit_code == 0 and "export" in res.output
