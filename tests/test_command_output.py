"""What the factory commands tell a user: filter counts that add up, `info` without raw dicts, a plain
answer for a file that is not a dataset, a dataset card whose load snippet runs on stock webdataset, and
progress as plain lines when piped."""
from __future__ import annotations

import glob
import json
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from helpers import cli

from factory import format as fmt
from factory.cli import main

N = 40


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("output") / "shapes40")
    r = cli("generate", "--generator", "shapes", "--n", N, "--shard-size", 20, "--resolution", 64,
            "--workers", 0, "--quiet", "--out", root)
    assert r.exit_code == 0, r.output
    return root


def index_of(root: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in sorted(glob.glob(os.path.join(root, "index", "*.parquet")))])


# ---------------------------------------------------------------- item 6: counts that add up

def test_filter_counts_add_up_in_turn_with_the_overlap(ds, tmp_path):
    out = tmp_path / "v.json"
    r = cli("filter", ds, "--max-fg", "0.3", "--histogram", "reference", "--out", out, "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    t = index_of(ds)
    fg = t.column("fg_ratio").to_numpy()
    hist = t.column("pass_hist_reference").to_numpy()
    area_bad, hist_bad = fg >= 0.3, ~hist
    # each filter alone (kept as before: a row failing both counts for both)
    assert d["rejected"] == {"max_fg": int(area_bad.sum()), "histogram": int(hist_bad.sum())}
    # in turn, as the paper's Table 4: histogram counts only among the rows max_fg kept
    assert d["rejected_in_turn"] == [
        {"filter": "max_fg", "rejected": int(area_bad.sum()), "also_rejected": 0},
        {"filter": "histogram", "rejected": int((hist_bad & ~area_bad).sum()),
         "also_rejected": int((hist_bad & area_bad).sum())},
    ]
    overlap = int((hist_bad & area_bad).sum())
    assert overlap > 0  # the case the issue saw: per-filter counts alone add up to more than the rejected
    assert sum(s["rejected"] for s in d["rejected_in_turn"]) == d["counts"]["rejected"] == N - d["samples"]
    assert sum(d["rejected"].values()) == d["counts"]["rejected"] + overlap
    assert json.loads(out.read_text())["rejected_in_turn"] == d["rejected_in_turn"]

    # the text says the same, in turn, with the overlap
    r = cli("filter", ds, "--max-fg", "0.3", "--histogram", "reference", "--out", out)
    assert r.exit_code == 0 and "(unchanged)" in r.output
    first, second = d["rejected_in_turn"]
    want = (f"rejected by max_fg {first['rejected']}, then histogram {second['rejected']} "
            f"({d['counts']['rejected']} in all; also rejected by histogram {overlap})")
    assert r.output.strip().endswith(want), r.output

    # info: text and JSON (the new field beside the old ones)
    info = json.loads(cli("info", out, "--json").output)
    assert info["rejected"] == d["rejected"] and info["rejected_in_turn"] == d["rejected_in_turn"]
    text = cli("info", out).output.splitlines()
    assert f"  rejected by  {want[len('rejected by '):]}" in text


def test_one_filter_line_is_unchanged_and_an_old_view_still_reads(ds, tmp_path):
    out = tmp_path / "v.json"
    r = cli("filter", ds, "--max-fg", "0.3", "--out", out)
    assert r.exit_code == 0
    assert re.search(r"; rejected by max_fg \d+$", r.output.strip()), r.output
    two = tmp_path / "two.json"
    assert cli("filter", ds, "--max-fg", "0.3", "--histogram", "reference", "--out", two).exit_code == 0
    # a view written before the in-turn counts: info shows its per-filter counts as they are
    view = json.loads(two.read_text())
    old = {k: v for k, v in view.items() if k != "rejected_in_turn"}
    two.write_text(json.dumps(old))
    line = [ln for ln in cli("info", two).output.splitlines() if ln.startswith("  rejected by")]
    assert line == ["  rejected by  " + ", ".join(f"{k} {n}" for k, n in view["rejected"].items())]
    # and the same filter again brings it up to date (same view id) instead of refusing it
    r = cli("filter", ds, "--max-fg", "0.3", "--histogram", "reference", "--out", two)
    assert r.exit_code == 0 and "(unchanged)" not in r.output, r.output
    assert json.loads(two.read_text())["rejected_in_turn"] == view["rejected_in_turn"]


# ---------------------------------------------------------------- item 8: info without raw dicts

def test_info_formats_true_iou_and_direction(ds):
    r = cli("info", ds)
    assert r.exit_code == 0, r.output
    assert "{" not in r.output.split("  latents")[0] and "{'" not in r.output, r.output
    m = json.load(open(os.path.join(ds, "manifest.json")))
    d = m["spec"]["direction"]
    lines = r.output.splitlines()
    assert f"  direction    {d['name']}  sha256 {d['sha256']}   shift r 5.0   mask rule luminance" in lines
    iou = [ln for ln in lines if ln.startswith("    true IoU (mean)")]
    assert len(iou) == 1 and re.fullmatch(r"    true IoU \(mean\)     all 0\.\d+  area_and_hist_reference 0\.\d+",
                                          iou[0]), iou


# ---------------------------------------------------------------- item 9: not a dataset

def test_a_file_that_is_not_a_dataset_gets_one_plain_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text("# hello\n")
    (tmp_path / "other.json").write_text('{"a": 1}')
    for cmd, extra in (("verify", []), ("info", []), ("filter", ["--max-fg", "0.5", "--out", "v.json"]),
                       ("preview", ["--out", "p.png"])):
        r = cli(cmd, "README.md", *extra)
        assert r.exit_code == 1, (cmd, r.output)
        assert r.output.strip() == "Error: README.md is not a dataset folder, a manifest or a view", (cmd, r.output)
    r = cli("info", "other.json")
    assert r.exit_code == 1
    assert r.output.strip() == "Error: other.json is not a dataset folder, a manifest or a view (its \"kind\" is None)"
    assert not (tmp_path / "v.json").exists() and not (tmp_path / "p.png").exists()


# ---------------------------------------------------------------- items 14, 15: the card

def card_snippet(root: str) -> str:
    text = open(os.path.join(root, "README.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1
    return blocks[0]


def run_snippet(code: str) -> list[dict]:
    """Run the card's snippet as written, collecting every sample its loop sees."""
    got: list[dict] = []
    assert "for s in ds:\n" in code
    exec(compile(code.replace("for s in ds:\n", "for s in ds:\n    _got.append(s)\n", 1), "card", "exec"),
         {"_got": got})
    return got


def test_card_says_it_holds_every_candidate_and_how_to_keep_the_accepted(ds):
    text = open(os.path.join(ds, "README.md")).read()
    assert "{root}" not in text
    assert "Every generated candidate, rejected ones included" in text
    assert "`KEY.json`" in text and "index/*.parquet" in text and "pass_area and pass_hist_reference" in text
    assert "factory filter . --max-fg 0.5 --histogram reference --out view.json" in text
    assert 'decode("pil")' in text and "RGB" in text and 'decode("l")' in text
    assert f'DATASET = "{os.path.abspath(ds)}"' in card_snippet(ds)


def test_card_snippet_runs_on_stock_webdataset_with_a_single_channel_mask(ds):
    pytest.importorskip("webdataset")
    code = card_snippet(ds)
    t = index_of(ds)
    accepted = (t.column("pass_area").to_numpy() & t.column("pass_hist_reference").to_numpy())
    want = sorted(f"{r:010d}" for r in t.column("row").to_numpy()[accepted])
    assert 0 < len(want) < N

    got = run_snippet(code)
    assert sorted(s["__key__"] for s in got) == want  # only the accepted ones
    s = got[0]
    assert s["png"].mode == "RGB" and s["png"].size == (64, 64)
    assert s["mask.png"].mode == "L" and s["mask.png"].size == (64, 64)
    assert set(np.unique(np.asarray(s["mask.png"]))) <= {0, 255}
    assert s["latent.npy"].shape == (120,)

    # without the select line: every candidate, rejected ones included
    every = run_snippet("\n".join(ln for ln in code.splitlines() if ".select(accepted)" not in ln))
    assert len(every) == N

    # the view recipe of the card, with the same stock reader
    view = os.path.join(os.path.dirname(ds), "card-view.json")
    assert cli("filter", ds, "--max-fg", "0.5", "--histogram", "reference", "--out", view).exit_code == 0
    import base64

    from factory.dataset.card import VIEW_ROWS

    doc = json.load(open(view))
    rows = set(fmt.AcceptedRows(doc["accepted"], doc["format_version"]).all_rows().tolist())
    assert VIEW_ROWS in open(os.path.join(ds, "README.md")).read()
    assert eval(VIEW_ROWS.replace('"view.json"', repr(view)), {"json": json, "base64": base64}) == rows
    via_view = run_snippet(code.replace(".select(accepted)", ".select(lambda s: int(s[\"__key__\"]) in _rows)")
                           .replace("import io", f"import io\n_rows = {sorted(rows)!r}", 1))
    assert sorted(s["__key__"] for s in via_view) == want  # the spec's max_fg is the paper's 0.5


def test_piped_progress_is_plain_lines_with_rate_and_eta(tmp_path, monkeypatch):
    """With stderr not a terminal, progress comes as whole lines (no carriage returns), each with
    the rate and the ETA, at most one per FACTORY_PROGRESS_SECONDS."""
    monkeypatch.setenv("FACTORY_PROGRESS_SECONDS", "0")
    r = CliRunner().invoke(main, ["generate", "--generator", "shapes", "--resolution", "32", "--n", "60",
                                  "--shard-size", "20", "--workers", "0", "--out", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("generate:")]
    assert "\r" not in r.stderr and len(lines) >= 3, r.stderr
    assert all("cand/s" in ln and "<" in ln for ln in lines[1:])  # rate, elapsed<remaining
    assert lines[-1].startswith("generate: 100%") and "shards 3/3" in lines[-1]
