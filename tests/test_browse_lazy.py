"""factory browse over a compacted index (format 3 and later) read lazily: the same counts, pages, histograms and saved
view bytes as `factory filter` and as the same dataset before compaction; opening reads no index data, the
first page one row group, a filter only its columns; caches bounded in bytes; a changed page is one line.
The session's shapes dataset (1,000 candidates, 4 shards) compacted into parts of 2 row groups."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_browse import filter_line
from test_filter import build_dataset, cli, index_of

from factory import format as fmt
from factory.browse import api, lazy, queries
from factory.browse.api import Browser
from factory.dataset import compact as cp
from factory.format import FactoryError, FormatError
from factory.format import index as fidx

WHERES = ["", "fg_ratio < 0.3", "n_components <= 2 and not (fg_ratio < 0.05)", "pass_area == true or row < 10"]


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> str:
    return build_dataset(tmp_path_factory)


@pytest.fixture(scope="module")
def compacted(ds, tmp_path_factory) -> str:
    """A copy of the dataset compacted into 2 parts of 500 rows, each 2 row groups of one 250-row shard."""
    mp = pytest.MonkeyPatch()
    mp.setattr(cp, "PART_ROWS", 500)
    mp.setattr(cp, "GROUP_ROWS", 250)
    root = str(tmp_path_factory.mktemp("lazy") / "shapes")
    shutil.copytree(ds, root)
    try:
        r = cli("upgrade", root, "--compact")
    finally:
        mp.undo()
    assert r.exit_code == 0, r.output
    m = fmt.open_dataset(root).manifest
    assert m["format_version"] >= 3 and [p["row_groups"] for p in fidx.index_parts(m)] == \
        [[[0, 1, 250], [1, 1, 250]], [[2, 1, 250], [3, 1, 250]]]
    return root


@pytest.mark.parametrize("where", WHERES)
def test_counts_pages_and_histograms_equal_the_uncompacted_dataset(ds, compacted, tmp_path, where):
    lazy_b, flat = Browser(compacted, views_dir=str(tmp_path)), Browser(ds, views_dir=str(tmp_path))
    line = filter_line(compacted, *(["--where", where] if where else []), "--out", tmp_path / "v.json")
    assert lazy_b.counts(where)["line"] == flat.counts(where)["line"] == line
    t = index_of(ds)
    fg, rows = t.column("fg_ratio").to_numpy(), t.column("row").to_numpy()
    for show in ("accepted", "rejected", "all"):
        for sort, desc in (("row", False), ("row", True), ("fg_ratio", True), ("n_components", False)):
            got = []
            for offset in range(0, 1000, 96):  # pages across row groups and parts
                page = lazy_b.rows(where, show=show, sort=sort, descending=desc, offset=offset, limit=96)
                for r in page["rows"]:
                    assert 0 <= r.pop("key_bucket") < 1000  # the column compaction adds
                assert page == flat.rows(where, show=show, sort=sort, descending=desc, offset=offset, limit=96)
                got += [r["row"] for r in page["rows"]]
            assert len(got) == page["total"] and len(set(got)) == len(got)
            if sort == "fg_ratio" and show == "all":  # independent: descending fg_ratio, ties by row
                assert got == rows[np.lexsort((rows, -fg))].tolist()
    for column in ("fg_ratio", "n_components", "pass_area", "hist_maxima"):
        assert lazy_b.histogram(column, where) == flat.histogram(column, where)


def test_saved_views_and_tags_are_factory_filters_bytes(compacted, tmp_path):
    views = tmp_path / "views"
    views.mkdir()
    b = Browser(compacted, views_dir=str(views))
    where = "n_components <= 2 and fg_ratio >= 0.05"
    b.save_view("small", where)
    filter_line(compacted, "--where", where, "--out", views / "cli.json")
    assert (views / "small.json").read_bytes() == (views / "cli.json").read_bytes()
    b.tag("bad", [700, 3, 260])
    filter_line(compacted, "--where", "row in (3, 260, 700)", "--out", views / "cli-tag.json")
    assert (views / "bad.json").read_bytes() == (views / "cli-tag.json").read_bytes()
    assert [r["row"] for r in b.rows("#bad")["rows"]] == [3, 260, 700]
    c = b.compare("bad", "small")
    assert c["both"] == b.counts("#bad and #small")["samples"] and c["either"] == b.counts("#bad or #small")["samples"]
    assert c["neither"] == 1000 - c["either"] and c["only_a"] == 3 - c["both"]
    # a view of the compacted dataset: the counts of factory filter on it, pages of its rows only
    v = Browser(str(views / "small.json"))
    assert v.counts("fg_ratio < 0.3")["line"] == filter_line(views / "small.json", "--where", "fg_ratio < 0.3",
                                                             "--out", tmp_path / "w.json")
    page = v.rows("", show="accepted", limit=500)
    assert page["total"] == json.loads((views / "small.json").read_text())["samples"]
    assert all(r["accepted"] and r["n_components"] <= 2 for r in page["rows"])


def test_open_reads_no_index_data_and_a_filter_only_its_columns(compacted, monkeypatch):
    reads = []
    real = fidx.read_row_groups

    def spy(pf, groups, columns, where):
        reads.append((os.path.basename(where), tuple(groups), tuple(sorted(columns))))
        return real(pf, groups, columns, where)

    monkeypatch.setattr(fidx, "read_row_groups", spy)
    b = Browser(compacted)
    assert reads == []
    page = b.rows("", limit=48)
    assert [r["row"] for r in page["rows"]] == list(range(48))
    assert [(p, g) for p, g, _ in reads] == [("000000-000001.parquet", (0,))]  # the first row group only
    reads.clear()
    b.counts("fg_ratio < 0.3 and n_components <= 2")
    assert {c for _, _, c in reads} == {("fg_ratio", "n_components")}
    assert sorted((p, g) for p, g, _ in reads) == [("000000-000001.parquet", (1,)), ("000002-000003.parquet", (0,)),
                                            ("000002-000003.parquet", (1,))]  # the first row group's are kept
    reads.clear()
    b.tile(page["rows"][5]["key"], "mask")  # its row group is kept: no read
    assert reads == []


def test_caches_are_bounded_in_bytes(compacted, monkeypatch):
    monkeypatch.setattr(api, "FILTER_BYTES", 1)  # the newest filter only
    b = Browser(compacted)
    b.index.cache = lazy.ByteCache(20_000)
    for i in range(5):
        b.rows(f"fg_ratio < 0.{i + 1}", sort="fg_ratio")
        assert len(b._filters) == 1 and b.index.cache.used <= 20_000
    assert len(b.index.cache) > 0
    monkeypatch.setattr(queries, "SORT_DEPTH", 100)
    with pytest.raises(FactoryError, match="paged 100 rows deep"):
        b.rows("", sort="fg_ratio", offset=96, limit=48)
    assert len(b.rows("", sort="row", offset=960, limit=48)["rows"]) == 40  # row order: any depth


def test_a_changed_page_is_one_line(compacted, tmp_path):
    root = str(tmp_path / "bad")
    shutil.copytree(compacted, root)
    path = os.path.join(root, "index", "000002-000003.parquet")
    meta = pq.read_metadata(path)
    chunk = meta.row_group(1).column(meta.schema.to_arrow_schema().get_field_index("fg_ratio"))
    data = bytearray(open(path, "rb").read())
    data[chunk.data_page_offset + chunk.total_compressed_size // 2] ^= 0xFF  # a page of fg_ratio: footer unchanged
    open(path, "wb").write(bytes(data))
    b = Browser(root)
    assert b.rows("", limit=5)["total"] == 1000 and b.counts("n_components <= 2")["samples"] > 0
    with pytest.raises(FormatError, match="changed or corrupt"):
        b.counts("fg_ratio < 0.3")
