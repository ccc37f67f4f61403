"""Benchmark `factory browse`'s latent map on a synthetic 1,000,000-row dataset: the projection computed once
(PCA over latents.zarr), read back from its cache, the points and colours the page asks for, and, in headless
chromium, the time from the page's script starting to the map drawn (the page's own `data-ms`).

The index skeleton is scale_bench's (the contract's columns, 1,000 fragments, no tar); latents.zarr is added
beside it (120-D, one chunk per shard, a low-rank signal plus noise). Load average is printed with the figures.

    python benchmarks/browse_map_bench.py [--rows 1000000] [--root /tmp/browse-map-bench] [--no-browser]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from scale_bench import build  # noqa: E402

from factory import format as fmt  # noqa: E402
from factory.browse import latentmap  # noqa: E402
from factory.browse.api import Browser  # noqa: E402
from factory.dataset.shards import create_latents  # noqa: E402

DIM = 120


def add_latents(root: str, rows: int, shard_rows: int) -> None:
    """latents.zarr [rows, 120]: 8 latent directions with per-sample weights plus noise, one chunk per shard."""
    if os.path.exists(os.path.join(root, fmt.LATENTS, ".done")):
        return
    shutil.rmtree(os.path.join(root, fmt.LATENTS), ignore_errors=True)
    z = create_latents(root, rows, DIM, shard_rows)
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(8, DIM)).astype(np.float32)
    for a in range(0, rows, shard_rows):
        n = min(shard_rows, rows - a)
        w = rng.normal(size=(n, 8)).astype(np.float32) * np.linspace(3, 0.5, 8, dtype=np.float32)
        z[a:a + n] = w @ basis + 0.3 * rng.normal(size=(n, DIM)).astype(np.float32)
    open(os.path.join(root, fmt.LATENTS, ".done"), "w").close()


def timed(label: str, fn):
    t = time.perf_counter()
    out = fn()
    print(f"  {label:<48} {1000 * (time.perf_counter() - t):8.0f} ms   (load {os.getloadavg()[0]:.1f})")
    return out


def in_chromium(browser: Browser, repeats: int = 3) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    from factory.browse.server import BrowseServer

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    profile = tempfile.mkdtemp()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=opts)
    try:
        with BrowseServer(browser, 0) as srv:
            for i in range(repeats):
                t = time.perf_counter()
                driver.get(srv.address)
                WebDriverWait(driver, 60, 0.02).until(
                    lambda d: d.execute_script("return document.getElementById('map').dataset.ms"))
                ms = driver.execute_script("return document.getElementById('map').dataset.ms")
                pts = driver.execute_script("return document.getElementById('map').dataset.points")
                print(f"  page {i + 1}: map of {int(pts):,} points drawn {int(ms):,} ms after the script started "
                      f"({1000 * (time.perf_counter() - t):,.0f} ms from the request; load {os.getloadavg()[0]:.1f})")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--root", default="/tmp/browse-map-bench")
    ap.add_argument("--no-browser", action="store_true")
    a = ap.parse_args()
    if not os.path.exists(os.path.join(a.root, fmt.MANIFEST)):
        build(a.root, a.rows)
    path = os.path.join(a.root, fmt.MANIFEST)
    man = json.load(open(path))
    if "note" in man.get("spec", {}):  # the skeleton's remark, not a spec field the schema takes
        del man["spec"]["note"]
        with open(path, "w") as f:
            json.dump(man, f)
    m = fmt.open_dataset(a.root).manifest
    add_latents(a.root, a.rows, m["shards"][0]["samples"])
    home = tempfile.mkdtemp()
    os.environ["FACTORY_HOME"] = home
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {a.rows:,} rows, latents {DIM}-D")
    try:
        b = timed("open, load the index", lambda: Browser(a.root, views_dir=home))
        timed("PCA of every latent, first time (then cached)", lambda: b.latent_map())
        b2 = timed("open again", lambda: Browser(a.root, views_dir=home))
        timed("map points from the cache", lambda: b2.latent_map())
        timed("map colours by fg_ratio with a filter", lambda: b2.map_colours("fg_ratio", "fg_ratio < 0.3"))
        sel = np.frombuffer(__import__("base64").b64decode(b2.latent_map()["rows"]), "<i4")[:50_000]
        timed("select 50,000 points; count #selection", lambda: (b2.select(sel), b2.counts("#selection")))
        timed("save them as a view of explicit rows", lambda: b2.save_view("picked", "#selection"))
        print(f"  drawn points {latentmap.MAX_POINTS:,}; peak memory "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
        if not a.no_browser:
            in_chromium(b2)
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
