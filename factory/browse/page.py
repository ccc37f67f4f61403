"""The browse page: one HTML shell around the package's script and style (``factory/browse/static``), with
its data embedded as JSON that no dataset can break out of (``<``, ``>``, ``&`` and line separators
escaped), served by `factory browse` or written whole by `factory preview --html`."""
from __future__ import annotations

import base64
import hashlib
import html
import json
from importlib import resources

_TYPES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}


def _static() -> dict[str, tuple[bytes, str]]:
    folder = resources.files("factory.browse") / "static"
    return {name: ((folder / name).read_bytes(), ctype) for name, ctype in _TYPES.items()}


STATIC = _static()

_SHELL = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
{csp}<title>{title}</title>
{style}
</head>
<body>
<noscript>This page needs JavaScript.</noscript>
<script id="config" type="application/json">{config}</script>
{script}
</body>
</html>
"""


def embed_json(obj) -> str:
    """JSON safe inside a <script type="application/json"> element: it cannot close the element or
    open a comment, whatever strings a dataset holds."""
    text = json.dumps(obj, allow_nan=False, separators=(",", ":"))
    for ch, esc in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"), ("\u2028", "\\u2028"),
                    ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def _sha(data: bytes) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(data).digest()).decode() + "'"


def page_html(config: dict, *, inline: bool = False) -> str:
    """The page with `config` embedded; `inline` puts the script and style in the file (one self-contained
    file whose policy allows exactly that script and style, and data: images)."""
    meta = config.get("meta") or {}
    title = html.escape(f"factory browse: {meta.get('view_id') or meta.get('dataset_id') or ''}")
    if not inline:
        return _SHELL.format(csp="", title=title, config=embed_json(config),
                             style='<link rel="stylesheet" href="/style.css">',
                             script='<script src="/app.js"></script>')
    js, css = STATIC["app.js"][0], STATIC["style.css"][0]
    csp = (f"default-src 'none'; script-src {_sha(js)}; style-src {_sha(css)}; img-src data:; "
           "base-uri 'none'; form-action 'none'")
    return _SHELL.format(csp=f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n', title=title,
                         config=embed_json(config), style=f"<style>{css.decode()}</style>",
                         script=f"<script>{js.decode()}</script>")
