"""Generator weights: a small catalog (manifests/weights.toml) and resumable verified download.
(What a downloaded file holds: `factory.generators.bigbigan.checkpoint.inspect_weights`.)

`fetch` streams into `<dest>.part` (resuming it with an HTTP Range request when it exists),
checks the sha256 (when one is pinned or given) and that the bytes are a checkpoint and not
an HTML page, and only then renames it to its final name. A final name therefore always holds
a complete, verified file.
"""
from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from factory.format import FactoryError
from factory.fsio import factory_home, sha256_file
from factory.progress import progress_bar

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

CATALOG_PATH = Path(__file__).resolve().parent.parent / "manifests" / "weights.toml"

# Used when the package is installed without the manifests/ folder.
_BUILTIN_CATALOG = {
    "bigbigan": {
        "file": "BigBiGAN_x1.pth",
        "url": "https://www.dropbox.com/s/9w2i45h455k3b4p/BigBiGAN_x1.pth?dl=1",
        "size_bytes": 282_000_000,
        "sha256": "",
    }
}

CHUNK = 1 << 20  # bytes per read of a download


def default_weights_dir() -> Path:
    return factory_home() / "weights"


def load_catalog(path: Path | None = None) -> dict[str, dict]:
    p = Path(path) if path else CATALOG_PATH
    if not p.is_file():
        return dict(_BUILTIN_CATALOG)
    try:
        with open(p, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise FactoryError(f"cannot read weights catalog {p}: {e}") from None


@dataclass
class FetchResult:
    path: Path
    sha256: str
    bytes: int
    resumed_from: int
    pinned: bool  # the digest was checked against a pinned/given value
    already_present: bool = False


def _check_sha_arg(sha: str | None) -> str:
    sha = (sha or "").strip().lower()
    if sha and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        raise FactoryError(f"--sha256 {sha!r} is not a 64-digit hex digest")
    return sha


def _destination(to: str | Path | None, filename: str) -> Path:
    if to is None:
        return default_weights_dir() / filename
    to = Path(to).expanduser()
    if to.is_dir() or str(to).endswith(os.sep):
        return to / filename
    return to


def fetch(name: str, *, url: str | None = None, sha256: str | None = None, to: str | Path | None = None,
          progress: bool = True, timeout: float = 60.0, catalog: dict | None = None) -> FetchResult:
    """Download catalog entry `name` (or `url`) to `to` (default $FACTORY_HOME/weights/<file>)."""
    cat = catalog if catalog is not None else load_catalog()
    if name not in cat:
        raise FactoryError(f"unknown weights {name!r}; known: {', '.join(sorted(cat))}")
    entry = cat[name]
    url = url or entry.get("url")
    if not url:
        raise FactoryError(f"no URL known for {name!r}; pass --url")
    expected = _check_sha_arg(sha256) or _check_sha_arg(entry.get("sha256"))
    size_hint = int(entry.get("size_bytes") or 0)
    dest = _destination(to, entry.get("file") or Path(url.split("?")[0]).name)
    part = dest.with_name(dest.name + ".part")

    if dest.exists():
        if not expected:
            return FetchResult(dest, sha256_file(dest), dest.stat().st_size, 0, False, True)
        got = sha256_file(dest)
        if got == expected:
            return FetchResult(dest, got, dest.stat().st_size, 0, True, True)
        raise FactoryError(
            f"{dest} already exists with sha256 {got}, expected {expected}; remove it or pass --to another path"
        )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FactoryError(f"cannot create {dest.parent}: {e.strerror or e}") from None

    start = part.stat().st_size if part.exists() else 0
    resumed_from = _download(url, part, start=start, size_hint=size_hint, progress=progress, timeout=timeout)

    with open(part, "rb") as f:
        head = f.read(64)
    nbytes = part.stat().st_size
    if head.lstrip().lower().startswith((b"<!doctype", b"<html")):
        part.unlink()
        raise FactoryError(
            f"{url} returned an HTML page, not the weights (a preview/login page?); pass a direct --url"
        )
    got = sha256_file(part)
    if expected and got != expected:
        part.unlink()
        raise FactoryError(
            f"sha256 mismatch for {url}: got {got}, expected {expected}; the download was discarded, "
            f"nothing was written to {dest}"
        )
    with open(part, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(part, dest)
    return FetchResult(dest, got, nbytes, resumed_from, bool(expected))


def _download(url: str, part: Path, *, start: int, size_hint: int, progress: bool, timeout: float) -> int:
    """Stream url into part, resuming at byte `start`. Returns the offset it resumed from."""

    headers = {"User-Agent": "factory-weights/1"}
    if start:
        headers["Range"] = f"bytes={start}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:  # the .part already holds everything
            return start
        raise FactoryError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise FactoryError(f"download of {url} failed: {reason}") from None
    with resp:
        status = getattr(resp, "status", 200)
        if start and status == 206:
            mode, offset = "ab", start
        else:  # no resume asked, or the server ignored the Range header: start over
            mode, offset = "wb", 0
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else (size_hint or None)
        bar = progress_bar(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=part.name.removesuffix(".part"), disable=not progress)
        try:
            with open(part, mode) as f, bar:
                while True:
                    chunk = resp.read(CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    bar.update(len(chunk))
        except (OSError, urllib.error.URLError) as e:
            raise FactoryError(
                f"download of {url} interrupted ({e}); the partial file {part} is kept: run the same "
                f"command again to resume"
            ) from None
        if length and length.isdigit() and part.stat().st_size != offset + int(length):
            raise FactoryError(
                f"download of {url} ended early ({part.stat().st_size} of {offset + int(length)} bytes); "
                f"run the same command again to resume"
            )
    return offset
