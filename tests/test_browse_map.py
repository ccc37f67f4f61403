"""factory browse's latent map, tags, views panel and `#name` references over the API (no browser): the map is
the PCA of the latents (cached outside the dataset), a tag or a saved selection is the view `factory filter
--where "row in (...)"` writes, `#name` counts are those of the expanded filter. The session's shapes dataset."""
from __future__ import annotations

import base64
import json
import os

import numpy as np
import pytest
from test_browse import filter_line, get, post
from test_filter import build_dataset, cli, index_of

from factory import format as fmt
from factory.browse import latentmap
from factory.browse.api import Browser
from factory.browse.named import rows_where, split_refs
from factory.browse.server import BrowseServer
from factory.dataset.shards import open_latents
from factory.format import FactoryError


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> str:
    return build_dataset(tmp_path_factory)


def decode(m: dict, name: str, dtype: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(m[name]), dtype)


def rows_of(path) -> list[int]:
    v = json.loads(open(path).read())
    return fmt.AcceptedRows(v["accepted"], v["format_version"]).all_rows().tolist()


def test_the_map_is_the_pca_of_the_latents_and_is_cached(ds, tmp_path, monkeypatch):
    monkeypatch.setenv("FACTORY_HOME", str(tmp_path / "home"))
    b = Browser(ds, views_dir=str(tmp_path))
    m = b.latent_map()
    rows, x, y = decode(m, "rows", "<i4"), decode(m, "x", "<f4"), decode(m, "y", "<f4")
    assert m["points"] == m["total"] == 1000 and sorted(rows.tolist()) == list(range(1000))
    z = np.asarray(open_latents(ds)[:], np.float64)[rows]
    zc = z - z.mean(0)
    _, _, vt = np.linalg.svd(zc, full_matrices=False)
    for axis, got in enumerate((x, y)):  # the two leading components, up to sign
        want = zc @ vt[axis]
        assert abs(np.corrcoef(want, got)[0, 1]) > 0.999
    cached = tmp_path / "home" / "browse-maps" / b.meta()["dataset_id"] / "dataset-pca.npy"
    assert cached.exists() and not any(p.startswith("browse") for p in os.listdir(ds))
    arr = np.load(cached)
    arr[:] = 7.0  # a second page reads the cache: it does not compute again
    np.save(cached, arr)
    again = Browser(ds, views_dir=str(tmp_path)).latent_map()
    assert set(decode(again, "x", "<f4").tolist()) == {7.0}
    c = b.map_colours("fg_ratio", "fg_ratio < 0.3")
    t = index_of(ds)  # read independently of the browser
    at = {int(r): i for i, r in enumerate(t.column("row").to_numpy())}
    fg = t.column("fg_ratio").to_numpy()[[at[int(r)] for r in rows]]
    assert np.array_equal(decode(c, "values", "<f4"), fg.astype("<f4"))
    acc = np.unpackbits(np.frombuffer(base64.b64decode(c["accepted"]), np.uint8), bitorder="little")[:1000]
    assert np.array_equal(acc.astype(bool), fg < 0.3)
    assert b.map_colours("key")["kind"] == "category"
    with pytest.raises(FactoryError, match="map method"):
        b.latent_map("tsne")


def test_the_map_draws_a_deterministic_sample_of_large_sets(monkeypatch):
    monkeypatch.setattr(latentmap, "MAX_POINTS", 100)
    a, b = latentmap.sample(1000), latentmap.sample(1000)
    assert a.size == 100 and np.array_equal(a, b) and np.all(np.diff(a) > 0)
    assert np.array_equal(latentmap.sample(80), np.arange(80))


def test_map_of_a_view_is_its_rows(ds, tmp_path, monkeypatch):
    monkeypatch.setenv("FACTORY_HOME", str(tmp_path / "home"))
    view = tmp_path / "small.json"
    filter_line(ds, "--where", "fg_ratio < 0.3", "--out", view)
    b = Browser(str(view))
    rows = decode(b.latent_map(), "rows", "<i4")
    assert sorted(rows.tolist()) == rows_of(view)
    assert (tmp_path / "home" / "browse-maps" / b.meta()["dataset_id"] / f"{b.meta()['view_id']}-pca.npy").exists()


def test_tags_and_selections_are_views_of_explicit_rows(ds, tmp_path):
    views = tmp_path / "views"
    views.mkdir()
    b = Browser(ds, views_dir=str(views))
    r = b.tag("bad", [5, 3, 9])
    assert r["samples"] == 3 and rows_of(views / "bad.json") == [3, 5, 9]
    filter_line(ds, "--where", "row in (3, 5, 9)", "--out", tmp_path / "cli.json")
    assert (tmp_path / "cli.json").read_bytes() == (views / "bad.json").read_bytes().replace(b'"../', b'"')
    # any reader takes a tag as a view: factory info, factory.open, the trainers' index
    import factory
    from trainers.data.index import build_index

    r = cli("info", str(views / "bad.json"))
    assert r.exit_code == 0 and "row in (3, 5, 9)" in r.output
    assert factory.open(str(views / "bad.json")).rows().tolist() == [3, 5, 9]
    assert len(build_index(fmt.open_dataset(str(views / "bad.json")), split="all")) == 3
    b.tag("bad", [12])
    b.tag("bad", [5], "remove")
    assert rows_of(views / "bad.json") == [3, 9, 12]
    assert b.counts("#bad")["line"].startswith("3 of 1,000 accepted (0.3%) where #bad;")
    # #name in the filter box: counts of the expanded filter, factory filter's
    where = "#bad or fg_ratio < 0.1"
    expanded = b.expand(where)
    assert expanded == "(row in (3, 9, 12)) or fg_ratio < 0.1"
    line = filter_line(ds, "--where", expanded, "--out", tmp_path / "x.json")
    assert b.counts(where)["samples"] == json.loads((tmp_path / "x.json").read_text())["samples"]
    assert b.counts(expanded)["line"] == line
    b.select([1, 2, 700])
    assert b.rows("#selection")["total"] == 3
    b.save_view("picked", "#selection")
    assert rows_of(views / "picked.json") == [1, 2, 700]
    b.select([4])  # a new selection: the same filter text, new rows
    assert [r["row"] for r in b.rows("#selection")["rows"]] == [4]
    # the views panel: tags marked, counts; two views compared
    b.save_view("small", "fg_ratio < 0.3")
    listing = {v["name"]: v for v in b.views()["views"]}
    assert listing["bad"]["tag"] and listing["picked"]["tag"] and not listing["small"]["tag"]
    assert listing["small"]["samples"] == b.counts("fg_ratio < 0.3")["samples"]
    small = set(rows_of(views / "small.json"))
    c = b.compare("bad", "small")
    assert c["both"] == len({3, 9, 12} & small) and c["either"] == len({3, 9, 12} | small)
    assert c["neither"] == 1000 - c["either"] and c["only_a"] + c["both"] == 3
    # a saved filter is never rewritten as a tag; names are checked; unknown references are one line
    with pytest.raises(FactoryError, match="saved filter, not a tag"):
        b.tag("small", [1])
    with pytest.raises(FactoryError, match="view name"):
        b.tag("../up", [1])
    with pytest.raises(FactoryError, match="map's selection"):
        b.tag("selection", [1])
    with pytest.raises(FactoryError, match="not samples"):
        b.tag("bad", [10**6])
    with pytest.raises(FactoryError, match="#nothing: no view"):
        b.counts("#nothing")
    assert b.counts("key == '#bad'")["samples"] == 0  # '#' inside a string is text


def test_refs_split_outside_strings():
    assert split_refs("#a and key != '#b' or #c-1") == [("ref", "a"), ("text", " and key != '#b' or "),
                                                         ("ref", "c-1")]
    assert rows_where([3, 1, 3]) == "row in (1, 3)" and rows_where([]) == "row < 0"
    with pytest.raises(FactoryError, match="must name a view"):
        split_refs("# and x")


def test_histograms_of_strings_and_the_label_band(ds, tmp_path):
    b = Browser(ds, views_dir=str(tmp_path))
    h = b.histogram("pass_area", "fg_ratio < 0.3")
    assert h["kind"] == "bool" and sum(h["accepted"]) == b.counts("fg_ratio < 0.3")["samples"]
    with pytest.raises(FactoryError, match="no histogram over more than"):
        b.histogram("key")


def test_server_routes_for_map_tags_and_views(ds, tmp_path):
    b = Browser(ds, views_dir=str(tmp_path))
    with BrowseServer(b, 0) as srv:
        a = srv.address
        token = srv.httpd.token
        status, _, body = get(a + "api/map")
        assert status == 200 and json.loads(body)["points"] == 1000
        assert json.loads(get(a + "api/mapcolour?column=n_components")[2])["kind"] == "number"
        body = json.dumps({"name": "good", "rows": [1, 2, 3]}).encode()
        assert post(a + "api/tag", body)[0] == 403  # changes need the page's token
        status, r = post(a + "api/tag", body, {"X-Factory-Token": token})
        assert status == 200 and r["samples"] == 3
        for bad in ({"name": "good", "rows": "1,2"}, {"name": "good", "rows": [1.5]}, {"name": 3, "rows": []},
                    {"name": "good", "rows": [True]}):
            assert post(a + "api/tag", json.dumps(bad).encode(), {"X-Factory-Token": token})[0] == 400
        assert post(a + "api/select", json.dumps({"rows": [4, 5]}).encode(), {"X-Factory-Token": token})[0] == 200
        v = json.loads(get(a + "api/views")[2])
        assert v["selection"] == 2 and [x["name"] for x in v["views"]] == ["good"]
        c = json.loads(get(a + "api/compare?a=good&b=selection")[2])
        assert (c["both"], c["either"], c["neither"]) == (0, 5, 995)
        assert json.loads(get(a + "api/rows?where=%23good")[2])["total"] == 3


def test_caches_stay_bounded_whatever_is_clicked(ds, tmp_path, monkeypatch):
    from factory.browse import named

    monkeypatch.setenv("FACTORY_HOME", str(tmp_path / "home"))
    views = tmp_path / "views"
    views.mkdir()
    b = Browser(ds, views_dir=str(views))
    for i in range(named.MAX_ROW_SETS + 4):
        b.tag(f"t{i}", [i, i + 1])
        assert b.counts(f"#t{i} or fg_ratio < {0.01 * i}")["samples"] >= 2
        b.rows(f"#t{i}", sort="fg_ratio")
        b.histogram("fg_ratio", f"#t{i}")
    assert len(b.named._rows) <= named.MAX_ROW_SETS and len(b._filters) <= 8 and len(b._orders) <= 8
    assert all(s is None or "accepted" not in s for _, s in b.named._files.values())  # summaries, no rows
    assert len(b.views()["views"]) == named.MAX_ROW_SETS + 4
    b.latent_map()
    b.map_colours("n_components", "#t0")
    assert len(b._maps) == 1
    b.tag("t0", [999])  # a tag rewritten: its rows are read again, not served stale
    assert b.counts("#t0")["samples"] == 3


def test_umap_when_installed_is_seeded_and_cached(ds, tmp_path, monkeypatch):
    """The UMAP path's plumbing (umap-learn itself is not a test dependency): offered only when the package
    is found, fitted on every input row's latent with a fixed seed, cached beside the PCA."""
    import importlib.machinery
    import sys
    import types

    monkeypatch.setenv("FACTORY_HOME", str(tmp_path / "home"))
    b = Browser(ds, views_dir=str(tmp_path))
    if "umap" not in latentmap.methods():
        with pytest.raises(FactoryError, match="pip install umap-learn"):
            b.latent_map("umap")
    calls = []

    class UMAP:
        def __init__(self, n_components, random_state):
            calls.append((n_components, random_state))

        def fit_transform(self, x):
            calls.append(x.shape)
            return x[:, :2] * 2

    fake = types.ModuleType("umap")
    fake.UMAP = UMAP
    fake.__spec__ = importlib.machinery.ModuleSpec("umap", None)
    monkeypatch.setitem(sys.modules, "umap", fake)
    assert latentmap.methods() == ["pca", "umap"] and b.meta()["map_methods"] == ["pca", "umap"]
    m = b.latent_map("umap")
    assert calls == [(2, 0), (1000, open_latents(ds).shape[1])]
    rows = decode(m, "rows", "<i4")
    z = np.asarray(open_latents(ds)[:], np.float32)[rows]
    assert np.array_equal(decode(m, "x", "<f4"), z[:, 0] * 2)
    assert (tmp_path / "home" / "browse-maps" / b.meta()["dataset_id"] / "dataset-umap.npy").exists()
