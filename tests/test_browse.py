"""factory browse: the API over the index (the counts of `factory filter`, paging, sorting, histograms, a sample's
detail, saved views byte-identical to `factory filter`'s), the server over HTTP, Ctrl-C, `preview --html`,
a hostile dataset and S3. The session's shapes dataset (1,000 candidates, 4 shards) from test_filter."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from test_filter import build_dataset, cli, index_of

from factory import format as fmt
from factory.browse.api import Browser
from factory.browse.page import embed_json
from factory.browse.server import BrowseServer
from factory.format import FactoryError
from factory.views.predicate import PredicateError

WHERES = ["", "fg_ratio < 0.3", "n_components <= 2 and not (fg_ratio < 0.05)", "pass_area == true and hist_maxima >= 2"]


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> str:
    return build_dataset(tmp_path_factory)


@pytest.fixture(scope="module")
def browser(ds) -> Browser:
    return Browser(ds)


def filter_line(*args) -> str:
    """The line `factory filter` prints, without its "OUT: VIEW_ID; " head."""
    r = cli("filter", *args)
    assert r.exit_code == 0, r.output
    return r.output.strip().split("; ", 1)[1]


def members_of(ds: str, key: str) -> dict[str, bytes]:
    """A sample's members read straight from its shard's tar (independent of factory code)."""
    man = json.load(open(os.path.join(ds, "manifest.json")))
    row = int(key)
    entry = next(s for s in man["shards"] if s["first_row"] <= row < s["first_row"] + s["samples"])
    out = {}
    with tarfile.open(os.path.join(ds, entry["path"])) as tf:
        for m in tf:
            if m.name.split(".", 1)[0] == key:
                out[m.name.split(".", 1)[1]] = tf.extractfile(m).read()
    return out


# ---------------------------------------------------------------- the API, no server

@pytest.mark.parametrize("where", WHERES)
def test_counts_are_those_of_factory_filter(ds, browser, tmp_path, where):
    line = filter_line(ds, *(["--where", where] if where else []), "--out", tmp_path / "v.json")
    assert browser.counts(where)["line"] == line


def test_counts_of_a_view_are_those_of_factory_filter_on_it(ds, tmp_path):
    view = tmp_path / "paper.json"
    filter_line(ds, "--max-fg", "0.5", "--histogram", "reference", "--out", view)
    b = Browser(str(view))
    for where in WHERES[1:3]:
        assert b.counts(where)["line"] == filter_line(view, "--where", where, "--out", tmp_path / "w.json",
                                                      "--overwrite")
    # each rejected candidate names the view's filters that rejected it, from its index values
    t = index_of(ds)
    fg = dict(zip(t.column("key").to_pylist(), t.column("fg_ratio").to_pylist()))
    hist = dict(zip(t.column("key").to_pylist(), t.column("pass_hist_reference").to_pylist()))
    page = b.rows("", show="rejected", limit=500)
    assert page["total"] == 1000 - json.loads(view.read_text())["samples"] > 0
    for r in page["rows"]:
        assert not r["accepted"] and r["rejected_by"] == []
        assert set(r["rejected_by_view"]) == ({"max_fg"} if fg[r["key"]] >= 0.5 else set()) | \
            (set() if hist[r["key"]] else {"histogram"})


def test_pages_are_the_filtered_index_sorted(ds, browser):
    t = index_of(ds)
    fg = t.column("fg_ratio").to_numpy()
    comp = t.column("n_components").to_numpy()
    rows = t.column("row").to_numpy()
    where = "fg_ratio < 0.3"
    keep = fg < np.float32(0.3)
    for show, sel in (("accepted", keep), ("rejected", ~keep), ("all", np.ones_like(keep))):
        order = np.lexsort((rows[sel], -comp[sel]))  # n_components descending, ties by row
        expected = rows[sel][order].tolist()
        got = []
        for offset in range(0, int(sel.sum()), 128):
            page = browser.rows(where, show=show, sort="n_components", descending=True, offset=offset, limit=128)
            assert page["total"] == int(sel.sum())
            got += [r["row"] for r in page["rows"]]
            for r in page["rows"]:
                assert r["accepted"] == bool(keep[r["row"]])
                assert r["rejected_by"] == ([] if r["accepted"] else ["where"])
        assert got == expected, show
    asc = [r["fg_ratio"] for r in browser.rows("", sort="fg_ratio", limit=500)["rows"]]
    assert asc == sorted(asc) and len(asc) == 500
    with pytest.raises(FactoryError, match="cannot sort by 'nope'"):
        browser.rows("", sort="nope")
    with pytest.raises(FactoryError, match="show must be"):
        browser.rows("", show="everything")
    with pytest.raises(FactoryError, match="limit"):
        browser.rows("", limit=100000)
    with pytest.raises(PredicateError, match="unknown column 'fgratio'"):
        browser.rows("fgratio < 1")


def test_histograms_count_the_index(ds, browser):
    t = index_of(ds)
    fg = t.column("fg_ratio").to_numpy().astype(np.float64)
    h = browser.histogram("fg_ratio", "fg_ratio < 0.3")
    edges = np.array(h["edges"])
    assert len(edges) == 31 and edges[0] == pytest.approx(fg.min()) and edges[-1] == pytest.approx(fg.max())
    acc = fg < np.float32(0.3)
    assert h["accepted"] == np.histogram(fg[acc], edges)[0].tolist()
    assert h["rejected"] == np.histogram(fg[~acc], edges)[0].tolist()
    assert sum(h["accepted"]) + sum(h["rejected"]) == 1000
    b = browser.histogram("pass_area")
    area = t.column("pass_area").to_numpy(zero_copy_only=False)
    assert b == {"column": "pass_area", "kind": "bool", "labels": ["false", "true"],
                 "accepted": [int((~area).sum()), int(area.sum())], "rejected": [0, 0]}
    c = browser.histogram("n_components")  # small integers: one bar per value
    assert c["edges"][1] - c["edges"][0] == 1.0 and sum(c["accepted"]) == 1000
    with pytest.raises(FactoryError, match="no histogram"):
        browser.histogram("key")


def test_sample_detail_is_the_samples_members(ds, browser, monkeypatch):
    from factory.browse import samples

    def whole_shard(*a, **k):
        raise AssertionError("a shard read whole, where the index has the sample's byte range")

    monkeypatch.setattr(samples, "read_shard_samples", whole_shard)
    key = "0000000613"
    browser = Browser(ds)
    d = browser.sample(key)
    raw = members_of(ds, key)
    assert d["meta"] == json.loads(raw["json"])
    z = np.load(io.BytesIO(raw["latent.npy"]), allow_pickle=False)
    assert d["latent"]["norm"] == pytest.approx(float(np.linalg.norm(z)), abs=1e-3)
    assert d["latent"]["shape"] == list(z.shape)
    t = index_of(ds)
    i = t.column("key").to_pylist().index(key)
    assert d["index"]["fg_ratio"] == pytest.approx(t.column("fg_ratio")[i].as_py())
    assert d["index"]["hist"] == pytest.approx(t.column("hist")[i].as_py())
    assert d["members"] == {ext: len(b) for ext, b in sorted(raw.items())}
    assert d["pictures"] == ["image", "mask"] and d["accepted"]
    assert browser.picture(key, "mask") == (raw["mask.png"], "image/png")
    # the tile: the image, with the mask tinted red and outlined
    img = np.asarray(Image.open(io.BytesIO(browser.tile(key, "none"))))
    assert np.array_equal(img, np.asarray(Image.open(io.BytesIO(raw["png"])).convert("RGB")))
    over = np.asarray(Image.open(io.BytesIO(browser.tile(key, "mask")))).astype(int)
    mask = np.asarray(Image.open(io.BytesIO(raw["mask.png"]))) > 127
    assert mask.any() and np.array_equal((over != img).any(-1), mask)
    assert (over[mask][:, 0] >= img[mask][:, 0]).all()
    for bad in ("../manifest.json", "0000000613.json", "-1", "12345678901234567890123", "0000099999", "١٢"):
        with pytest.raises(FactoryError, match="no sample"):
            browser.sample(bad)
    with pytest.raises(FactoryError, match="has no teacher"):
        browser.picture(key, "teacher")
    with pytest.raises(FactoryError, match="unknown picture"):
        browser.picture(key, "../../manifest.json")


def test_saved_view_is_byte_identical_to_factory_filter(ds, tmp_path):
    b = Browser(ds, views_dir=str(tmp_path / "views"))
    os.makedirs(tmp_path / "views")
    where = "n_components <= 2 and fg_ratio >= 0.05"
    r = b.save_view("small-objects", where)
    path = tmp_path / "views" / "small-objects.json"
    assert r["path"] == str(path) and r["written"] and r["line"] == b.counts(where)["line"]
    saved = path.read_bytes()
    path.unlink()
    filter_line(ds, "--where", where, "--out", path)
    assert path.read_bytes() == saved
    assert json.loads(saved)["view_id"] == r["view_id"]
    assert b.save_view("small-objects.json", where)["written"] is False  # the same view again: a no-op
    with pytest.raises(FactoryError, match="views are immutable"):
        b.save_view("small-objects", "fg_ratio < 0.1")
    r = b.save_view("everything", "")  # no filter: `factory filter DATASET --out`
    all_bytes = path.with_name("everything.json").read_bytes()
    path.with_name("everything.json").unlink()
    filter_line(ds, "--out", path.with_name("everything.json"))
    assert path.with_name("everything.json").read_bytes() == all_bytes
    for bad in ("../escape", "a/b", "", ".hidden", "x" * 100, "..", "a\\b", "name with space"):
        with pytest.raises(FactoryError, match="view name"):
            b.save_view(bad, where)
    with pytest.raises(PredicateError):
        b.save_view("broken", "fg_ratio <")
    assert sorted(os.listdir(tmp_path / "views")) == ["everything.json", "small-objects.json"]
    (tmp_path / "file").write_text("")
    with pytest.raises(FactoryError, match="cannot write .* choose another --views-dir"):
        Browser(ds, views_dir=str(tmp_path / "file")).save_view("x", where)
    assert not os.path.exists(tmp_path / "escape.json")


def test_saved_view_of_a_view_is_byte_identical(ds, tmp_path):
    view = tmp_path / "paper.json"
    filter_line(ds, "--max-fg", "0.5", "--out", view)
    b = Browser(str(view))  # saved next to the view by default
    b.save_view("strict", "n_components <= 1")
    saved = (tmp_path / "strict.json").read_bytes()
    (tmp_path / "strict.json").unlink()
    filter_line(view, "--where", "n_components <= 1", "--out", tmp_path / "strict.json")
    assert (tmp_path / "strict.json").read_bytes() == saved


def relabelled(ds: str, out) -> str:
    """A relabelled dataset of the first 40 samples: teacher maps written directly (each GAN mask dilated by
    two pixels, a stand-in for a trained teacher), then `factory relabel`."""
    from scipy import ndimage

    view, maps = out / "first40.json", out / "maps"
    filter_line(ds, "--where", "row < 40", "--out", view)
    v = json.loads(view.read_text())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for row in range(40):
            key = fmt.sample_key(row)
            m = np.asarray(Image.open(io.BytesIO(members_of(ds, key)["mask.png"]))) > 127
            png = io.BytesIO()
            Image.fromarray((ndimage.binary_dilation(m, iterations=2) * 255).astype(np.uint8)).save(png, "PNG")
            ti = tarfile.TarInfo(f"{key}.{fmt.EXT_TEACHER}")
            ti.size = len(png.getvalue())
            tf.addfile(ti, io.BytesIO(png.getvalue()))
    os.makedirs(maps / "parts")
    (maps / fmt.maps_part_name(0)).write_bytes(buf.getvalue())
    (maps / fmt.MAPS_MANIFEST).write_text(json.dumps({
        "kind": fmt.MAPS_KIND, "format_version": fmt.FORMAT_VERSION,
        "parent": {"dataset_id": v["parent"]["dataset_id"], "view_id": v["view_id"], "url": str(view)},
        "teacher": {"sha256": "a" * 64, "label": "dilated masks"}, "samples": 40,
        "parts": [{"shard": 0, "path": fmt.maps_part_name(0), "sha256": fmt.sha256_bytes(buf.getvalue()),
                   "bytes": len(buf.getvalue()), "samples": 40}]}))
    r = cli("relabel", view, "--maps", maps, "--out", out / "teacher")
    assert r.exit_code == 0, r.output
    return str(out / "teacher")


def test_teacher_masks_of_a_relabelled_dataset(ds, tmp_path):
    root = relabelled(ds, tmp_path)
    b = Browser(root)
    assert b.meta()["relabelled"] and "teacher_iou" in b.meta()["columns"]
    key = "0000000007"
    raw = members_of(root, key)
    assert b.picture(key, "teacher") == (raw["teacher.png"], "image/png")
    assert b.sample(key)["pictures"] == ["image", "mask", "teacher"]
    img = np.asarray(Image.open(io.BytesIO(b.tile(key, "none")))).astype(int)
    tea = np.asarray(Image.open(io.BytesIO(b.tile(key, "teacher")))).astype(int)
    t = np.asarray(Image.open(io.BytesIO(raw["teacher.png"]))) >= fmt.TEACHER_FG_MIN
    m = np.asarray(Image.open(io.BytesIO(raw["mask.png"]))) > 127
    assert t.sum() > m.sum() > 0 and np.array_equal((tea != img).any(-1), t)
    assert (tea[t][:, 2] >= img[t][:, 2]).all()  # tinted blue, where the mask overlay is red
    where = "teacher_iou >= 0.5 and teacher_components <= 1"
    assert b.counts(where)["line"] == filter_line(root, "--where", where, "--out", tmp_path / "agree.json")
    ious = [r["teacher_iou"] for r in b.rows("", sort="teacher_iou", descending=True, limit=40)["rows"]]
    assert ious == sorted(ious, reverse=True) and len(ious) == 40


# ---------------------------------------------------------------- the server over HTTP

def get(url: str, headers: dict | None = None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def post(url: str, body: bytes, headers: dict | None = None):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})},
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_server_answers_the_page_and_api_then_stops(ds, tmp_path):
    threads = threading.active_count()
    b = Browser(ds, views_dir=str(tmp_path))
    with BrowseServer(b, 0) as srv:
        a = srv.address
        assert a.startswith("http://127.0.0.1:") and srv.httpd.server_address[0] == "127.0.0.1"
        status, headers, body = get(a)
        assert status == 200 and "script-src 'self'" in headers["Content-Security-Policy"]
        cfg = json.loads(body.decode().split('type="application/json">', 1)[1].split("</script>", 1)[0])
        assert cfg["meta"]["dataset_id"] == b.meta()["dataset_id"] and cfg["token"] == srv.httpd.token
        assert get(a + "app.js")[0] == 200 and get(a + "style.css")[0] == 200
        status, _, body = get(a + "api/rows?where=fg_ratio%20%3C%200.3&sort=fg_ratio&order=desc&offset=10&limit=5")
        assert status == 200
        assert json.loads(body) == json.loads(json.dumps(b.rows("fg_ratio < 0.3", sort="fg_ratio", descending=True,
                                                                offset=10, limit=5)))
        status, _, body = get(a + "api/rows?where=fg_ratio%20%3C")
        assert status == 400 and json.loads(body)["error"].startswith("--where:")
        key = json.loads(get(a + "api/rows?limit=1")[2])["rows"][0]["key"]
        status, headers, body = get(a + f"api/tile?key={key}&overlay=mask")
        assert status == 200 and headers["Content-Type"] == "image/png" and body.startswith(b"\x89PNG")
        assert get(a + f"api/picture?key={key}&which=mask")[2] == members_of(ds, key)["mask.png"]
        assert json.loads(get(a + f"api/sample?key={key}")[2])["key"] == key
        assert json.loads(get(a + "api/hist?column=fg_ratio")[2])["kind"] == "number"
        # nothing outside the dataset is served
        for path in ("../manifest.json", "manifest.json", "api/picture?key=../manifest&which=image",
                     "api/picture?key=0000000001&which=../../manifest.json", "api/tile?key=%2Fetc%2Fpasswd",
                     "static/../../format.py", "api/sample?key=0000000001/../x"):
            status, _, body = get(a + path)
            assert status in (400, 404) and b"dataset_id" not in body and b"import" not in body, path
        # another host name (DNS rebinding) is refused; saving needs the page's token
        assert get(a + "api/meta", {"Host": "evil.example:80"})[0] == 403
        body = json.dumps({"name": "small", "where": "fg_ratio < 0.3"}).encode()
        assert post(a + "api/save", body)[0] == 403
        assert post(a + "api/save", body, {"X-Factory-Token": "guess"})[0] == 403
        status, r = post(a + "api/save", body, {"X-Factory-Token": cfg["token"]})
        assert status == 200 and r["path"] == str(tmp_path / "small.json") and os.path.exists(r["path"])
        status, r = post(a + "api/save", json.dumps({"name": "../up", "where": ""}).encode(),
                         {"X-Factory-Token": cfg["token"]})
        assert status == 400 and "view name" in r["error"]
        # many tiles at once (the grid's first page): every one answered
        keys = [r["key"] for r in json.loads(get(a + "api/rows?limit=48&sort=fg_ratio")[2])["rows"]]
        with ThreadPoolExecutor(12) as ex:
            assert {s for s, _, _ in ex.map(lambda k: get(a + f"api/tile?key={k}"), keys)} == {200}
        port = srv.port
    assert not port_open(port)
    deadline = time.monotonic() + 5
    while threading.active_count() > threads and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == threads


def test_cli_prints_the_address_and_stops_on_ctrl_c(ds):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    # as from a terminal: Ctrl-C delivered (an earlier test's library may leave SIGINT ignored in this
    # process, and an ignored signal is inherited)
    p = subprocess.Popen([sys.executable, "-m", "factory.cli", "browse", ds, "--port", "0"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = [None]
        t = threading.Thread(target=lambda: line.__setitem__(0, p.stdout.readline()), daemon=True)
        t.start()
        t.join(60)
        assert line[0] and line[0].startswith("factory browse: http://127.0.0.1:"), (line[0], p.poll())
        address = line[0].split()[2]
        port = int(address.rsplit(":", 1)[1].strip("/"))
        assert json.loads(get(address + "api/meta")[2])["samples"] == 1000
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)  # request threads are joined (each has a 10 s socket timeout)
        assert p.returncode == 0, err
        assert "stopped" in out and "Traceback" not in err
        assert not port_open(port)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def test_busy_port_is_one_line(ds):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = cli("browse", ds, "--port", s.getsockname()[1])
    assert r.exit_code == 1 and "choose another --port" in r.output and len(r.output.strip().splitlines()) == 1


# ---------------------------------------------------------------- preview --html

def test_preview_html_is_one_self_contained_file(ds, tmp_path):
    out = tmp_path / "card.html"
    r = cli("preview", ds, "--html", out, "--n", "12")
    assert r.exit_code == 0, r.output
    text = out.read_text()
    cfg = json.loads(text.split('type="application/json">', 1)[1].split("</script>", 1)[0])
    keys = [fmt.sample_key(i) for i in range(12)]
    assert cfg["mode"] == "static" and [r["key"] for r in cfg["rows"]] == keys
    assert set(cfg["tiles"]) == set(cfg["details"]) == set(keys)
    assert "views_dir" not in cfg["meta"] and "token" not in cfg
    for key in keys:
        for uri in cfg["tiles"][key].values():
            assert uri.startswith("data:image/png;base64,")
    mask = cfg["pictures"][keys[3]]["mask"]
    import base64

    assert base64.b64decode(mask.split(",", 1)[1]) == members_of(ds, keys[3])["mask.png"]
    assert all(u.startswith("data:") for u in re.findall(r'(?:src|href)="([^"]*)"', text))  # nothing fetched
    assert "default-src 'none'" in text and set(cfg["hists"]) >= {"fg_ratio", "n_components", "pass_area"}
    cli("preview", ds, "--html", tmp_path / "again.html", "--n", "12")
    assert (tmp_path / "again.html").read_bytes() == out.read_bytes()  # deterministic
    r = cli("preview", ds)
    assert r.exit_code == 2 and "--html" in r.output
    r = cli("preview", ds, "--html", tmp_path / "card.png")
    assert r.exit_code == 1 and "*.html" in r.output


# ---------------------------------------------------------------- a hostile dataset

HOSTILE = "</script><script>window.pwned=1</script>\"'<img src=x onerror=\"window.pwned=2\">&amp;\u2028"


def rewrite_shard0(root: str, change) -> None:
    """Rewrite shard 0's tar through `change(name, bytes) -> bytes` and fix the manifest's sha256 and bytes."""
    path = os.path.join(root, "shards", "000000.tar")
    src = tarfile.open(path)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as dst:
        for m in src:
            data = change(m.name, src.extractfile(m).read())
            m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    src.close()
    data = buf.getvalue()
    with open(path, "wb") as f:
        f.write(data)
    mpath = os.path.join(root, "manifest.json")
    man = json.load(open(mpath))
    man["shards"][0]["sha256"] = fmt.sha256_bytes(data)
    man["shards"][0]["bytes"] = len(data)
    with open(mpath, "w") as f:
        json.dump(man, f)


def hostile_copy(ds: str, tmp_path) -> str:
    """The dataset copied into a folder whose name is markup, sample 0's JSON member holding markup too
    (a format 1 dataset: no byte ranges in its index, so its shards are read whole)."""
    root = str(tmp_path / 'x"<script>window.pwned=4</script>')
    shutil.copytree(ds, root)
    rewrite_shard0(root, lambda name, data: json.dumps({"note": HOSTILE}).encode()
                   if name == "0000000000.json" else data)
    mpath = os.path.join(root, "manifest.json")
    man = json.load(open(mpath))
    man["format_version"] = 1
    with open(mpath, "w") as f:
        json.dump(man, f)
    return root


def test_hostile_strings_cannot_leave_the_json(ds, tmp_path):
    root = hostile_copy(ds, tmp_path)
    b = Browser(root)
    assert b.spans is None and Browser(ds).spans is not None  # shards read whole here, one range read there
    assert b.sample("0000000000")["meta"] == {"note": HOSTILE}
    assert b.picture("0000000999", "mask")[0] == members_of(ds, "0000000999")["mask.png"]
    with BrowseServer(b, 0) as srv:
        _, _, body = get(srv.address)
        text = body.decode()
        assert text.count("<script") == 2 and "window.pwned" in text  # ours only: config (data) and app.js
        assert "</script><script>" not in text and "\u2028" not in text
        cfg = json.loads(text.split('type="application/json">', 1)[1].split("</script>", 1)[0])
        assert cfg["meta"]["url"] == root
        _, _, body = get(srv.address + "api/sample?key=0000000000")
        assert json.loads(body)["meta"]["note"] == HOSTILE
    assert "<" not in embed_json({"a": HOSTILE}) and json.loads(embed_json({"a": HOSTILE})) == {"a": HOSTILE}


# ---------------------------------------------------------------- S3

@pytest.mark.s3
def test_browse_an_s3_dataset(ds, s3_server, tmp_path):
    fs, bucket = s3_server["fs"], s3_server["bucket"]
    fs.put(ds, f"{bucket}/browse/shapes", recursive=True)
    url = f"s3://{bucket}/browse/shapes"
    b = Browser(url)
    where = "fg_ratio < 0.3"
    assert b.views_dir == f"s3://{bucket}/browse"
    assert b.counts(where)["line"] == Browser(ds).counts(where)["line"]
    key = b.rows(where, sort="fg_ratio", limit=1)["rows"][0]["key"]
    raw = members_of(ds, key)
    assert b.picture(key, "mask")[0] == raw["mask.png"] and b.sample(key)["meta"] == json.loads(raw["json"])
    r = b.save_view("small", where)
    assert r["path"] == f"s3://{bucket}/browse/small.json"
    saved = fs.cat(r["path"])
    filter_line(url, "--where", where, "--out", f"s3://{bucket}/browse/cli.json")
    assert fs.cat(f"s3://{bucket}/browse/cli.json") == saved
    # tags, the views panel and the latent map over the object store
    b.tag("bad", [1, 2])
    assert {v["name"]: v["samples"] for v in b.views()["views"]}["bad"] == 2
    assert b.counts("#bad or #small")["samples"] == b.counts("row in (1, 2) or fg_ratio < 0.3")["samples"]
    assert b.latent_map()["points"] == 1000
