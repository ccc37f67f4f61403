"""Hostile requests to `factory browse`: each is a 400 with one line saying why, never a 500."""
from __future__ import annotations

import json
import socket

import pytest

from factory.browse.api import Browser
from factory.browse.server import BrowseServer


def raw(port: int, request: bytes) -> tuple[int, dict]:
    """Send bytes as they are (no client library fixing them up); the status and JSON body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        try:
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)  # a body shorter than its Content-Length ends here, not at a timeout
        except OSError:  # the server answered and closed before reading it all (a body over the limit)
            pass
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def post(port: int, token: str, body: bytes, length: str | None = None, route: str = "/api/save") -> tuple[int, dict]:
    length = str(len(body)) if length is None else length
    return raw(port, b"POST %s HTTP/1.0\r\nHost: 127.0.0.1:%d\r\nX-Factory-Token: %s\r\n"
                     b"Content-Length: %s\r\n\r\n%s" % (route.encode(), port, token.encode(), length.encode(), body))


BODIES = {
    "nested_brackets_30000": (b"[" * 30000 + b"]" * 30000, None),
    "nested_objects": (b'{"a":' * 6000 + b"1" + b"}" * 6000, None),
    "not_utf8": (b'{"name": "\xff\xfe"}', None),
    "not_json": (b"name=x&where=y", None),
    "null": (b"null", None),
    "a_list": (b'["name", "where"]', None),
    "huge_number": (b'{"name": 1e999999}', None),
    "nan": (b'{"name": NaN}', None),
    "name_not_string": (b'{"name": 5, "where": ""}', None),
    "where_not_string": (b'{"name": "x", "where": ["fg_ratio"]}', None),
    "name_path": (b'{"name": "../../etc/x", "where": ""}', None),
    "name_huge": (json.dumps({"name": "a" * 60000}).encode(), None),
    "where_nested_parens": (json.dumps({"name": "x", "where": "(" * 20000 + "fg_ratio < 1" + ")" * 20000}).encode(),
                            None),
    "where_unknown_column": (b'{"name": "x", "where": "__import__ < 1"}', None),
    "length_not_a_number": (b'{"name": "x"}', "abc"),
    "length_negative": (b'{"name": "x"}', "-5"),
    "length_huge": (b'{"name": "x"}', "99999999999999999999"),
    "length_zero": (b"", "0"),
    "body_shorter_than_length": (b'{"name": "x"}', "500"),
    "body_over_limit": (b" " * (65 << 10), None),
}

ROUTE_BODIES = {  # the other routes that take a body: tags and selections of rows
    "tag_rows_huge": ("/api/tag", b'{"name": "t", "rows": [100000000000000000000000000000]}'),
    "tag_rows_negative": ("/api/tag", b'{"name": "t", "rows": [-1]}'),
    "tag_rows_not_ints": ("/api/tag", b'{"name": "t", "rows": [true, 1.5, "3"]}'),
    "tag_mode_unknown": ("/api/tag", b'{"name": "t", "mode": "exec", "rows": [0]}'),
    "tag_name_path": ("/api/tag", b'{"name": "../../x", "rows": [0]}'),
    "tag_nested": ("/api/tag", b"[" * 30000 + b"]" * 30000),
    "select_rows_huge": ("/api/select", b'{"rows": [0, 100000000000000000000000000000]}'),
    "select_nested": ("/api/select", b'{"rows": ' + b"[" * 30000 + b"]" * 30000 + b"}"),
    "select_not_object": ("/api/select", b'"rows"'),
}

QUERIES = [
    "/api/compare?a=..%2F..%2Fmanifest&b=", "/api/map?method=%00evil", "/api/mapcolour?column=__class__",
    "/api/mapcolour?where=" + "%28" * 10000 + "fg_ratio<1" + "%29" * 10000,
    "/api/rows?where=" + "%28" * 10000 + "fg_ratio<1" + "%29" * 10000,
    "/api/rows?limit=99999999999999999999999",
    "/api/rows?limit=-1", "/api/rows?offset=abc", "/api/rows?sort=__class__", "/api/rows?show=%00",
    "/api/hist?column=%ff%fe", "/api/sample?key=" + "9" * 5000, "/api/tile?key=0000000000&overlay=%00",
    "/api/picture?key=0000000000&which=..%2F..%2Fmanifest.json", "/api/rows?" + "&".join(f"a{i}=1" for i in range(50)),
]


@pytest.fixture(scope="module")
def server(small_dataset, tmp_path_factory):
    with BrowseServer(Browser(str(small_dataset), views_dir=str(tmp_path_factory.mktemp("views"))), 0) as srv:
        yield srv


def _one_line_400(status: int, answer: dict, case) -> None:
    assert status == 400, (case, status, answer)
    error = answer["error"]
    assert error and "\n" not in error and len(error) < 600 and "internal error" not in error, (case, error)


@pytest.mark.parametrize("case", list(BODIES))
def test_hostile_save_body_is_a_one_line_400(server, case):
    body, length = BODIES[case]
    status, answer = post(server.port, server.httpd.token, body, length)
    _one_line_400(status, answer, case)


@pytest.mark.parametrize("case", list(ROUTE_BODIES))
def test_hostile_tag_and_selection_bodies_are_one_line_400s(server, case):
    route, body = ROUTE_BODIES[case]
    status, answer = post(server.port, server.httpd.token, body, route=route)
    _one_line_400(status, answer, case)


@pytest.mark.parametrize("query", QUERIES, ids=range(len(QUERIES)))
def test_hostile_query_is_a_one_line_400(server, query):
    status, answer = raw(server.port, b"GET %s HTTP/1.0\r\nHost: 127.0.0.1:%d\r\n\r\n" % (query.encode(), server.port))
    _one_line_400(status, answer, query[:80])


def test_request_line_over_the_limit_is_one_line(server):
    """http.server's own refusal (a request line over 64 KiB) is the same one JSON line, not an HTML page."""
    query = "/api/rows?where=" + "%28" * 30000
    status, answer = raw(server.port, b"GET %s HTTP/1.0\r\nHost: 127.0.0.1:%d\r\n\r\n" % (query.encode(), server.port))
    assert status == 414 and answer["error"] and "\n" not in answer["error"], answer


def test_server_still_answers_after_hostile_requests(server):
    for body, length in BODIES.values():
        post(server.port, server.httpd.token, body, length)
    status, answer = post(server.port, server.httpd.token, b'{"name": "fine", "where": "fg_ratio < 0.5"}')
    assert status == 200 and answer["path"].endswith("fine.json"), answer
