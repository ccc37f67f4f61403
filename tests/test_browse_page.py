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
