"""`factory weights fetch|inspect` against a local HTTP server that honours Range requests."""
from __future__ import annotations

import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from click.testing import CliRunner

from factory.cli import main
from factory.format import FactoryError
from factory.weights import fetch, load_catalog

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # ~1 MiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    log: list[dict] = []

    def do_GET(self):  # noqa: N802
        data = self.files.get(self.path)
        rng = self.headers.get("Range")
        self.log.append({"path": self.path, "range": rng})
        if data is None:
            self.send_error(404)
            return
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m:
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            body = data[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    _Handler.files = {"/BigBiGAN_x1.pth": PAYLOAD, "/page": b"<!DOCTYPE html><html>login</html>"}
    _Handler.log = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", _Handler.log
    srv.shutdown()
    srv.server_close()


def test_catalog_has_bigbigan():
    entry = load_catalog()["bigbigan"]
    assert entry["file"] == "BigBiGAN_x1.pth" and entry["url"].startswith("https://")
    assert entry["size_bytes"] == 282_000_000


def test_fetch_full_download_cli(server, tmp_path, monkeypatch):
    url, log = server
    monkeypatch.setenv("FACTORY_HOME", str(tmp_path / "home"))
    r = CliRunner().invoke(main, ["weights", "fetch", "bigbigan", "--url", f"{url}/BigBiGAN_x1.pth",
                                  "--sha256", SHA, "--quiet"])
    assert r.exit_code == 0, r.output
    dest = tmp_path / "home" / "weights" / "BigBiGAN_x1.pth"
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("BigBiGAN_x1.pth.part").exists()
    assert f"sha256 {SHA} (verified)" in r.output
    assert log[-1]["range"] is None
    # second call: already there, no new request
    n = len(log)
    r = CliRunner().invoke(main, ["weights", "fetch", "bigbigan", "--sha256", SHA, "--quiet"])
    assert r.exit_code == 0 and "already present" in r.output and len(log) == n


def test_fetch_resumes_partial_download(server, tmp_path):
    url, log = server
    dest = tmp_path / "w.pth"
    part = tmp_path / "w.pth.part"
    part.write_bytes(PAYLOAD[:300_000])
    res = fetch("bigbigan", url=f"{url}/BigBiGAN_x1.pth", sha256=SHA, to=dest, progress=False)
    assert res.resumed_from == 300_000 and res.pinned and res.sha256 == SHA
    assert log[-1]["range"] == "bytes=300000-"
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_fetch_complete_part_file_gets_416_and_is_kept(server, tmp_path):
    url, _ = server
    (tmp_path / "w.pth.part").write_bytes(PAYLOAD)
    res = fetch("bigbigan", url=f"{url}/BigBiGAN_x1.pth", sha256=SHA, to=tmp_path / "w.pth", progress=False)
    assert res.path.read_bytes() == PAYLOAD


def test_sha_mismatch_leaves_no_final_file(server, tmp_path):
    url, _ = server
    dest = tmp_path / "w.pth"
    r = CliRunner().invoke(main, ["weights", "fetch", "bigbigan", "--url", f"{url}/BigBiGAN_x1.pth",
                                  "--sha256", "0" * 64, "--to", str(dest), "--quiet"])
    assert r.exit_code == 1
    assert f"Error: sha256 mismatch for {url}/BigBiGAN_x1.pth: got {SHA}, expected {'0' * 64}" in r.output
    assert not dest.exists() and not dest.with_name("w.pth.part").exists()


def test_fetch_errors(server, tmp_path):
    url, _ = server
    with pytest.raises(FactoryError, match="returned an HTML page"):
        fetch("bigbigan", url=f"{url}/page", to=tmp_path / "x.pth", progress=False)
    assert not (tmp_path / "x.pth").exists()
    with pytest.raises(FactoryError, match="HTTP 404"):
        fetch("bigbigan", url=f"{url}/nothing", to=tmp_path / "y.pth", progress=False)
    with pytest.raises(FactoryError, match="unknown weights 'biggan'"):
        fetch("biggan", progress=False)
    with pytest.raises(FactoryError, match="not a 64-digit hex digest"):
        fetch("bigbigan", url=f"{url}/BigBiGAN_x1.pth", sha256="abc", to=tmp_path / "z.pth", progress=False)


def test_help_has_examples():
    for args in (["weights", "--help"], ["weights", "fetch", "--help"], ["weights", "inspect", "--help"]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0 and "Example:" in r.output and "factory weights" in r.output


def test_inspect_small_and_bad(golden, tmp_path):
    r = CliRunner().invoke(main, ["weights", "inspect", str(golden / "state_dict.safetensors")])
    assert r.exit_code == 0, r.output
    assert "matches:    reduced BigBiGAN (G_ch=8, dim_z=24, shared_dim=16, resolution=128, G_attn=64)" in r.output
    assert "parameters: 521,236" in r.output and "keys:       166" in r.output
    (tmp_path / "page.pth").write_bytes(b"<html>nope</html>")
    r = CliRunner().invoke(main, ["weights", "inspect", str(tmp_path / "page.pth")])
    assert r.exit_code == 1 and "not a checkpoint: it is an HTML page" in r.output
    torch.save({"a": torch.zeros(2)}, tmp_path / "other.pth")
    r = CliRunner().invoke(main, ["weights", "inspect", str(tmp_path / "other.pth")])
    assert r.exit_code == 1 and "matches no BigBiGAN config" in r.output


def test_inspect_full_size_layout(tmp_path):
    """A file with the full model's keys/shapes (meta-built, zero-filled) is recognised as BigBiGAN-128."""
    from safetensors.torch import save_file

    from factory.generators.bigbigan.checkpoint import inspect_weights
    from factory.generators.bigbigan.model import BigBiGAN, BigBiGANConfig

    with torch.device("meta"):
        m = BigBiGAN(BigBiGANConfig())
    sd = {k: torch.zeros(v.shape) for k, v in m.state_dict().items()}
    save_file(sd, str(tmp_path / "full.safetensors"))
    info = inspect_weights(tmp_path / "full.safetensors")
    assert info["matches"].startswith("BigBiGAN-128 (full model")
    assert info["parameters"] == 70_433_988 and info["keys"] == 166
