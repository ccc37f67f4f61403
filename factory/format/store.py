"""Object stores from the reader's side: a reachability probe before the first use of an S3 bucket
(a short TCP connect, then the bucket's HEAD), and one line for the storage errors an SDK raises.

``check_store(url)`` runs once per (endpoint, bucket) per process, from ``format.get_fs``: an
unreachable endpoint fails in PROBE_TIMEOUT_S seconds instead of after the SDK's retries, a
missing bucket is named. ``storage_error(exc)`` turns an endpoint/bucket/credentials error met
later (the endpoint lost mid-run) into a FactoryError line, or None for anything else.
"""
from __future__ import annotations

import inspect
import logging
import os
import socket
import sys
import uuid
from urllib.parse import urlparse

from factory.format.errors import FactoryError

PROBE_TIMEOUT_S = 3.0  # seconds for the TCP probe (a constant: the contract reads no settings)
_CHECKED: set[tuple[str, str]] = set()

_UNREACHABLE = {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ReadTimeoutError",
                "ClientConnectorError", "ServerDisconnectedError", "ConnectionRefusedError",
                "ClientOSError", "ProxyConnectionError", "ClientConnectionResetError"}
_NO_CREDENTIALS = {"NoCredentialsError", "PartialCredentialsError"}


def s3_endpoint() -> str:
    """The S3 endpoint this process talks to: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, fsspec's s3 config, AWS."""
    for k in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if os.environ.get(k):
            return os.environ[k]
    try:
        import fsspec.config

        url = ((fsspec.config.conf.get("s3") or {}).get("client_kwargs") or {}).get("endpoint_url")
    except (ImportError, AttributeError):
        url = None
    return url or "https://s3.amazonaws.com"


def unreachable(endpoint: str, why: str = "") -> FactoryError:
    return FactoryError(f"cannot reach s3 endpoint {endpoint}{f' ({why})' if why else ''}: "
                        "check AWS_ENDPOINT_URL / network")


def _connect(endpoint: str) -> None:
    u = urlparse(endpoint if "://" in endpoint else "https://" + endpoint)
    port = u.port or (443 if u.scheme == "https" else 80)
    socket.create_connection((u.hostname or "", port), timeout=PROBE_TIMEOUT_S).close()


def endpoint_reachable() -> bool:
    """Whether the S3 endpoint accepts a TCP connection now (within PROBE_TIMEOUT_S)."""
    try:
        _connect(s3_endpoint())
    except OSError:
        return False
    return True


class _DropLostConnectionTasks(logging.Filter):
    """asyncio's "Task exception was never retrieved" for a store client's request whose connection was
    lost: the failure itself is reported once, by the code that awaited the request (one line, and a log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (exc is not None and str(record.msg).startswith("Task exception was never retrieved")
                    and storage_error(exc) is not None)


_TASK_FILTER = _DropLostConnectionTasks()


def check_store(url: str, fs=None) -> None:
    """Before the first use of an s3:// bucket in this process: its endpoint answers, its bucket exists."""
    if not url.startswith(("s3://", "s3a://")):
        return
    if _TASK_FILTER not in logging.getLogger("asyncio").filters:  # this process talks to a store from now on
        logging.getLogger("asyncio").addFilter(_TASK_FILTER)
    bucket = url.split("://", 1)[1].split("/", 1)[0]
    endpoint = s3_endpoint()
    if (endpoint, bucket) in _CHECKED or not bucket:
        return
    try:
        _connect(endpoint)
    except OSError as e:
        raise unreachable(endpoint, e.strerror or type(e).__name__) from None
    if fs is not None:
        try:
            fs.call_s3("head_bucket", Bucket=bucket)
        except FileNotFoundError:
            raise FactoryError(f"s3 bucket {bucket!r} does not exist at {endpoint}: check the URL, or create "
                               "the bucket first") from None
        except PermissionError:
            pass  # a bucket we may read objects of without the right to HEAD it
        except Exception as e:  # noqa: BLE001 - SDK errors: classified, else left to the real request
            err = storage_error(e)
            if err is not None:
                raise err from None
    _CHECKED.add((endpoint, bucket))


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


# Packages the core install leaves out (pyproject.toml's extras) -> the extra that brings each.
OPTIONAL_PACKAGES = {"zarr": "full", "numcodecs": "full", "dask": "full", "distributed": "full",
                     "matplotlib": "full", "scipy": "full", "cryptography": "full", "s3fs": "s3"}


def user_error(exc: BaseException) -> FactoryError | None:
    """What a CLI prints as one line for ``exc``: the FactoryError itself, the one line for a known
    storage problem (``storage_error``), or for a package an extra brings that is not installed; None for
    anything else (a bug: let its traceback show)."""
    if isinstance(exc, FactoryError):
        return exc
    top = (getattr(exc, "name", None) or "").split(".")[0] if isinstance(exc, ModuleNotFoundError) else ""
    if top in OPTIONAL_PACKAGES:
        return FactoryError(f"this command needs the {top!r} package, which this install leaves out: "
                            f"pip install 'gan-dataset-factory[{OPTIONAL_PACKAGES[top]}]'")
    return storage_error(exc)


def silence_orphaned_tasks() -> None:
    """After a failure has been reported in one line: the object store client's requests left pending
    would each print a traceback when collected at exit ("Task exception was never retrieved" from
    asyncio's logger, "Exception ignored in: <coroutine ...>" when a coroutine is closed); the run's log
    file has the details, so both stay quiet."""
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    previous = sys.unraisablehook
    if getattr(previous, "factory_quiet", False):
        return

    def hook(unraisable):
        if not inspect.iscoroutine(unraisable.object):
            previous(unraisable)

    hook.factory_quiet = True
    sys.unraisablehook = hook


def storage_error(exc: BaseException) -> FactoryError | None:
    """One FactoryError line for an unreachable endpoint, a missing bucket or missing credentials
    anywhere in ``exc``'s chain; None when it is none of these."""
    for e in _chain(exc):
        names = {t.__name__ for t in type(e).__mro__}
        if names & _UNREACHABLE:
            return unreachable(s3_endpoint(), type(e).__name__)
        if names & _NO_CREDENTIALS:
            return FactoryError("no credentials for the object store: set AWS_ACCESS_KEY_ID and "
                                "AWS_SECRET_ACCESS_KEY (or an AWS profile)")
        if "NoSuchBucket" in str(e) or "NoSuchBucket" in names:
            return FactoryError(f"the s3 bucket does not exist at {s3_endpoint()}: check the URL, or create the bucket")
    return None


def get_fs(url: str):
    """fsspec filesystem and path for a URL or local folder."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    check_store(url, fs)  # s3: the endpoint answers and the bucket exists (once per process)
    return fs, path


def read_bytes(url: str, limit: int | None = None) -> bytes:
    """The bytes at ``url``; with ``limit``, at most limit + 1 of them (the caller refuses more). A plain local
    path is read without fsspec (whose import alone costs a command like `factory info` ~0.25 CPU s)."""
    if "://" not in url and "::" not in url:
        with open(os.path.expanduser(url), "rb") as f:
            return f.read() if limit is None else f.read(limit + 1)
    fs, path = get_fs(url)
    with fs.open(path, "rb") as f:
        return f.read() if limit is None else f.read(limit + 1)


# ---------------------------------------------------------------- atomic writes (factory and trainers)

def is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def atomic_write(url: str | os.PathLike, data: bytes) -> None:
    """Write bytes so that the final name holds either nothing or all of them (a local path or any URL)."""
    if isinstance(url, os.PathLike):
        _atomic_write_local(os.fspath(url), data)
        return
    fs, path = get_fs(url)
    if is_local(fs):
        _atomic_write_local(path, data)
    else:
        fs.pipe_file(path, data)


def _atomic_write_local(path: str, data: bytes) -> None:
    d = os.path.dirname(path) or "."
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(d)


def _fsync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
