"""The screenshots of docs/browse.md, taken with selenium in headless chromium over a shapes dataset.

    python scripts/browse_screenshots.py [--data /tmp/browse-shots] [--out docs/img/browse]

Makes a 1,000-sample shapes dataset (64 px) when DATA has none, serves it with `factory browse`'s server and
saves, as PNG (palette-quantized, small): the whole page, the latent map with a lasso selection, the tags and
views panels, the brushed histograms and the sample view.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from PIL import Image  # noqa: E402

from factory.browse.api import Browser  # noqa: E402
from factory.browse.server import BrowseServer  # noqa: E402


def save(png: bytes, path: str, width: int | None = None) -> None:
    im = Image.open(io.BytesIO(png)).convert("RGB")
    if width and im.width > width:
        im = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
    im.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"{path}: {im.width}x{im.height}, {os.path.getsize(path):,} bytes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/tmp/browse-shots")
    ap.add_argument("--out", default="docs/img/browse")
    a = ap.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    ds = os.path.join(a.data, "shapes")
    if not os.path.exists(os.path.join(ds, "manifest.json")):
        subprocess.run([sys.executable, "-m", "factory.cli", "generate", "--generator", "shapes", "--n", "1000",
                        "--shard-size", "250", "--resolution", "64", "--workers", "0", "--quiet", "--out", ds],
                       check=True)
    views = os.path.join(a.data, "views")
    shutil.rmtree(views, ignore_errors=True)
    os.makedirs(views)
    os.makedirs(a.out, exist_ok=True)
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    profile = tempfile.mkdtemp()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--hide-scrollbars", f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    d = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=opts)
    wait = WebDriverWait(d, 30, 0.05)
    tid = lambda t: d.find_element(By.CSS_SELECTOR, f'[data-testid="{t}"]')  # noqa: E731
    loaded = lambda: d.execute_script("return [...document.images].every(i => i.complete && i.naturalWidth > 0)")  # noqa: E731
    try:
        with BrowseServer(Browser(ds, views_dir=views), 0) as srv:
            d.get(srv.address + "#colour=n_components")
            wait.until(lambda _: tid("map").get_attribute("data-points"))
            # a tag on three samples, a saved filter
            tiles = d.find_elements(By.CSS_SELECTOR, "#grid figure.tile")
            for t in tiles[1:4]:
                ActionChains(d).key_down(Keys.SHIFT).click(t).key_up(Keys.SHIFT).perform()
            tid("tag").send_keys("bad" + Keys.ENTER)
            wait.until(lambda _: "tagged" in d.find_element(By.ID, "tag-status").text)
            box = d.find_element(By.ID, "where")
            box.send_keys("fg_ratio < 0.3" + Keys.ENTER)
            d.find_element(By.ID, "view-name").send_keys("small")
            d.find_element(By.ID, "save").click()
            wait.until(lambda _: d.find_elements(By.CSS_SELECTOR, '[data-testid="open-small"]'))
            d.find_element(By.CSS_SELECTOR, '#compare-a option[value="bad"]').click()
            d.find_element(By.CSS_SELECTOR, '#compare-b option[value="small"]').click()
            tid("compare-go").click()
            wait.until(lambda _: tid("compare").text)
            # a lasso on the map
            tid("lasso").click()
            d.execute_script("window.scrollTo(0, 0)")
            ac = ActionChains(d, duration=0).move_to_element_with_offset(tid("map"), -60, -70).click_and_hold()
            for p in [(0, -95), (60, -60), (45, -5), (-10, 10), (-45, 35), (-85, -15)]:
                ac.move_to_element_with_offset(tid("map"), *p)
            ac.release().perform()
            wait.until(lambda _: "#selection" in d.find_element(By.ID, "counts").text)
            wait.until(lambda _: loaded())
            save(d.get_screenshot_as_png(), os.path.join(a.out, "browse.png"), 1100)
            save(tid("map").find_element(By.XPATH, "..").screenshot_as_png, os.path.join(a.out, "map-lasso.png"))
            tags = d.find_element(By.ID, "tags").find_element(By.XPATH, "..")
            views_panel = d.find_element(By.ID, "views").find_element(By.XPATH, "..")
            save(tags.screenshot_as_png, os.path.join(a.out, "tags.png"))
            save(views_panel.screenshot_as_png, os.path.join(a.out, "views.png"))
            # brushing fg_ratio's histogram
            box.clear()
            box.send_keys(Keys.ENTER)
            wait.until(lambda _: d.find_element(By.ID, "counts").text.startswith("1,000 of 1,000"))
            svg = tid("hist-fg_ratio").find_element(By.TAG_NAME, "svg")
            d.execute_script("arguments[0].scrollIntoView({block: 'center'})", svg)
            w = svg.size["width"]
            ActionChains(d, duration=0).move_to_element_with_offset(svg, int(-w * 0.4), 10).click_and_hold() \
                .move_to_element_with_offset(svg, int(-w * 0.1), 10).release().perform()
            wait.until(lambda _: "fg_ratio >=" in d.find_element(By.ID, "counts").text)
            tid("check-pass_area-true").click()
            wait.until(lambda _: "pass_area" in d.find_element(By.ID, "counts").text)
            d.execute_script("document.getElementById('hist').scrollIntoView()")
            save(d.find_element(By.ID, "hist").screenshot_as_png, os.path.join(a.out, "histograms.png"))
            # the sample view
            d.find_elements(By.CSS_SELECTOR, "#grid figure.tile")[0].click()
            wait.until(lambda _: d.find_elements(By.CSS_SELECTOR, "#detail pre.json"))
            wait.until(lambda _: loaded())
            save(tid("detail").screenshot_as_png, os.path.join(a.out, "sample.png"), 900)
    finally:
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
