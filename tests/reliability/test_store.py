"""Object stores that fail: an endpoint that is not there (a closed port on 127.0.0.1), a bucket that is
not there, an endpoint lost mid-run, and two writers on one S3 prefix (issue 26, items 5 and 7).
Each ends in one line; details of a run's failures go to a log file."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from factory import format as fmt
from factory.cli import main

pytestmark = [pytest.mark.reliability, pytest.mark.s3]

REPO = Path(__file__).resolve().parents[2]
GEN = ["generate", "--generator", "shapes", "--resolution", "32", "--shard-size", "20", "--workers", "0", "--quiet"]


def one_line(r) -> str:
    assert r.exit_code == 1, r.output
    lines = [x for x in r.output.strip().splitlines() if x.strip() and not x.startswith("train: device")]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    return lines[0]


def fresh_s3() -> None:
    """Forget cached S3 filesystems (they keep the endpoint they were made with)."""
    from tests.conftest import close_s3_sessions

    close_s3_sessions()


@pytest.fixture()
def closed_endpoint(monkeypatch, free_port):
    """AWS_ENDPOINT_URL on a port of 127.0.0.1 that nothing listens on."""
    url = f"http://127.0.0.1:{free_port()}"
    for k, v in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    fresh_s3()
    yield url
    fresh_s3()


def test_unreachable_endpoint_is_one_quick_line_everywhere(closed_endpoint, tmp_path):
    from trainers.cli import main as tmain

    want = f"cannot reach s3 endpoint {closed_endpoint} (Connection refused): check AWS_ENDPOINT_URL / network"
    cmds = [["info", "s3://bucket/ds"], ["verify", "s3://bucket/ds"],
            ["filter", "s3://bucket/ds", "--max-fg", "0.5", "--out", str(tmp_path / "v.json")],
            GEN + ["--n", "40", "--out", "s3://bucket/ds"]]
    for cmd in cmds:
        t0 = time.time()
        assert want in one_line(CliRunner().invoke(main, cmd)), cmd
        assert time.time() - t0 < 20, cmd  # the probe, not the SDK's retries
    r = CliRunner().invoke(tmain, ["train", "--data", "s3://bucket/ds", "--out", str(tmp_path / "run"), "--steps", "1",
                                   "--device", "cpu", "--no-progress"])
    assert want in one_line(r)
    assert not (tmp_path / "run").exists()


def test_storage_error_names_sdk_errors_in_a_chain():
    class EndpointConnectionError(Exception):
        pass

    try:
        try:
            raise EndpointConnectionError("Could not connect to the endpoint URL")
        except EndpointConnectionError as inner:
            raise OSError("wrapped") from inner
    except OSError as e:
        err = fmt.storage_error(e)
    assert err is not None and "cannot reach s3 endpoint" in str(err) and "\n" not in str(err)
    assert fmt.storage_error(ValueError("something else")) is None


def test_missing_bucket_says_so(s3_server, tmp_path):
    fresh_s3()
    r = CliRunner().invoke(main, ["info", "s3://no-such-bucket-26/ds"])
    assert "s3 bucket 'no-such-bucket-26' does not exist at http://127.0.0.1:" in one_line(r)
    r = CliRunner().invoke(main, GEN + ["--n", "40", "--out", "s3://no-such-bucket-26/ds"])
    assert "s3 bucket 'no-such-bucket-26' does not exist" in one_line(r)


def _moto():
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, f"http://127.0.0.1:{port}"


def test_endpoint_lost_mid_run_is_one_line_with_a_log(tmp_path):
    """A moto server of its own (the session's must live on), stopped once the job has committed a shard."""
    pytest.importorskip("moto.server")
    server, url = _moto()
    home = tmp_path / "home"
    env = {**os.environ, "AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
           "AWS_DEFAULT_REGION": "us-east-1", "FACTORY_HOME": str(home)}
    try:
        import boto3

        s3 = boto3.client("s3", endpoint_url=url, aws_access_key_id="x", aws_secret_access_key="x",
                          region_name="us-east-1")
        s3.create_bucket(Bucket="lost-26")
        p = subprocess.Popen([sys.executable, "-m", "factory.cli", *GEN, "--n", "800", "--out", "s3://lost-26/ds"],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def committed() -> bool:
            got = s3.list_objects_v2(Bucket="lost-26", Prefix="ds/done/")
            return got.get("KeyCount", 0) >= 1

        t0 = time.time()
        while not committed() and p.poll() is None and time.time() - t0 < 180:
            time.sleep(0.2)
        assert p.poll() is None, p.communicate()[1][-2000:]
    finally:
        server.stop()
    t0 = time.time()
    _, err = p.communicate(timeout=300)
    took = time.time() - t0
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert p.returncode == 1 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    line = lines[0]
    assert f"cannot reach s3 endpoint {url}" in line and "check AWS_ENDPOINT_URL / network" in line
    assert "shard(s) not started" in line and "rerun the same command to resume" in line
    log = Path(line.rsplit("(details in ", 1)[1].rstrip(")"))
    assert log.parent == home / "logs" and "Traceback" in log.read_text()
    assert took < 120, took  # stops at the first unreachable shard instead of failing each in turn
    print(f"endpoint lost: refused {took:.1f} s after the server stopped; {len(err)} bytes on stderr")


# ------------------------------------------------------------------ two writers on one prefix (item 7)

def test_store_lock_refuses_a_second_writer(s3_server):
    fs, bucket = s3_server["fs"], s3_server["bucket"]
    root = f"{bucket}/locked-26"
    a = fmt.StoreLock(fs, root, "factory process", name=f"s3://{root}")
    with a:
        assert json.loads(fs.cat_file(f"{root}/.lock"))["writer"] == a.body["writer"]
        with pytest.raises(fmt.FolderBusy, match=f"s3://{root} is being written by another factory process"):
            fmt.StoreLock(fs, root, "factory process", name=f"s3://{root}").__enter__()
        a.check()
        # another writer replaced the lock (e.g. deleted it by hand and started): the first may not commit
        fs.pipe_file(f"{root}/.lock", json.dumps({"host": "h2", "pid": 7, "writer": "w2"}).encode())
        with pytest.raises(fmt.FolderBusy, match="h2 pid 7, writer w2"):
            a.check()
    assert fs.exists(f"{root}/.lock")  # not ours any more: left alone
    fs.rm_file(f"{root}/.lock")


def test_dead_writer_on_this_host_is_taken_over(s3_server):
    fs, bucket = s3_server["fs"], s3_server["bucket"]
    root = f"{bucket}/stale-26"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    fs.pipe_file(f"{root}/.lock", json.dumps({"host": socket.gethostname(), "pid": dead.pid, "writer": "old"}).encode())
    with fmt.StoreLock(fs, root, "factory process", name=f"s3://{root}") as lock:
        assert json.loads(fs.cat_file(f"{root}/.lock"))["writer"] == lock.body["writer"]
    assert not fs.exists(f"{root}/.lock")


def test_second_generate_on_one_prefix_refused(s3_server):
    fs, bucket = s3_server["fs"], s3_server["bucket"]
    root = f"{bucket}/two-writers-26"
    fs.pipe_file(f"{root}/.lock", json.dumps({"host": "other-host", "pid": 4242, "writer": "abcdef0123"}).encode())
    r = CliRunner().invoke(main, GEN + ["--n", "40", "--out", f"s3://{root}"])
    line = one_line(r)
    assert f"s3://{root} is being written by another factory process (other-host pid 4242, writer abcdef01)" in line
    assert f"delete s3://{root}/.lock if that writer is gone" in line
    assert not fs.exists(f"{root}/shards")
    fs.rm_file(f"{root}/.lock")
    r = CliRunner().invoke(main, GEN + ["--n", "40", "--out", f"s3://{root}"])
    assert r.exit_code == 0, r.output
    assert fs.exists(f"{root}/manifest.json") and not fs.exists(f"{root}/.lock")


def test_orphaned_task_of_a_lost_connection_is_not_printed():
    """asyncio reports a store request whose connection died as "Task exception was never retrieved" with a
    traceback when the task is collected; once a process uses a store those records are dropped (the run
    reports the failure itself) and every other asyncio record still shows."""
    import logging

    aiohttp = pytest.importorskip("aiohttp")
    from factory.format import store

    fmt.check_store("s3://")  # an s3 URL without a bucket: installs the filter, probes nothing
    log = logging.getLogger("asyncio")
    assert store._TASK_FILTER in log.filters

    def record(exc: BaseException, msg: str) -> logging.LogRecord:
        return log.makeRecord("asyncio", logging.ERROR, __file__, 1, msg, (), (type(exc), exc, None))

    lost = aiohttp.ClientConnectionResetError("Cannot write to closing transport")
    assert not log.filter(record(lost, "Task exception was never retrieved\nfuture: <Task ...>"))
    assert log.filter(record(ValueError("a bug"), "Task exception was never retrieved\nfuture: <Task ...>"))
    assert log.filter(record(lost, "Exception in callback ..."))
    assert "cannot reach s3 endpoint" in str(fmt.storage_error(lost))
