"""A small HTTP proxy in front of an S3 endpoint (moto) on 127.0.0.1: it counts the requests and the bytes
it serves, and can add a delay per request and a bandwidth cap (tests count shard reads through it;
benchmarks/cache_bench.py throttles with it). Point AWS_ENDPOINT_URL at ``proxy.url``."""
from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


class StoreProxy:
    """``with StoreProxy(upstream, delay_s=0.05, bytes_per_s=20e6) as p:`` requests to ``p.url`` reach
    ``upstream``; ``p.log`` lists (method, path, response bytes). Stopped on exit."""

    def __init__(self, upstream: str, *, delay_s: float = 0.0, bytes_per_s: float | None = None):
        u = urlsplit(upstream)
        self.host, self.port = u.hostname, u.port
        self.delay_s, self.bytes_per_s = delay_s, bytes_per_s
        self.log: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=60)
                conn.request(self.command, self.path, body=body,
                             headers={k: v for k, v in self.headers.items() if k.lower() not in _HOP})
                r = conn.getresponse()
                data = r.read()
                conn.close()
                if proxy.delay_s:
                    time.sleep(proxy.delay_s)
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in _HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                length = r.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                if self.command != "HEAD":
                    proxy._send(self.wfile, data)
                with proxy._lock:
                    proxy.log.append((self.command, self.path, len(data)))

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _send(self, out, data: bytes) -> None:
        if not self.bytes_per_s:
            out.write(data)
            return
        chunk = 64 << 10
        for i in range(0, len(data), chunk):
            part = data[i:i + chunk]
            out.write(part)
            time.sleep(len(part) / self.bytes_per_s)

    def gets(self, contains: str = "") -> list[tuple[str, str, int]]:
        """GET requests whose path contains ``contains``."""
        with self._lock:
            return [e for e in self.log if e[0] == "GET" and contains in e[1]]

    def clear(self) -> None:
        with self._lock:
            self.log.clear()

    def __enter__(self) -> "StoreProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()
