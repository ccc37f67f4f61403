"""factory filter / info / preview on a real shapes dataset (1,000 candidates, 4 shards, 64 px).

The dataset is generated once per test session (`build_dataset`, shared with test_verify.py).
"""
from __future__ import annotations

import glob
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from helpers import cli

from factory import format as fmt
from factory.cli import main

N, SHARD = 1000, 250


def build_dataset(tmp_path_factory) -> str:
    """The session's shapes dataset (made on first use, reused by every module)."""
    root = str(tmp_path_factory.getbasetemp() / "shapes1000")
    if not os.path.exists(os.path.join(root, "manifest.json")):
        r = CliRunner().invoke(main, ["generate", "--generator", "shapes", "--n", str(N), "--shard-size", str(SHARD),
                                      "--resolution", "64", "--workers", "0", "--quiet", "--out", root])
        assert r.exit_code == 0, r.output
    return root


@pytest.fixture(scope="session")
def ds(tmp_path_factory) -> str:
    return build_dataset(tmp_path_factory)


def index_of(root: str) -> pa.Table:
    """The index read independently of factory code."""
    files = sorted(glob.glob(os.path.join(root, "index", "*.parquet")))
    return pa.concat_tables([pq.read_table(f) for f in files])


def accepted_rows(view: dict) -> list[int]:
    return fmt.AcceptedRows(view["accepted"], view["format_version"]).all_rows().tolist()


# ---------------------------------------------------------------- done-when checks

def test_max_fg_view_is_exactly_the_index_rows(ds, tmp_path):
    out = tmp_path / "v.json"
    r = cli("filter", ds, "--max-fg", "0.5", "--out", out)
    assert r.exit_code == 0, r.output
    view = json.loads(out.read_text())
    t = index_of(ds)
    fg = t.column("fg_ratio").to_numpy()
    expected = sorted(t.column("row").to_numpy()[fg < 0.5].tolist())
    assert 0 < len(expected) < N
    assert accepted_rows(view) == expected
    assert view["samples"] == len(expected)
    assert view["predicate"] == "fg_ratio < 0.5"
    assert view["rejected"] == {"max_fg": N - len(expected)}
    assert view["counts"] == {"candidates": N, "input": N, "accepted": len(expected), "rejected": N - len(expected)}
    assert set(view["accepted"]) == {"0", "1", "2", "3"}
    acc = fmt.AcceptedRows(view["accepted"], view["format_version"])
    for k in acc:
        assert all(int(k) * SHARD <= r < (int(k) + 1) * SHARD for r in acc[k].tolist())
    assert view["parent"]["url"] == os.path.relpath(ds, tmp_path)
    info = json.loads(cli("info", out, "--json").output)
    assert info["samples"] == len(expected)
    assert info["view_id"] == view["view_id"]
    assert info["dataset_id"] == json.load(open(os.path.join(ds, "manifest.json")))["dataset_id"]


def test_histogram_materialize_holds_exactly_the_passing_keys(ds, tmp_path):
    import webdataset as wds

    out = tmp_path / "mat"
    r = cli("filter", ds, "--max-fg", "0.5", "--histogram", "reference", "--materialize", "--out", out)
    assert r.exit_code == 0, r.output
    t = index_of(ds)
    ok = (t.column("fg_ratio").to_numpy() < 0.5) & t.column("pass_hist_reference").to_numpy(zero_copy_only=False)
    expected = [f"{r:010d}" for r in t.column("row").to_numpy()[ok]]
    man = json.loads((out / "manifest.json").read_text())
    assert man["samples"] == len(expected)
    assert man["provenance"]["parent"]["dataset_id"] == json.load(open(os.path.join(ds, "manifest.json")))["dataset_id"]
    assert man["provenance"]["predicate"] == "fg_ratio < 0.5 and pass_hist_reference"
    urls = [str(out / s["path"]) for s in man["shards"]]
    got_keys, parent_keys = [], []
    for s in wds.WebDataset(urls, shardshuffle=False).decode("rgb8"):
        got_keys.append(s["__key__"])
        parent_keys.append(s["json"]["parent_key"])
        assert s["png"].shape == (64, 64, 3) and s["latent.npy"].shape == (120,)
    assert parent_keys == expected
    assert got_keys == [f"{i:010d}" for i in range(len(expected))]  # renumbered: key = row in latents.zarr
    mi = index_of(str(out))
    assert mi.column("parent_row").to_pylist() == [int(k) for k in expected]
    assert mi.column("key").to_pylist() == got_keys
    assert (out / "README.md").exists() and (out / "preview.png").exists()
    assert cli("verify", out).exit_code == 0
    # rerun: nothing to do, same id; kill-and-resume: drop a sidecar + manifest, rerun rebuilds the same bytes
    assert cli("filter", ds, "--max-fg", "0.5", "--histogram", "reference", "--materialize", "--out", out).exit_code == 0
    sha = man["shards"][1]["sha256"]
    os.unlink(out / "done" / "000001.json")
    os.unlink(out / "manifest.json")
    os.unlink(out / "shards" / "000001.tar")
    r = cli("filter", ds, "--max-fg", "0.5", "--histogram", "reference", "--materialize", "--out", out)
    assert r.exit_code == 0, r.output
    man2 = json.loads((out / "manifest.json").read_text())
    assert man2["dataset_id"] == man["dataset_id"] and man2["shards"][1]["sha256"] == sha
    # another predicate into the same folder is refused (a dataset id is a content hash)
    r = cli("filter", ds, "--max-fg", "0.3", "--materialize", "--out", out)
    assert r.exit_code == 1 and "holds another dataset" in r.output and "--overwrite" in r.output


def test_preview_writes_a_sane_png(ds, tmp_path):
    from PIL import Image

    out = tmp_path / "p.png"
    r = cli("preview", ds, "--out", out, "--n", "16")
    assert r.exit_code == 0, r.output
    with Image.open(out) as im:
        assert im.format == "PNG"
        assert 300 <= im.width <= 3000 and 300 <= im.height <= 4000
    r = cli("preview", ds, "--out", tmp_path / "p.jpg")
    assert r.exit_code == 1 and "*.png" in r.output


def test_generate_card_links_a_small_preview(ds):
    from PIL import Image

    assert "![preview](preview.png)" in open(os.path.join(ds, "README.md")).read()
    with Image.open(os.path.join(ds, "preview.png")) as im:
        assert im.width < 1000 and im.height < 1000


# ---------------------------------------------------------------- views of views, immutability, info

def test_view_of_view_keeps_root_parent_and_lineage(ds, tmp_path):
    v1, v2 = tmp_path / "a" / "v1.json", tmp_path / "b" / "v2.json"
    assert cli("filter", ds, "--max-fg", "0.5", "--out", v1).exit_code == 0
    r = cli("filter", v1, "--histogram", "paper", "--where", "n_components <= 1", "--out", v2)
    assert r.exit_code == 0, r.output
    a, b = json.loads(v1.read_text()), json.loads(v2.read_text())
    assert b["parent"]["dataset_id"] == a["parent"]["dataset_id"]
    assert b["parent"]["url"] == os.path.relpath(ds, v2.parent)
    assert b["predicate"] == "fg_ratio < 0.5 and pass_hist_paper and n_components <= 1"
    assert [s["predicate"] for s in b["lineage"]] == ["fg_ratio < 0.5", "pass_hist_paper and n_components <= 1"]
    t = index_of(ds)
    ok = ((t.column("fg_ratio").to_numpy() < 0.5) & t.column("pass_hist_paper").to_numpy(zero_copy_only=False)
          & (t.column("n_components").to_numpy() <= 1))
    assert accepted_rows(b) == sorted(t.column("row").to_numpy()[ok].tolist())
    assert b["counts"]["input"] == a["samples"]
    # the combined predicate re-evaluated on the root gives the same rows
    v3 = tmp_path / "v3.json"
    assert cli("filter", ds, "--where", b["predicate"], "--out", v3).exit_code == 0
    assert accepted_rows(json.loads(v3.read_text())) == accepted_rows(b)
    info = json.loads(cli("info", v2, "--json").output)
    assert info["samples"] == b["samples"] and len(info["lineage"]) == 2
    text = cli("info", v2).output
    assert "lineage[1]" in text and b["view_id"] in text


def test_views_are_immutable(ds, tmp_path):
    out = tmp_path / "v.json"
    assert cli("filter", ds, "--max-fg", "0.5", "--out", out).exit_code == 0
    before = out.read_bytes()
    r = cli("filter", ds, "--max-fg", "0.5", "--out", out)
    assert r.exit_code == 0 and "unchanged" in r.output
    r = cli("filter", ds, "--max-fg", "0.4", "--out", out)
    assert r.exit_code == 1 and "immutable" in r.output and str(out) in r.output
    assert out.read_bytes() == before
    assert cli("filter", ds, "--max-fg", "0.4", "--out", out, "--overwrite").exit_code == 0
    assert json.loads(out.read_text())["predicate"] == "fg_ratio < 0.4"


def test_info_dataset(ds):
    d = json.loads(cli("info", ds, "--json").output)
    assert d["samples"] == N and d["shards"] == 4 and d["kind"] == "dataset"
    assert d["provenance"]["generator"] == "shapes" and d["provenance"]["seed"] == 0
    assert d["provenance"]["weights_sha256"]
    assert set(d["filter_stats"]["pass_rate"]) >= {"area", "hist_reference", "hist_paper"}
    assert "fg ratio quantiles" in cli("info", ds).output


@pytest.mark.parametrize("args, message", [
    (["--where", "bogus < 1"], "unknown column 'bogus'; the index has: key, shard, row"),
    (["--where", "fg_ratio <"], "--where: expression ends too early"),
    (["--where", "fg_ratio < 'a'"], "cannot compare number with string"),
    (["--where", "fg_ratio"], "is not a condition"),
    (["--where", "hist > 1"], "cannot be compared"),
    (["--where", "__import__('os')"], "--where"),
    (["--max-fg", "1.5"], "--max-fg must be a fraction in [0, 1]"),
])
def test_filter_errors_are_one_line(ds, tmp_path, args, message):
    r = cli("filter", ds, *args, "--out", tmp_path / "v.json")
    assert r.exit_code == 1, r.output
    assert message in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "v.json").exists()


def test_where_operators_against_numpy(ds, tmp_path):
    t = index_of(ds)
    fg = t.column("fg_ratio").to_numpy()
    nc = t.column("n_components").to_numpy()
    area = t.column("pass_area").to_numpy(zero_copy_only=False)
    keys = np.array(t.column("key").to_pylist())
    rows = t.column("row").to_numpy()
    cases = {
        "fg_ratio < 0.4 and n_components <= 2 or not pass_area": ((fg < 0.4) & (nc <= 2)) | ~area,
        "fg_ratio < 0.4 and (n_components <= 2 or not pass_area)": (fg < 0.4) & ((nc <= 2) | ~area),
        "n_components in (0, 2) or key in ('0000000001', \"0000000007\")": np.isin(nc, [0, 2]) | np.isin(keys, ["0000000001", "0000000007"]),
        "n_components not in (1) and pass_area == true": ~np.isin(nc, [1]) & area,
        "NOT pass_area = false AND 0.1 <= fg_ratio": area & (0.1 <= fg),
        "row >= 990 or row < 3": (rows >= 990) | (rows < 3),
        "fg_ratio != 0.05 and n_components <> 1": (fg != np.float32(0.05)) & (nc != 1),
    }
    for i, (where, expect) in enumerate(cases.items()):
        out = tmp_path / f"w{i}.json"
        r = cli("filter", ds, "--where", where, "--out", out)
        assert r.exit_code == 0, (where, r.output)
        assert accepted_rows(json.loads(out.read_text())) == sorted(rows[expect].tolist()), where


# ---------------------------------------------------------------- the --where language (unit)

@pytest.mark.parametrize("text, canonical", [
    ("fg_ratio<0.4 AND n_components<=2 OR NOT pass_area", "fg_ratio < 0.4 and n_components <= 2 or not pass_area"),
    ("(a = 1 or b > 2) and c", "(a == 1 or b > 2) and c"),
    ("not (a < 1 and b)", "not (a < 1 and b)"),
    ("x in (1, 2.5, -3)", "x in (1, 2.5, -3)"),
    ("x not in ('a', \"b'c\")", "x not in ('a', 'b\\'c')"),
    ("a <> -1e-3", "a != -0.001"),
    ("((a))", "a"),
    ("a and (b and c)", "a and b and c"),
])
def test_parse_render(text, canonical):
    from factory.views.predicate import parse_where, render

    assert render(parse_where(text)) == canonical
    assert render(parse_where(canonical)) == canonical


@pytest.mark.parametrize("text", ["", "a <", "a < 1 <", "(a", "a)", "a in 1", "a in ()", "a + 1 > 2", "a < 1 < 2",
                                  "a ; b", "'unterminated"])
def test_parse_errors(text):
    from factory.views.predicate import PredicateError, parse_where

    with pytest.raises(PredicateError, match="--where"):
        parse_where(text)


def test_render_roundtrip_property():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from factory.views.predicate import (
        BoolOp,
        Cmp,
        Col,
        In,
        Lit,
        Not,
        parse_where,
        render,
    )

    leaf = st.one_of(
        st.builds(Cmp, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), st.builds(Col, st.sampled_from(["a", "b"])),
                  st.builds(Lit, st.one_of(st.integers(-5, 5), st.floats(-2, 2, allow_nan=False).map(lambda v: round(v, 3))))),
        st.builds(Col, st.sampled_from(["p", "q"])),
        st.builds(In, st.builds(Col, st.just("k")), st.lists(st.builds(Lit, st.text("abc'\\", max_size=3)), min_size=1, max_size=3).map(tuple), st.booleans()),
    )
    tree = st.recursive(leaf, lambda kids: st.one_of(
        st.builds(Not, kids),
        st.builds(BoolOp, st.sampled_from(["and", "or"]), st.lists(kids, min_size=2, max_size=3).map(tuple))), max_leaves=8)

    @settings(max_examples=150, deadline=None)
    @given(tree)
    def check(node):
        text = render(node)
        assert render(parse_where(text)) == text

    check()


# ---------------------------------------------------------------- the filter's numpy pass over a piece (views/scan)

def test_one_pass_bitmaps_equal_the_per_shard_ones():
    """`scan.shard_bitmaps` (one scatter, one packing, one base64 of every shard of a piece) gives what
    `format.encode_rows` gives each shard alone: mixed shard sizes (1 to 40 rows, so spans of every length
    mod 3 bytes), empty, full and sparse masks, a first row anywhere; a layout whose rows are not consecutive
    per shard is refused (None) for the row-list path."""
    from factory.views.scan import shard_bitmaps

    rng = np.random.default_rng(1)
    for trial in range(200):
        sizes = rng.integers(1, 41, rng.integers(1, 30))
        first_row = int(rng.integers(0, 1000))
        shard = np.repeat(np.arange(len(sizes)) + int(rng.integers(0, 5)), sizes).astype(np.int32)
        row = np.arange(first_row, first_row + sizes.sum(), dtype=np.int64)
        mask = rng.random(len(row)) < rng.choice([0.0, 0.05, 0.5, 0.95, 1.0])
        want = fmt.encode_accepted({int(s): row[mask & (shard == s)] for s in np.unique(shard)})
        assert shard_bitmaps(shard, row, mask) == want, trial
    row = np.array([0, 1, 3, 4], np.int64)  # a gap inside shard 0
    assert shard_bitmaps(np.zeros(4, np.int32), row, np.ones(4, bool)) is None
    assert shard_bitmaps(np.array([0, 1, 0], np.int32), np.arange(3), np.ones(3, bool)) is None  # shard 0 twice


def test_plain_forms_encode_as_the_json_encoder_does():
    """The view file's accepted rows written without the JSON encoder (`format.plain_forms`) are the encoder's
    bytes; anything not plain falls back to the encoder."""
    from factory.format.names import canonical_json
    from factory.views.views import view_bytes

    rng = np.random.default_rng(2)
    acc = {str(k): fmt.encode_rows(k * 100 + np.flatnonzero(rng.random(int(rng.integers(1, 60))) < 0.5))
           for k in rng.permutation(300).tolist()}
    head = {"kind": "view", "samples": 3}

    def encoder_bytes(accepted):
        text = json.dumps(head, indent=1, sort_keys=True)
        lines = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}"
                           for k, v in sorted(accepted.items(), key=lambda kv: int(kv[0])))
        return (text[:-2] + ',\n "accepted": {\n' + lines + "\n }\n}\n").encode()

    assert fmt.plain_forms(acc) is not None
    for accepted in (acc, {}, {**acc, "7": {"first": 1, "n": 1, "bits": "AQ=="}},
                     {**acc, "8": {"n": 1, "first": 1, "bits": "AQ=="}}, {**acc, "9": {"first": True, "n": 1, "bits": "AQ=="}},
                     {**acc, "10": {"first": 1, "n": 1, "bits": "é\n"}}, {**acc, "1\n": {"first": 1, "n": 1, "bits": ""}}):
        assert fmt.accepted_sha256(accepted) == fmt.sha256_bytes(canonical_json(accepted))
        if all(k.strip().isdigit() for k in accepted):
            assert view_bytes({**head, "accepted": accepted}) == encoder_bytes(accepted)
    assert fmt.plain_forms({**acc, "8": {"n": 1, "first": 1, "bits": "AQ=="}}) is None
    assert fmt.plain_forms({**acc, "10": {"first": 1, "n": 1, "bits": "é\n"}}) is None


def test_arrow_columns_as_numpy_and_scalars_without_conversion():
    """`scan.column_np` equals Arrow's own conversion (booleans with nulls as false, sliced arrays, several
    chunks); `predicate.arrow_scalar` equals ``pyarrow.scalar``; a column it cannot view is None."""
    from factory.views.predicate import arrow_scalar
    from factory.views.scan import column_np

    b = pa.array([True, None, False, True, True, None, True, False, True, True], pa.bool_())
    for arr in (b, b.slice(3), pa.chunked_array([b.slice(1, 4), b.slice(6)])):
        got = column_np(arr)
        assert got.dtype == bool and got.tolist() == [bool(v) for v in arr.to_pylist()]
    f = pa.chunked_array([pa.array(np.arange(7, dtype=np.float32)).slice(2), pa.array(np.ones(3, np.float32))])
    assert column_np(f).tolist() == f.to_numpy().tolist()
    assert column_np(pa.array([1, None], pa.int32())) is None and column_np(pa.array(["a"])) is None
    for v, t in ((True, None), (False, None), (3, None), (-(1 << 63), None), (0.1, None), (0.1, pa.float32()),
                 (2.5, pa.float16()), (1e300, pa.float32()), (-1e300, pa.float16()), ("x", None), (7, pa.int8())):
        want = pa.scalar(v, t)
        got = arrow_scalar(v, t)
        assert got.type == want.type and got.equals(want), (v, t)


def test_quantiles_from_counted_pieces_equal_numpy():
    """`card.quantiles` over pieces (with the pieces' `top16_counts` summed, and without) is
    ``np.quantile`` of their concatenation, negatives, zeros of both signs and ties included."""
    from factory.dataset.card import quantiles, top16_counts

    rng = np.random.default_rng(3)
    pieces = [rng.standard_normal(int(rng.integers(1, 400_000))).astype(np.float32) for _ in range(6)]
    pieces += [np.round(rng.random(300_000), 3).astype(np.float32), np.array([0.0, -0.0, 0.0], np.float32)]
    qs = [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0]
    want = np.quantile(np.concatenate(pieces), qs).astype(np.float32)
    counts = sum(top16_counts(p) for p in pieces)
    assert quantiles(pieces, qs, counts).tolist() == want.tolist()
    assert quantiles(pieces, qs).tolist() == want.tolist()
    assert quantiles(pieces, qs, np.zeros_like(counts)).tolist() == want.tolist()  # wrong counts

