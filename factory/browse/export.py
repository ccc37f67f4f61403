"""`factory preview --html`: the browse page over a sample of rows as one self-contained file (pictures as
data: URIs, no server, no network) to send with a dataset card."""
from __future__ import annotations

import base64

from factory.browse import samples as smp
from factory.browse.api import MAX_PAGE, Browser
from factory.browse.page import page_html
from factory.format import FactoryError
from factory.fsio import atomic_write


def data_uri(data: bytes, ctype: str) -> str:
    return f"data:{ctype};base64," + base64.b64encode(data).decode("ascii")


def preview_config(browser: Browser, n: int = 64) -> dict:
    """The page's data for the first `n` accepted samples (row order): rows, tiles, pictures, details and
    the histograms of every number and bool column over the whole index."""
    if not 1 <= n <= MAX_PAGE:
        raise FactoryError(f"--n must be 1..{MAX_PAGE} for an HTML preview, got {n}")
    meta = {k: v for k, v in browser.meta().items() if k != "views_dir"}
    page = browser.rows("", show="accepted", sort="row", limit=n)
    tiles, pictures, details = {}, {}, {}
    overlays = ["none", "mask"] + (["teacher"] if meta["relabelled"] else [])
    for r in page["rows"]:
        key = r["key"]
        members = browser.members(key)
        tiles[key] = {o: data_uri(smp.tile(members, browser.res.manifest, key, show=o), "image/png") for o in overlays}
        pictures[key] = {}
        for which in ("mask", "teacher"):
            ext = smp.picture_ext(browser.res.manifest, which)
            if ext in members:
                pictures[key][which] = data_uri(members[ext], smp.content_type(ext))
        pictures[key]["image"] = tiles[key]["none"]
        details[key] = browser.sample(key)
    hists = {c: browser.histogram(c) for c, kind in meta["columns"].items() if kind != "string"}
    what = f"view where {meta['predicate']}" if meta["kind"] == "view" else "dataset"
    line = f"{len(page['rows']):,} of {meta['samples']:,} samples shown ({what}); first samples in row order"
    return {"mode": "static", "meta": meta, "rows": page["rows"], "tiles": tiles, "pictures": pictures,
            "details": details, "hists": hists, "line": line}


def write_preview_html(url: str, out: str, n: int = 64, allow_remote_shards: bool = False) -> dict:
    """Write the self-contained preview page of dataset/view `url` to `out` (an .html path or URL)."""
    if not out.lower().endswith((".html", ".htm")):
        raise FactoryError(f"--html {out}: the page is an HTML file; name it *.html")
    browser = Browser(url, allow_remote_shards=allow_remote_shards)
    cfg = preview_config(browser, n)
    data = page_html(cfg, inline=True).encode()
    atomic_write(out, data)
    return {"out": out, "bytes": len(data), "samples_shown": len(cfg["rows"])}
