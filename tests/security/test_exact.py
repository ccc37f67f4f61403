"""Bytes where bytes are promised, whatever the platform record says (issue 38, item 3): the issue's two
stripped-record forgeries fail; the index's statistics and decisions are recomputed from the stored
members by plain `verify`; a missing record is reported, never a reason to compare within thresholds."""
from __future__ import annotations

import io
import json
import platform
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import cli, copy_of, forge_samples, reseal, shapes_dataset, strip_platform_records
from PIL import Image

from factory.generate.regenerate import regenerate

x86 = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                         reason="the shapes world promises the same bytes on x86-64 CPUs")


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    return shapes_dataset(tmp_path_factory, "exact", n=24, shard_size=12)


@pytest.fixture()
def ds(made, tmp_path) -> Path:
    return copy_of(made, tmp_path)


def forge_index_rows(parts: dict, row: dict) -> None:
    """The issue's index forgery: fg_ratio halved, true_iou 0.99, one component (JSON kept in step)."""
    row.update(fg_ratio=row["fg_ratio"] / 2, fg_ratio_raw=row["fg_ratio"] / 2, true_iou=0.99, n_components=1,
               n_components_raw=1)
    meta = json.loads(parts["json"])
    meta["fg_ratio"] = row["fg_ratio"]
    parts["json"] = json.dumps(meta).encode()


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def forge_pixels(parts: dict, row: dict) -> None:
    """The issue's pixel forgery: every image 2 grey levels up, a 4x4 block of every mask inverted; the
    index and JSON recomputed from the forged mask as the writer would, so that they agree with it."""
    from scipy import ndimage

    img = np.asarray(Image.open(io.BytesIO(parts["png"])))
    parts["png"] = png(np.clip(img.astype(np.int16) + 2, 0, 255).astype(np.uint8))
    mask = np.asarray(Image.open(io.BytesIO(parts["mask.png"]))) > 127
    mask[12:16, 12:16] = ~mask[12:16, 12:16]
    parts["mask.png"] = png(mask.astype(np.uint8) * 255)
    fg = float(np.float32(mask.sum()) / np.float32(mask.size))
    n = int(ndimage.label(mask, structure=np.ones((3, 3)))[1])
    row.update(fg_ratio=fg, fg_ratio_raw=fg, n_components=n, n_components_raw=n, pass_area=fg < 0.5)
    meta = json.loads(parts["json"])
    meta.update(fg_ratio=fg, pass_area=fg < 0.5)
    parts["json"] = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()


@x86
def test_stripped_record_and_forged_index_rows_fail(ds):
    forge_samples(ds, forge_index_rows)
    strip_platform_records(ds)
    r = cli("verify", ds)
    assert r.exit_code == 1 and "index fg_ratio differs from what the stored members give" in r.output, r.output
    rep = regenerate(str(ds), 6, seed=3)
    assert not rep.ok and rep.exact and rep.stats_equal == 0
    assert any("name no platform record" in p for p in rep.problems)


@x86
def test_stripped_record_and_moved_pixels_fail(ds):
    """The images within 2 grey levels and the masks 98.4 % alike would pass the cross-platform thresholds;
    the shapes world promises the same bytes on any x86-64 CPU, so bytes are compared."""
    forge_samples(ds, forge_pixels)
    strip_platform_records(ds)
    r = cli("verify", ds, "--regenerate", 4)
    assert r.exit_code == 1, r.output
    rep = regenerate(str(ds), 6, seed=3)
    assert rep.exact and rep.bytes_equal == 0 and not rep.ok
    assert rep.pixels == 1.0 and rep.masks >= 0.98  # what thresholds alone would have accepted
    assert any("6 of 6 samples differ where identical bytes are promised" in p for p in rep.problems), rep.problems


def test_missing_record_is_reported_not_relaxed(ds):
    strip_platform_records(ds)
    assert cli("verify", ds).output.startswith("OK")  # the bytes are all there and self-consistent
    r = cli("verify", ds, "--regenerate", 2)
    assert r.exit_code == 1 and "name no platform record the manifest lists" in r.output


def test_plain_verify_recomputes_statistics(ds):
    """Each column plain verify can recompute from stored bytes, forged alone (hashes resealed), is named."""
    cases = {
        "n_components": lambda p, r: r.update(n_components=r["n_components"] + 1,
                                              n_components_raw=r["n_components_raw"] + 1),
        "hist_maxima": lambda p, r: r.update(hist_maxima=r["hist_maxima"] + 1),
        "pass_hist_reference": lambda p, r: r.update(pass_hist_reference=not r["pass_hist_reference"]),
        "pass_area": lambda p, r: r.update(pass_area=not r["pass_area"]),
    }
    clean = ds.parent / "clean"
    shutil.copytree(ds, clean)
    for name, edit in cases.items():
        shutil.rmtree(ds)
        shutil.copytree(clean, ds)
        forge_samples(ds, edit)
        r = cli("verify", ds)
        assert r.exit_code == 1 and f"index {name} differs" in r.output, (name, r.output)
    m = json.loads((ds / "manifest.json").read_text())
    shutil.rmtree(ds)
    shutil.copytree(clean, ds)
    m = reseal(ds)
    m["index_stats"]["pass_rate"]["area"] = 0.99
    (ds / "manifest.json").write_text(json.dumps(m))
    assert "index_stats differ from the statistics of the index" in cli("verify", ds).output
