"""factory browse in a real headless browser (Debian's chromium and chromedriver through selenium): the page
over the session's shapes dataset, a filter typed, the counts read, a view saved (the bytes `factory filter`
writes), a screenshot; the self-contained preview opened from its file; a hostile dataset runs no script.
scripts/test.sh installs chromium; every wait has a timeout, the driver is quit in a finally and killed by a
watchdog if it ever hangs."""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
from urllib.parse import urlencode

import pytest
from test_browse import HOSTILE, filter_line, hostile_copy
from test_filter import build_dataset

from factory.browse.api import Browser
from factory.browse.server import BrowseServer
from factory.views.predicate import PredicateError, parse_where

WAIT_S = 10
WATCHDOG_S = 120


def browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("the page test needs chromium and chromedriver: run scripts/test.sh (it installs them on "
                    "Debian/Ubuntu) or apt-get install -y chromium chromium-driver")
    return chromium, driver


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> str:
    return build_dataset(tmp_path_factory)


@pytest.fixture(scope="module")
def chrome(tmp_path_factory):
    """One headless chromium for the module (own profile folder), quit in a finally; a watchdog kills the
    driver and its browser should anything hang."""
    import psutil
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = browser_paths()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
              "--disable-extensions", "--disable-background-networking", "--window-size=1400,1000",
              f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(driver_path, log_output=subprocess.DEVNULL)
    driver = webdriver.Chrome(service=service, options=opts)

    def kill():
        try:
            proc = psutil.Process(service.process.pid)
            for p in proc.children(recursive=True) + [proc]:
                p.kill()
        except (psutil.Error, AttributeError):
            pass

    watchdog = threading.Timer(WATCHDOG_S, kill)
    watchdog.daemon = True
    watchdog.start()
    try:
        driver.set_page_load_timeout(WAIT_S)
        driver.set_script_timeout(WAIT_S)
        yield driver
    finally:
        watchdog.cancel()
        try:
            driver.quit()
        finally:
            kill()


def wait_for(driver, test, what: str):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,)
                         ).until(lambda d: test(d), message=what)


def text_of(driver, css: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).text


def tiles(driver) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#grid figure.tile")


def type_filter(driver, where: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.ID, "where")
    box.clear()
    box.send_keys(where + Keys.ENTER)


def images_loaded(driver) -> bool:
    return driver.execute_script("return [...document.images].every(i => i.complete && i.naturalWidth > 0)")


def severe_logs(driver) -> list:
    """Script errors and failed loads (the filter box's refused filter answers 400 on purpose)."""
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "status of 400" not in e["message"]]


def test_page_filters_counts_and_saves_the_view(ds, chrome, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    views = tmp_path / "views"
    views.mkdir()
    with BrowseServer(Browser(ds, views_dir=str(views)), 0) as srv:
        chrome.get(srv.address)
        wait_for(chrome, lambda d: len(tiles(d)) == 48, "the first page of 48 tiles")
        all_line = filter_line(ds, "--out", tmp_path / "all.json")
        wait_for(chrome, lambda d: text_of(d, "#counts") == all_line, "the counts of the whole dataset")
        assert text_of(chrome, "#range") == "1–48 of 1,000"
        # a filter the parser refuses: its one-line error inline
        type_filter(chrome, "fg_ratio <")
        with pytest.raises(PredicateError) as e:
            parse_where("fg_ratio <")
        wait_for(chrome, lambda d: text_of(d, "#where-error") == str(e.value), "the parser's error")
        # a filter: the counts of factory filter, every tile accepted
        where = "n_components <= 2 and fg_ratio < 0.3"
        type_filter(chrome, where)
        line = filter_line(ds, "--where", where, "--out", tmp_path / "cli.json")
        wait_for(chrome, lambda d: text_of(d, "#counts") == line, f"counts {line!r}")
        assert text_of(chrome, "#where-error") == ""
        n = json.loads((tmp_path / "cli.json").read_text())["samples"]
        wait_for(chrome, lambda d: text_of(d, "#range") == f"1–48 of {n:,}", "the filtered range")
        assert {t.get_attribute("class") for t in tiles(chrome)} == {"tile acc"}
        chrome.find_element(By.ID, "next").click()
        wait_for(chrome, lambda d: text_of(d, "#range").startswith("49–"), "the second page")
        # rejected rows say which filter rejected them
        chrome.find_element(By.CSS_SELECTOR, "#show option[value=rejected]").click()
        badges = "#grid figure.tile .badge"
        wait_for(chrome, lambda d: d.find_elements(By.CSS_SELECTOR, badges) and all(
            b.text == "✗ where" and b.get_attribute("title") == "rejected by where"
            for b in d.find_elements(By.CSS_SELECTOR, badges)), "rejected tiles")
        # overlay off, a sample's detail
        chrome.find_element(By.ID, "overlay-none").click()
        first = tiles(chrome)[0]
        key = first.get_attribute("data-key")
        assert "overlay=none" in first.find_element(By.TAG_NAME, "img").get_attribute("src")
        first.click()
        wait_for(chrome, lambda d: key in text_of(d, "#detail") and "latent ‖z‖" in text_of(d, "#detail"),
                 "the sample's detail")
        assert json.loads(text_of(chrome, "#detail pre.json"))["key"] == key
        wait_for(chrome, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#hist rect")) > 10, "the histogram")
        # save the filter as a view: the bytes factory filter writes
        chrome.find_element(By.ID, "view-name").send_keys("browser-view")
        chrome.find_element(By.ID, "save").click()
        wait_for(chrome, lambda d: text_of(d, "#save-status").startswith("saved "), "the saved view")
        saved = (views / "browser-view.json").read_bytes()
        (views / "browser-view.json").unlink()
        filter_line(ds, "--where", where, "--out", views / "browser-view.json")
        assert (views / "browser-view.json").read_bytes() == saved
        assert json.loads(saved)["view_id"] in text_of(chrome, "#save-status")
        # the state lives in the address: a shared link opens the same page; arrow keys page
        srv_browser = srv.httpd.browser
        chrome.get(srv.address + "#" + urlencode({"where": where, "sort": "fg_ratio", "order": "desc"}))
        first = srv_browser.rows(where, sort="fg_ratio", descending=True, limit=1)["rows"][0]["key"]
        wait_for(chrome, lambda d: text_of(d, "#counts") == line and tiles(d)
                 and tiles(d)[0].get_attribute("data-key") == first, "the page of the link")
        assert chrome.find_element(By.ID, "where").get_attribute("value") == where
        chrome.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
        wait_for(chrome, lambda d: text_of(d, "#range").startswith("49–") and "offset=48" in d.current_url,
                 "the next page by key")
        wait_for(chrome, images_loaded, "every tile loaded")
        shot = tmp_path / "browse.png"
        assert chrome.save_screenshot(str(shot)) and shot.read_bytes().startswith(b"\x89PNG")
        assert severe_logs(chrome) == []


def test_preview_html_opens_from_its_file(ds, chrome, tmp_path):
    from selenium.webdriver.common.by import By

    from factory.browse.export import write_preview_html

    out = tmp_path / "card.html"
    write_preview_html(ds, str(out), n=12)
    chrome.get_log("browser")  # drained: only this page's entries count
    chrome.get(out.as_uri())
    wait_for(chrome, lambda d: len(tiles(d)) == 12, "12 tiles")
    imgs = chrome.find_elements(By.CSS_SELECTOR, "#grid img")
    wait_for(chrome, lambda d: all(d.execute_script("return arguments[0].naturalWidth", i) == 64 for i in imgs),
             "every picture decoded")
    tiles(chrome)[5].click()
    wait_for(chrome, lambda d: "0000000005" in text_of(d, "#detail"), "the detail of sample 5")
    assert len(chrome.find_elements(By.CSS_SELECTOR, "#hist rect")) > 10
    assert severe_logs(chrome) == []  # the policy allowed its own script and style, nothing was fetched


def test_hostile_dataset_runs_no_script(ds, chrome, tmp_path):
    from selenium.webdriver.common.by import By

    root = hostile_copy(ds, tmp_path)
    chrome.get_log("browser")
    with BrowseServer(Browser(root), 0) as srv:
        chrome.get(srv.address)
        wait_for(chrome, lambda d: len(tiles(d)) == 48, "the first page")
        assert text_of(chrome, "header .url") == root
        chrome.find_element(By.CSS_SELECTOR, 'figure[data-key="0000000000"]').click()
        wait_for(chrome, lambda d: d.find_elements(By.CSS_SELECTOR, "#detail pre.json"), "the detail")
        shown = chrome.find_element(By.CSS_SELECTOR, "#detail pre.json").get_attribute("textContent")
        assert json.loads(shown) == {"note": HOSTILE}
        assert chrome.execute_script("return window.pwned === undefined")
        assert not chrome.find_elements(By.CSS_SELECTOR, "#detail img[src=x], #detail script")
        wait_for(chrome, images_loaded, "every tile loaded")
        assert severe_logs(chrome) == []


# ---------------------------------------------------------------- map, tags, brushing, views, the sample view

def map_pixels(browser: Browser):
    """Rows and canvas pixels of the map's points, as the page places them (356 px square, 8 px margin)."""
    import base64

    import numpy as np

    m = browser.latent_map()
    rows, x, y = (np.frombuffer(base64.b64decode(m[k]), d) for k, d in (("rows", "<i4"), ("x", "<f4"), ("y", "<f4")))
    size, pad = 356, 8
    x, y = x.astype(np.float64), y.astype(np.float64)
    sx = (size - 2 * pad) / max(1e-12, float(np.float32(x.max()) - np.float32(x.min())))
    sy = (size - 2 * pad) / max(1e-12, float(np.float32(y.max()) - np.float32(y.min())))
    px = np.floor(pad + (x - x.min()) * sx + 0.5)
    py = np.floor(size - pad - (y - y.min()) * sy + 0.5)
    return rows, px, py


def in_polygon(poly, x: float, y: float) -> bool:
    ok = False
    j = len(poly) - 1
    for i in range(len(poly)):
        (xi, yi), (xj, yj) = poly[i], poly[j]
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            ok = not ok
        j = i
    return ok


def rows_of_view(path) -> list[int]:
    from factory import format as fmt

    v = json.loads(open(path).read())
    return fmt.AcceptedRows(v["accepted"], v["format_version"]).all_rows().tolist()


def by_testid(driver, testid: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')


def drag(driver, element, points) -> None:
    """Press at the first point (offsets from the element's centre), move through the others, release."""
    from selenium.webdriver.common.action_chains import ActionChains

    ac = ActionChains(driver, duration=0)
    ac.move_to_element_with_offset(element, *points[0]).click_and_hold()
    for p in points[1:]:
        ac.move_to_element_with_offset(element, *p)
    ac.release().perform()


def test_lasso_on_the_map_saves_the_selected_samples(ds, chrome, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    views = tmp_path / "views"
    views.mkdir()
    b = Browser(ds, views_dir=str(views))
    with BrowseServer(b, 0) as srv:
        chrome.get(srv.address)
        wait_for(chrome, lambda d: by_testid(d, "map").get_attribute("data-points") == "1000", "the map's points")
        # a click on an isolated point opens its sample
        import numpy as np

        rows, px, py = map_pixels(b)
        d2 = (px[:, None] - px[None, :]) ** 2 + (py[:, None] - py[None, :]) ** 2
        np.fill_diagonal(d2, 1e9)
        lone = int(np.flatnonzero((d2.min(1) > 100) & (np.abs(px - 178) < 150) & (np.abs(py - 178) < 150))[0])
        ActionChains(chrome).move_to_element_with_offset(by_testid(chrome, "map"), int(px[lone]) - 178,
                                                         int(py[lone]) - 178).click().perform()
        key = f"{int(rows[lone]):010d}"
        wait_for(chrome, lambda d: d.find_elements("css selector", "#detail .dkey")
                 and text_of(d, "#detail .dkey") == key, "the clicked point's sample")
        by_testid(chrome, "close").click()
        by_testid(chrome, "lasso").click()
        poly = [(-120, -120), (40, -150), (130, -20), (60, 120), (-80, 90), (-140, 0)]
        drag(chrome, by_testid(chrome, "map"), poly)
        wait_for(chrome, lambda d: d.find_element("id", "where").get_attribute("value") == "#selection",
                 "the selection in the filter box")
        path = json.loads(by_testid(chrome, "map").get_attribute("data-path"))
        assert len(path) >= len(poly)  # the lasso, not a box
        rows, px, py = map_pixels(b)
        want = sorted(int(r) for r, x, y in zip(rows, px, py) if in_polygon(path, x, y))
        assert 0 < len(want) < 1000
        wait_for(chrome, lambda d: text_of(d, "#counts").startswith(f"{len(want):,} of 1,000 accepted"),
                 "the selection's count")
        assert by_testid(chrome, "map").get_attribute("data-selected") == str(len(want))
        shown = {int(t.get_attribute("data-row")) for t in tiles(chrome)}
        assert shown <= set(want) and len(shown) == min(48, len(want))
        chrome.find_element("id", "view-name").send_keys("lasso-pick")
        chrome.find_element("id", "save").click()
        wait_for(chrome, lambda d: text_of(d, "#save-status").startswith("saved "), "the saved view")
        assert rows_of_view(views / "lasso-pick.json") == want
        # the bytes factory filter writes for those explicit rows; factory info reads it
        filter_line(ds, "--where", "row in (" + ", ".join(map(str, want)) + ")", "--out", views / "cli.json")
        assert (views / "cli.json").read_bytes() == (views / "lasso-pick.json").read_bytes()
        # the Tag button tags the map's selection while the grid shows it
        by_testid(chrome, "tag").send_keys("near")
        by_testid(chrome, "tag-apply").click()
        wait_for(chrome, lambda d: text_of(d, "#tag-status").startswith(f"tagged {len(want)}"), "the selection tagged")
        assert rows_of_view(views / "near.json") == want
        # listed with the tags (a view of explicit rows) with its count; one click opens it
        wait_for(chrome, lambda d: f"#lasso-pick\n{len(want)}" in text_of(d, '[data-testid="tags"]'), "listed")
        type_filter(chrome, "")
        wait_for(chrome, lambda d: text_of(d, "#counts").startswith("1,000 of 1,000"), "no filter")
        by_testid(chrome, "open-lasso-pick").click()
        wait_for(chrome, lambda d: text_of(d, "#counts").startswith(f"{len(want):,} of 1,000 accepted (")
                 and "where #lasso-pick;" in text_of(d, "#counts"), "the view opened")
        assert severe_logs(chrome) == []


def test_tags_brushing_views_and_the_sample_view(ds, chrome, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    views = tmp_path / "views"
    views.mkdir()
    with BrowseServer(Browser(ds, views_dir=str(views)), 0) as srv:
        chrome.get(srv.address)
        wait_for(chrome, lambda d: len(tiles(d)) == 48, "the first page")
        # a tag on three samples (shift-click marks them) is a view of those three
        picked = tiles(chrome)[3:6]
        rows = sorted(int(t.get_attribute("data-row")) for t in picked)
        for t in picked:
            ActionChains(chrome).key_down(Keys.SHIFT).click(t).key_up(Keys.SHIFT).perform()
        by_testid(chrome, "tag").send_keys("bad" + Keys.ENTER)
        wait_for(chrome, lambda d: text_of(d, "#tag-status").startswith("tagged 3"), "the tag saved")
        assert rows_of_view(views / "bad.json") == rows
        filter_line(ds, "--where", "row in (" + ", ".join(map(str, rows)) + ")", "--out", views / "cli.json")
        assert (views / "cli.json").read_bytes() == (views / "bad.json").read_bytes()
        wait_for(chrome, lambda d: "#bad\n3" in text_of(d, '[data-testid="tags"]'), "the tag listed and counted")
        by_testid(chrome, "open-bad").click()
        wait_for(chrome, lambda d: text_of(d, "#counts").startswith("3 of 1,000 accepted (0.3%) where #bad;"), "#bad")
        assert sorted(int(t.get_attribute("data-row")) for t in tiles(chrome)) == rows
        # the key t tags the hovered sample too
        type_filter(chrome, "")
        wait_for(chrome, lambda d: len(tiles(d)) == 48, "all samples again")
        hovered = tiles(chrome)[10]
        chrome.execute_script("document.activeElement.blur()")  # keys go to the page, not the filter box
        ActionChains(chrome).move_to_element(hovered).send_keys("t").perform()
        wait_for(chrome, lambda d: text_of(d, "#tag-status").startswith("tagged 1"), "the hovered sample tagged")
        assert rows_of_view(views / "bad.json") == sorted(rows + [int(hovered.get_attribute("data-row"))])
        # compare two views: both, either, neither
        type_filter(chrome, "fg_ratio < 0.3")
        small_line = filter_line(ds, "--where", "fg_ratio < 0.3", "--out", tmp_path / "small.json")
        wait_for(chrome, lambda d: text_of(d, "#counts") == small_line, "fg_ratio < 0.3")
        chrome.find_element("id", "view-name").send_keys("small")
        chrome.find_element("id", "save").click()
        wait_for(chrome, lambda d: d.find_elements("css selector", '[data-testid="open-small"]'), "small listed")
        chrome.find_element("css selector", '#compare-a option[value="bad"]').click()
        chrome.find_element("css selector", '#compare-b option[value="small"]').click()
        by_testid(chrome, "compare-go").click()
        bad, small = set(rows_of_view(views / "bad.json")), set(rows_of_view(views / "small.json"))
        wait_for(chrome, lambda d: text_of(d, '[data-testid="compare"]').startswith(f"both {len(bad & small)}"),
                 "the comparison")
        assert f"either {len(bad | small)}" in text_of(chrome, '[data-testid="compare"]')
        assert f"neither {1000 - len(bad | small):,}" in text_of(chrome, '[data-testid="compare"]')
        # brushing fg_ratio's histogram writes the predicate; the count is factory filter's
        type_filter(chrome, "")
        wait_for(chrome, lambda d: text_of(d, "#counts").startswith("1,000 of 1,000"), "no filter")
        hist = by_testid(chrome, "hist-fg_ratio").find_element("css selector", "svg")
        w = hist.size["width"]
        drag(chrome, hist, [(int(-w * 0.35), 10), (0, 10), (int(-w * 0.1), 10)])
        wait_for(chrome, lambda d: "fg_ratio >=" in d.find_element("id", "where").get_attribute("value"), "brushed")
        where = chrome.find_element("id", "where").get_attribute("value")
        line = filter_line(ds, "--where", where, "--out", tmp_path / "brush.json")
        wait_for(chrome, lambda d: text_of(d, "#counts") == line, f"counts {line!r}")
        # a checkbox writes its clause too
        by_testid(chrome, "check-pass_area-true").click()
        wait_for(chrome, lambda d: "(pass_area == true)" in d.find_element("id", "where").get_attribute("value"),
                 "the checkbox's clause")
        where = chrome.find_element("id", "where").get_attribute("value")
        line = filter_line(ds, "--where", where, "--out", tmp_path / "check.json")
        wait_for(chrome, lambda d: text_of(d, "#counts") == line, f"counts {line!r}")
        # the sample view: full size, opacity, next/previous by key and button; kept on reload
        type_filter(chrome, "")
        wait_for(chrome, lambda d: text_of(d, "#counts").startswith("1,000 of 1,000"), "no filter")
        keys = [t.get_attribute("data-key") for t in tiles(chrome)]
        tiles(chrome)[2].click()
        wait_for(chrome, lambda d: by_testid(d, "detail").is_displayed() and keys[2] in text_of(d, "#detail"),
                 "the sample view")
        assert f"key={keys[2]}" in chrome.current_url
        opacity = by_testid(chrome, "opacity")
        chrome.execute_script("arguments[0].value = 0.2; arguments[0].dispatchEvent(new Event('input'))", opacity)
        assert chrome.find_element("css selector", "#detail img.over").value_of_css_property("opacity") == "0.2"
        chrome.find_element("tag name", "body").send_keys(Keys.ARROW_RIGHT)
        wait_for(chrome, lambda d: f"key={keys[3]}" in d.current_url and keys[3] in text_of(d, "#detail .dkey"),
                 "the next sample by key")
        by_testid(chrome, "prev").click()
        wait_for(chrome, lambda d: keys[2] in text_of(d, "#detail .dkey"), "the previous sample by button")
        by_testid(chrome, "next").click()
        wait_for(chrome, lambda d: keys[3] in text_of(d, "#detail .dkey"), "the next sample by button")
        chrome.refresh()
        wait_for(chrome, lambda d: d.find_elements("css selector", "#detail .dkey")
                 and text_of(d, "#detail .dkey") == keys[3], "the sample kept on reload")
        # page size and zoom
        chrome.find_element("css selector", '#limit option[value="24"]').click()
        wait_for(chrome, lambda d: len(tiles(d)) == 24, "24 tiles a page")
        zoom = by_testid(chrome, "zoom")
        chrome.execute_script("arguments[0].value = 200; arguments[0].dispatchEvent(new Event('input'))", zoom)
        wait_for(chrome, lambda d: tiles(d)[0].size["width"] >= 200, "bigger tiles")
        assert severe_logs(chrome) == []
