"""Masks, connected components and filter statistics: golden exactness and scipy agreement."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from factory.format import HIST_BINS, INDEX_COLUMNS, OFFSET_COLUMNS
from factory.masks import (
    cc_cleanup,
    connected_components,
    gray,
    luminance_mask,
    make_masks,
    mean_threshold_mask,
)
from factory.stats import (
    STAT_COLUMNS,
    candidate_stats,
    histogram_batched,
    histogram_paper,
    histogram_reference,
    process_batch,
)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
S8 = np.ones((3, 3), dtype=int)


def _load(golden, name):
    return np.load(golden / name)


def _images(golden, device="cpu"):
    img = torch.from_numpy(_load(golden, "image.npy")).to(device)
    sh = torch.from_numpy(_load(golden, "image_shifted.npy")).to(device)
    return img, sh


# ---------------------------------------------------------------- golden vectors


@pytest.mark.parametrize("device", DEVICES)
def test_golden_luminance_mask_and_cc(golden, device):
    img, sh = _images(golden, device)
    want = _load(golden, "mask.npy").astype(bool)
    got = luminance_mask(img, sh).cpu().numpy()
    diff = (gray(sh) - gray(img)).abs().cpu().numpy()
    sure = diff >= 1e-5
    assert sure.sum() >= want.size - 20
    np.testing.assert_array_equal(got[sure], want[sure])
    # CC cleanup of the authors' mask reproduces their mask_cc exactly ...
    for backend in _backends(device):
        clean, n_raw, n_clean = cc_cleanup(torch.from_numpy(want).to(device), backend=backend)
        np.testing.assert_array_equal(clean.cpu().numpy(), _load(golden, "mask_cc.npy").astype(bool))
        for b in range(want.shape[0]):
            assert int(n_raw[b]) == ndimage.label(want[b], S8)[1]
        assert (n_clean <= n_raw).all() and (n_clean >= 1).all()
    # ... and so does the whole pipeline from the stored images.
    raw, clean2, _, _ = make_masks(img, sh, rule="luminance")
    np.testing.assert_array_equal(clean2.cpu().numpy(), _load(golden, "mask_cc.npy").astype(bool))
    assert raw.dtype == torch.bool and raw.shape == (4, 128, 128)


@pytest.mark.parametrize("device", DEVICES)
def test_golden_mean_threshold(golden, device):
    img, sh = _images(golden, device)
    got = mean_threshold_mask(sh).cpu().numpy()
    np.testing.assert_array_equal(got, _load(golden, "mean_thr_mask.npy").astype(bool))
    raw, clean, n_raw, n_clean = make_masks(img, sh, rule="mean-threshold")
    np.testing.assert_array_equal(raw.cpu().numpy(), got)
    np.testing.assert_array_equal(clean.cpu().numpy(), _load(golden, "mean_thr_mask_cc.npy").astype(bool))


@pytest.mark.parametrize("device", DEVICES)
def test_golden_filters_and_stats(golden, device):
    img, sh = _images(golden, device)
    raw, clean, stats = process_batch(img, sh)
    area_pass = _load(golden, "area_pass.npy")
    maxes_pass = _load(golden, "maxes_pass.npy")
    keep = _load(golden, "keep.npy")
    np.testing.assert_array_equal(stats["pass_area"].cpu().numpy(), area_pass)
    np.testing.assert_array_equal(stats["pass_hist_reference"].cpu().numpy(), maxes_pass)
    np.testing.assert_array_equal((stats["pass_area"] & stats["pass_hist_reference"]).cpu().numpy(), keep)
    np.testing.assert_array_equal(
        clean[torch.from_numpy(keep).to(device)].cpu().numpy(), _load(golden, "masks_filtered.npy").astype(bool)
    )
    mask_cc = _load(golden, "mask_cc.npy")
    np.testing.assert_array_equal(
        stats["fg_ratio"].cpu().numpy(), mask_cc.reshape(4, -1).mean(1).astype(np.float32)
    )
    dbg = np.load(golden / "hist_debug.npz")
    np.testing.assert_array_equal(stats["hist"].cpu().numpy(), dbg["smoothed"])
    np.testing.assert_array_equal(stats["hist_maxima"].cpu().numpy(), dbg["n_local_max"])


@pytest.mark.parametrize("device", DEVICES)
def test_golden_hist_debug(golden, device):
    _, sh = _images(golden, device)
    hist, smoothed, n_max = histogram_reference(sh)
    dbg = np.load(golden / "hist_debug.npz")
    np.testing.assert_array_equal(hist.cpu().numpy(), dbg["histc"])
    np.testing.assert_array_equal(smoothed.cpu().numpy(), dbg["smoothed"])
    np.testing.assert_array_equal(n_max.cpu().numpy(), dbg["n_local_max"])
    assert hist.dtype == smoothed.dtype == torch.float32 and n_max.dtype == torch.int32


@pytest.mark.parametrize("device", DEVICES)
def test_golden_filter_cases(golden, device):
    cases = np.load(golden / "filter_cases.npz")
    _, _, n_max = histogram_reference(torch.from_numpy(cases["hist_images"]).to(device))
    np.testing.assert_array_equal((n_max >= 2).cpu().numpy(), cases["maxes_pass"])
    masks = torch.from_numpy(cases["cc_masks"]).to(device)
    for backend in _backends(device):
        clean, n_raw, n_clean = cc_cleanup(masks, backend=backend)
        np.testing.assert_array_equal(clean.cpu().numpy(), cases["cc_out"].astype(bool))
    dummy = torch.zeros(masks.shape[0], 3, *masks.shape[1:], device=device)
    st = candidate_stats(dummy, dummy, raw=masks.bool(), clean=clean, n_raw=n_raw, n_clean=n_clean)
    np.testing.assert_array_equal(st["fg_ratio"].cpu().numpy(), cases["cc_area_frac"])
    np.testing.assert_array_equal(st["pass_area"].cpu().numpy(), cases["cc_area_pass"])
    names = list(cases["cc_case_names"])
    assert int(n_raw[names.index("empty")]) == 0 and int(n_clean[names.index("empty")]) == 0
    ratio = [i for i, n in enumerate(names) if n.startswith("ratio_exactly")][0]
    assert (int(n_raw[ratio]), int(n_clean[ratio])) == (3, 2)  # 20/100 dropped, 21/100 kept


# ---------------------------------------------------------------- histogram vs torch.histc


def _edge_values(gen):
    edges = torch.linspace(-1, 1, HIST_BINS + 1)
    up = torch.nextafter(edges, torch.full_like(edges, 2))
    down = torch.nextafter(edges, torch.full_like(edges, -2))
    extra = torch.tensor([-1.5, 1.5, -1.0, 1.0, 0.0, -0.0, float("inf"), float("-inf")])
    vals = torch.cat([edges, up, down, extra])
    return vals[torch.randint(len(vals), (3 * 16 * 16,), generator=gen)]


def test_histogram_matches_histc_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    imgs = [
        torch.rand(3, 16, 16, generator=gen) * 2 - 1,
        torch.rand(3, 16, 16, generator=gen) * 2.4 - 1.2,  # values outside ignored
        _edge_values(gen).view(3, 16, 16),
        _edge_values(gen).view(3, 16, 16),
        torch.full((3, 16, 16), 1.0),
        torch.full((3, 16, 16), -1.0),
        torch.tanh(torch.randn(3, 16, 16, generator=gen) * 3),
    ]
    # every fp32 value in a few narrow windows around each edge
    edges = torch.linspace(-1, 1, HIST_BINS + 1)
    around = []
    for e in edges.tolist():
        v = torch.tensor([e], dtype=torch.float32)
        lo = v.clone()
        for _ in range(6):
            lo = torch.nextafter(lo, torch.tensor([-2.0]))
        hi = lo.clone()
        row = [lo]
        for _ in range(11):
            hi = torch.nextafter(hi, torch.tensor([2.0]))
            row.append(hi)
        around.append(torch.cat(row))
    around = torch.cat(around)
    imgs.append(torch.cat([around, torch.zeros(768 - len(around))]).view(3, 16, 16))
    batch = torch.stack(imgs)
    got = histogram_batched(batch)
    want = torch.stack([torch.histc(x, HIST_BINS, -1, 1) for x in batch])
    assert torch.equal(got, want)
    hist, _, _ = histogram_reference(batch)
    assert torch.equal(hist, want)


def _images_with_gray_counts(counts_list, side=20):
    """Gray images (R=G=B) whose 12-bin gray histogram has the given counts (values at bin centres)."""
    centres = -1 + (np.arange(HIST_BINS) + 0.5) / 6
    imgs = []
    for counts in counts_list:
        v = np.repeat(centres, counts)
        v = np.concatenate([v, np.full(side * side - len(v), np.nan)])  # NaN is ignored by histc
        imgs.append(np.broadcast_to(v.reshape(1, side, side), (3, side, side)))
    return torch.from_numpy(np.stack(imgs).astype(np.float32))


def _paper_rule_loop(img_shifted):
    """Independent per-image reference of the paper-text rule (numpy loops)."""
    out = []
    for x in img_shifted.numpy().astype(np.float32):
        g = np.float32(0.2989) * x[0] + np.float32(0.5870) * x[1] + np.float32(0.1140) * x[2]
        h = torch.histc(torch.from_numpy(g), HIST_BINS, -1, 1).numpy()
        s = [(h[i - 1] if i > 0 else 0) + h[i] + (h[i + 1] if i < HIST_BINS - 1 else 0) for i in range(HIST_BINS)]
        out.append(sum(1 for i in range(1, HIST_BINS - 1) if s[i] >= s[i - 1] and s[i] >= s[i + 1]))
    return out


def test_paper_histogram_rule():
    two_modes = [30, 10, 20, 40, 20, 10, 10, 20, 40, 20, 10, 30]  # s: 40 60 70 80 70 40 40 70 80 70 60 40
    one_mode = [60, 50, 40, 30, 20, 12, 8, 5, 3, 2, 1, 0]  # s strictly decreasing after bin 1
    imgs = _images_with_gray_counts([two_modes, one_mode])
    hist, smoothed, n_inner = histogram_paper(imgs)
    np.testing.assert_array_equal(hist.numpy(), np.array([two_modes, one_mode], np.float32))
    assert smoothed[0].tolist() == [40, 60, 70, 80, 70, 40, 40, 70, 80, 70, 60, 40]
    assert n_inner.tolist() == [2, 1]
    gen = torch.Generator().manual_seed(5)
    rand = torch.tanh(torch.randn(6, 3, 20, 20, generator=gen) * 2 + torch.randn(6, 1, 1, 1, generator=gen))
    batch = torch.cat([imgs.nan_to_num(0.0), rand])
    _, _, n_inner = histogram_paper(batch)
    assert n_inner.tolist() == _paper_rule_loop(batch)
    raw, clean, n_raw, n_clean = make_masks(batch, batch)
    st = candidate_stats(batch, batch, raw=raw, clean=clean, n_raw=n_raw, n_clean=n_clean)
    assert torch.equal(st["hist_gray_maxima_inner"], n_inner)
    assert torch.equal(st["pass_hist_paper"], n_inner >= 2)


# ---------------------------------------------------------------- connected components vs scipy


def _check_labels(mask: np.ndarray, device="cpu"):
    labels, it = connected_components(torch.from_numpy(mask).to(device), return_iterations=True)
    labels = labels.cpu().numpy()
    assert labels.dtype == np.int32
    for b in range(mask.shape[0]):
        ref, _ = ndimage.label(mask[b], structure=S8)
        np.testing.assert_array_equal(labels[b], ref)
    return it


def _backends(device):
    """Both CPU implementations of the cleanup (tensor algorithm, scipy); the tensor one elsewhere."""
    return ("torch", "scipy") if device == "cpu" else ("torch",)


def _check_cleanup(mask: np.ndarray, device="cpu", ratio=0.2):
    for backend in _backends(device):
        clean, n_raw, n_clean = cc_cleanup(torch.from_numpy(mask).to(device), ratio, backend=backend)
        assert clean.device.type == device and n_raw.dtype == n_clean.dtype == torch.int32
        for b in range(mask.shape[0]):
            ref, n = ndimage.label(mask[b], structure=S8)
            areas = np.bincount(ref.ravel(), minlength=n + 1)[1:]
            keep = [i + 1 for i, a in enumerate(areas) if a > ratio * areas.max()] if n else []
            np.testing.assert_array_equal(clean[b].cpu().numpy(), np.isin(ref, keep))
            assert int(n_raw[b]) == n and int(n_clean[b]) == len(keep)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [32, 64, 128])
def test_cc_random_masks(device, size):
    rng = np.random.default_rng(size)
    for p in (0.05, 0.3, 0.5, 0.6, 0.8, 0.97):
        mask = rng.random((6, size, size)) < p
        _check_labels(mask, device)
        _check_cleanup(mask, device)


@pytest.mark.parametrize("device", DEVICES)
def test_cc_smooth_blobs_non_square(device):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(8, 1, 24, 40, generator=gen)
    x = torch.nn.functional.avg_pool2d(torch.nn.functional.interpolate(x, scale_factor=4, mode="bilinear"), 5, 1, 2)
    mask = (x[:, 0] > 0.1).numpy()
    _check_labels(mask, device)
    _check_cleanup(mask, device)
    _check_cleanup(mask, device, ratio=0.0)


def _spiral(n):
    m = np.zeros((n, n), bool)
    r = c = 0
    m[0, 0] = True
    dirs = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    d = 0
    while True:
        for _ in range(4):
            dr, dc = dirs[d]
            r2, c2 = r + 2 * dr, c + 2 * dc
            if 0 <= r2 < n and 0 <= c2 < n and not m[r2, c2]:
                m[r + dr, c + dc] = m[r2, c2] = True
                r, c = r2, c2
                break
            d = (d + 1) % 4
        else:
            return m


def _serpentine(n, vertical=False):
    m = np.zeros((n, n), bool)
    for r in range(0, n, 2):
        m[r, :] = True
        if r + 1 < n:
            m[r + 1, n - 1 if (r // 2) % 2 == 0 else 0] = True
    return np.ascontiguousarray(m.T) if vertical else m


def _diagonal_staircase(n):
    """A single component whose pixels touch only through corners, snaking down and back up."""
    m = np.zeros((n, n), bool)
    for c in range(n):
        r = c % (2 * (n - 1))
        r = r if r < n else 2 * (n - 1) - r
        m[r, c] = True
    return m


def _diagonal_lines(n):
    m = np.zeros((n, n), bool)
    i, j = np.indices((n, n))
    m[(i + j) % 4 == 0] = True
    return m


def _checkerboard(n):
    i, j = np.indices((n, n))
    return (i + j) % 2 == 0


def _checker_blocks(n):
    i, j = np.indices((n, n))
    return ((i // 2) + (j // 2)) % 2 == 0  # 2x2 blocks touching only diagonally


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [32, 128])
def test_cc_adversarial(device, n):
    cases = [
        _spiral(n),
        _spiral(n)[::-1, ::-1],
        _spiral(n).T,
        _serpentine(n),
        _serpentine(n, vertical=True),
        _serpentine(n)[::-1],
        _diagonal_staircase(n),
        _diagonal_staircase(n)[:, ::-1],
        _diagonal_lines(n),
        _checkerboard(n),
        ~_checkerboard(n),
        _checker_blocks(n),
        np.ones((n, n), bool),
        np.zeros((n, n), bool),
    ]
    mask = np.ascontiguousarray(np.stack(cases))
    it = _check_labels(mask, device)
    assert it <= 64
    _check_cleanup(mask, device)
    labels = connected_components(torch.from_numpy(mask).to(device))
    assert int(labels[0].max()) == 1 and int(labels[-2].max()) == 1 and int(labels[-1].max()) == 0


def test_cc_edge_shapes():
    for shape in [(1, 1, 1), (2, 1, 7), (2, 7, 1), (3, 2, 2)]:
        for p in (0.0, 0.5, 1.0):
            mask = np.random.default_rng(0).random(shape) < p
            _check_labels(mask)
            _check_cleanup(mask)
    empty = torch.zeros(0, 8, 8, dtype=torch.bool)
    assert connected_components(empty).shape == (0, 8, 8)
    for backend in ("torch", "scipy"):
        clean, n_raw, n_clean = cc_cleanup(empty, backend=backend)
        assert clean.shape == (0, 8, 8) and n_raw.shape == (0,) and n_clean.shape == (0,)
    # uint8 / int masks are accepted
    m = torch.tensor([[[1, 0, 1], [0, 0, 0], [1, 1, 0]]], dtype=torch.uint8)
    assert connected_components(m).tolist() == [[[1, 0, 2], [0, 0, 0], [3, 3, 0]]]


# ---------------------------------------------------------------- contract


def test_stats_keys_and_dtypes_match_index_columns():
    gen = torch.Generator().manual_seed(1)
    img = torch.rand(5, 3, 32, 32, generator=gen) * 2 - 1
    sh = (img + 0.3 * torch.randn(5, 3, 32, 32, generator=gen)).clamp(-1, 1)
    raw, clean, st = process_batch(img, sh)
    assert set(st) == set(STAT_COLUMNS) == set(INDEX_COLUMNS) - {"key", "shard", "row", *OFFSET_COLUMNS}
    arrow = {"float32": torch.float32, "int32": torch.int32, "bool": torch.bool}
    for k, v in st.items():
        t = INDEX_COLUMNS[k]
        if t.startswith("list<float32>"):
            assert v.shape == (5, HIST_BINS) and v.dtype == torch.float32
        else:
            assert v.shape == (5,) and v.dtype == arrow[t], k
    assert torch.equal(st["pass_area"], st["fg_ratio"] < 0.5)
    assert torch.equal(st["fg_ratio_raw"], raw.float().mean((1, 2)))
    assert (st["n_components"] <= st["n_components_raw"]).all()
    assert (st["hist"].sum(1) <= 3 * 3 * 32 * 32).all()


def test_bad_inputs_name_the_fix():
    img = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match="unknown mask rule 'otsu'"):
        make_masks(img, img, rule="otsu")
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        luminance_mask(img[0], img[0])
    with pytest.raises(ValueError, match=r"\[B,H,W\]"):
        connected_components(torch.zeros(8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="ratio"):
        cc_cleanup(torch.zeros(1, 8, 8, dtype=torch.bool), ratio=2.0)


# ---------------------------------------------------------------- sync-free labelling (GPU pipeline)


@pytest.mark.parametrize("device", DEVICES)
def test_cc_fixed_iterations_exact_where_converged(device):
    """``iterations=K`` never synchronises; every image it reports converged is exact, and a
    budget at least the host-checked iteration count converges everything."""
    n = 64
    rng = np.random.default_rng(5)
    cases = [_spiral(n), _serpentine(n), _diagonal_staircase(n), _checker_blocks(n), np.zeros((n, n), bool)]
    cases += list(rng.random((3, n, n)) < 0.55)
    mask = torch.from_numpy(np.ascontiguousarray(np.stack(cases))).to(device)
    exact = cc_cleanup(mask)
    _, _, _, needed = cc_cleanup(mask, return_iterations=True)
    seen_unconverged = False
    for k in (1, 2, 4, 8, needed):
        clean, n_raw, n_clean, converged = cc_cleanup(mask, iterations=k)
        assert converged.dtype == torch.bool and converged.shape == (len(cases),)
        for got, want in zip((clean, n_raw, n_clean), exact):
            np.testing.assert_array_equal(got[converged].cpu().numpy(), want[converged].cpu().numpy())
        seen_unconverged |= not bool(converged.all())
    assert bool(converged.all())  # k = needed
    assert seen_unconverged  # the spiral needs far more than one update
    assert not bool(cc_cleanup(mask[:1], iterations=2)[3][0])
    assert bool(cc_cleanup(mask[-1:] & False, iterations=1)[3][0])  # empty masks converge at once


def test_process_batch_sync_free_matches():
    gen = torch.Generator().manual_seed(4)
    img = torch.rand(6, 3, 48, 48, generator=gen) * 2 - 1
    x = torch.nn.functional.avg_pool2d(torch.randn(6, 3, 48, 48, generator=gen), 7, 1, 3)
    sh = (img + 4 * x).clamp(-1, 1)
    raw, clean, st = process_batch(img, sh)
    raw2, clean2, st2 = process_batch(img, sh, cc_iterations=8)
    conv = st2.pop("cc_converged")
    assert bool(conv.all())
    assert torch.equal(raw, raw2) and torch.equal(clean, clean2) and st.keys() == st2.keys()
    for k in st:
        assert torch.equal(st[k], st2[k]), k
    with pytest.raises(ValueError, match="positive int"):
        cc_cleanup(raw, iterations=0)
    with pytest.raises(ValueError, match="backend"):
        cc_cleanup(raw, backend="opencv")
    with pytest.raises(ValueError, match="scipy"):
        cc_cleanup(raw, backend="scipy", iterations=8)


def test_mask_rule_list_is_one_list():
    """The CLI's choices (factory.format.MASK_RULES) are exactly the rules masks implements."""
    from typing import get_args

    from factory import format as fmt
    from factory import masks

    assert get_args(masks.MaskRule) == fmt.MASK_RULES == masks.MASK_RULES
