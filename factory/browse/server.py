"""`factory browse`'s HTTP server: the page and its JSON API over a `Browser`, on 127.0.0.1 only.

Standard library only (ThreadingHTTPServer). Routes are a fixed table; no request names a file: pages
and scripts are package data, samples are found by key in the index (`Browser.locate`). Requests must
name this server as their Host (no DNS rebinding); saving a view also needs the page's token (no other
site can post to it). Stopping (`close`, or Ctrl-C in `serve`) joins every request thread and closes
the socket.
"""
from __future__ import annotations

import json
import secrets
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from factory.browse.api import Browser
from factory.browse.page import STATIC, page_html
from factory.format import FactoryError, FormatError, loads_json

HOST = "127.0.0.1"
MAX_BODY = 64 << 10
MAX_ERROR = 300  # characters of an error line
MAX_ROWS_BODY = 2 << 20  # a tag or selection: up to named.MAX_SELECTION rows as JSON
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _one(q: dict, name: str, default: str = "") -> str:
    v = q.get(name)
    return v[-1] if v else default


def _int(q: dict, name: str, default: int) -> int:
    try:
        return int(_one(q, name, str(default)))
    except ValueError:
        raise FactoryError(f"{name} must be a whole number, got {_one(q, name)!r}") from None


class Handler(BaseHTTPRequestHandler):
    server_version = "factory-browse"
    sys_version = ""
    protocol_version = "HTTP/1.0"  # one request per connection: no idle keep-alive thread delays stopping
    timeout = 10

    # ------------------------------------------------------------ plumbing
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        if self.server.verbose:
            sys.stderr.write("browse: " + (format % args) + "\n")

    def _send(self, status: int, body: bytes, ctype: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("Cache-Control", "private, max-age=3600" if cache else "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200) -> None:
        self._send(status, json.dumps(obj, allow_nan=False).encode(), "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        """One line saying why, whatever a request made the message quote (hostile input is cut short)."""
        line = " ".join(str(message).split())
        self._json({"error": line if len(line) <= MAX_ERROR else line[: MAX_ERROR - 3] + "..."}, status)

    def send_error(self, code, message=None, explain=None):  # http.server's own refusals (bad request line, ...)
        self.close_connection = True
        self._error(code, message or HTTPStatus(code).phrase)

    def _body(self, limit: int = MAX_BODY, what: str = "a save request") -> bytes:
        """The request's body: at most `limit` bytes, exactly as many as Content-Length says."""
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise HttpError(400, "Content-Length must be a whole number") from None
        if not 0 < n <= limit:
            raise HttpError(400, f"{what} is a small JSON object (1 to {limit:,} bytes)")
        try:
            data = self.rfile.read(n)
        except OSError:  # the client stopped sending (the socket's timeout)
            data = b""
        if len(data) != n:
            raise HttpError(400, f"the body ended after {len(data):,} of the {n:,} bytes Content-Length says")
        return data

    def _check_host(self) -> None:
        host = self.headers.get("Host", "")
        if host not in self.server.hosts:
            raise HttpError(403, f"this server answers to {self.server.hosts[0]} only")

    def _dispatch(self, method: str) -> None:
        try:
            self._check_host()
            url = urlsplit(self.path)
            try:
                q = parse_qs(url.query, keep_blank_values=True, max_num_fields=20)
            except ValueError:
                raise HttpError(400, "too many query fields") from None
            route = ROUTES.get((method, url.path))
            if route is None:
                raise HttpError(404, f"no such page: {url.path}")
            route(self, q)
        except HttpError as e:
            self._error(e.status, str(e))
        except FactoryError as e:
            self._error(400, str(e))
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # noqa: BLE001 - one bad request must not stop the server
            self.log_error("%s: %s", type(e).__name__, e)
            self._error(500, f"internal error ({type(e).__name__}); see the terminal")

    def do_GET(self):  # noqa: N802 - http.server's names
        self._dispatch("GET")

    def do_HEAD(self):  # noqa: N802
        self._dispatch("GET")

    def do_POST(self):  # noqa: N802
        self._dispatch("POST")

    # ------------------------------------------------------------ routes
    def page(self, q):
        b: Browser = self.server.browser
        html = page_html({"mode": "live", "token": self.server.token, "meta": b.meta()})
        self._send(200, html.encode(), "text/html; charset=utf-8")

    def static(self, name: str):
        data, ctype = STATIC[name]
        self._send(200, data, ctype, cache=True)

    def meta(self, q):
        self._json(self.server.browser.meta())

    def rows(self, q):
        b: Browser = self.server.browser
        self._json(b.rows(_one(q, "where"), show=_one(q, "show", "accepted"), sort=_one(q, "sort", "row"),
                          descending=_one(q, "order") == "desc", offset=_int(q, "offset", 0),
                          limit=_int(q, "limit", 48)))

    def hist(self, q):
        self._json(self.server.browser.histogram(_one(q, "column", "fg_ratio"), _one(q, "where")))

    def sample(self, q):
        self._json(self.server.browser.sample(_one(q, "key"), _one(q, "where")))

    def tile(self, q):
        self._send(200, self.server.browser.tile(_one(q, "key"), _one(q, "overlay", "mask")), "image/png", cache=True)

    def picture(self, q):
        data, ctype = self.server.browser.picture(_one(q, "key"), _one(q, "which", "image"))
        self._send(200, data, ctype, cache=True)

    def _posted(self, limit: int = MAX_BODY) -> dict:
        """The JSON object a token-holding page posted (at most `limit` bytes)."""
        if not secrets.compare_digest(self.headers.get("X-Factory-Token", ""), self.server.token):
            raise HttpError(403, "changes need the page's token: reload the page")
        try:
            body = loads_json(self._body(limit, "a tag or selection request"), "a request")
        except FormatError as e:
            raise HttpError(400, f"a request body is a JSON object: {e}") from None
        if not isinstance(body, dict):
            raise HttpError(400, "a request body is a JSON object")
        return body

    def _rows_of(self, body: dict) -> list[int]:
        rows = body.get("rows")
        if not isinstance(rows, list) or not all(isinstance(r, int) and not isinstance(r, bool) and 0 <= r < 2**63
                                                 for r in rows):
            raise HttpError(400, "rows must be a list of row numbers (whole numbers from 0)")
        return rows

    def tag(self, q):
        body = self._posted(MAX_ROWS_BODY)
        name, mode = body.get("name"), body.get("mode", "add")
        if not isinstance(name, str) or not isinstance(mode, str):
            raise HttpError(400, "a tag request is a JSON object with name, mode and rows")
        self._json(self.server.browser.tag(name, self._rows_of(body), mode))

    def select(self, q):
        self._json(self.server.browser.select(self._rows_of(self._posted(MAX_ROWS_BODY))))

    def views(self, q):
        self._json(self.server.browser.views())

    def compare(self, q):
        self._json(self.server.browser.compare(_one(q, "a"), _one(q, "b")))

    def latent_map(self, q):
        self._json(self.server.browser.latent_map(_one(q, "method", "pca")))

    def map_colours(self, q):
        b: Browser = self.server.browser
        self._json(b.map_colours(_one(q, "column", "row"), _one(q, "where"), _one(q, "method", "pca")))

    def save(self, q):
        if not secrets.compare_digest(self.headers.get("X-Factory-Token", ""), self.server.token):
            raise HttpError(403, "saving needs the page's token: reload the page")
        try:
            body = loads_json(self._body(), "a save request")
        except FormatError as e:
            raise HttpError(400, f"a save request is a JSON object with name and where: {e}") from None
        if not isinstance(body, dict) or not isinstance(body.get("name"), str) or \
                not isinstance(body.get("where", ""), str):
            raise HttpError(400, "a save request is a JSON object with name and where (strings)")
        self._json(self.server.browser.save_view(body["name"], body.get("where", "")))


ROUTES = {
    ("GET", "/"): Handler.page,
    ("GET", "/app.js"): lambda h, q: h.static("app.js"),
    ("GET", "/style.css"): lambda h, q: h.static("style.css"),
    ("GET", "/api/meta"): Handler.meta,
    ("GET", "/api/rows"): Handler.rows,
    ("GET", "/api/hist"): Handler.hist,
    ("GET", "/api/sample"): Handler.sample,
    ("GET", "/api/tile"): Handler.tile,
    ("GET", "/api/picture"): Handler.picture,
    ("POST", "/api/save"): Handler.save,
    ("POST", "/api/tag"): Handler.tag,
    ("POST", "/api/select"): Handler.select,
    ("GET", "/api/views"): Handler.views,
    ("GET", "/api/compare"): Handler.compare,
    ("GET", "/api/map"): Handler.latent_map,
    ("GET", "/api/mapcolour"): Handler.map_colours,
}


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close joins the request threads


class BrowseServer:
    """The page over `browser` on 127.0.0.1:`port` (0: any free port)."""

    def __init__(self, browser: Browser, port: int = 0, *, verbose: bool = False):
        if not 0 <= port <= 65535:
            raise FactoryError(f"--port must be 0..65535, got {port}")
        try:
            self.httpd = _Server((HOST, port), Handler)
        except OSError as e:
            raise FactoryError(f"cannot listen on {HOST}:{port} ({e.strerror}); choose another --port") from None
        self.httpd.browser = browser
        self.httpd.token = secrets.token_urlsafe(24)
        self.httpd.verbose = verbose
        self.port = self.httpd.server_address[1]
        self.httpd.hosts = [f"{HOST}:{self.port}", f"localhost:{self.port}"]
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def serve(self) -> None:
        """Serve in this thread until Ctrl-C (or `shutdown` from another thread); then close everything."""
        try:
            self.httpd.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
        finally:
            self.httpd.server_close()

    def start(self) -> BrowseServer:
        """Serve from a background thread (tests, notebooks); `close` stops it."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"factory-browse-{self.port}")
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(10)
            self._thread = None
        self.httpd.server_close()

    def __enter__(self) -> BrowseServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def browse(url: str, port: int = 8765, *, views_dir: str | None = None, allow_remote_shards: bool = False,
           on_ready=None, verbose: bool = False) -> None:
    """`factory browse`: open `url`, serve its page on 127.0.0.1:`port` until Ctrl-C."""
    browser = Browser(url, allow_remote_shards=allow_remote_shards, views_dir=views_dir)
    server = BrowseServer(browser, port, verbose=verbose)
    if on_ready is not None:
        on_ready(server)
    server.serve()
