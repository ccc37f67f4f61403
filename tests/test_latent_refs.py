"""Tasks carry references, not data: latent sources are small specs, files are opened by each worker
through `fsio.local_copy` (path or URL + sha256); `--latents FILE` sets --n; `--dashboard`."""
from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest
from click.testing import CliRunner

from factory import fsio
from factory.cli import main
from factory.format import FactoryError
from factory.latents import sources as latents
from factory.latents.embeddings import resolve

GEN = ["generate", "--generator", "shapes", "--resolution", "64", "--workers", "0", "--quiet"]


def test_latent_source_travels_as_a_small_spec(tmp_path):
    E = np.random.default_rng(0).standard_normal((5000, 120)).astype(np.float32)  # 2.4 MB
    np.save(tmp_path / "e.npy", E)
    src = latents.from_embeddings(str(tmp_path / "e.npy"), 120, seed=3, z_noise=0.2)
    rows = src.rows(100, 1500)  # the matrix is open in this process now
    blob = pickle.dumps(src)
    assert len(blob) < 1000, len(blob)
    assert np.array_equal(pickle.loads(blob).rows(100, 1500), rows)
    exact = latents.from_file(str(tmp_path / "e.npy"), 120)
    assert len(pickle.dumps(exact)) < 1000 and np.array_equal(exact.rows(7, 9), E[7:9])


def test_local_copy_downloads_once_and_checks_sha256(s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("FACTORY_HOME", str(tmp_path / "home"))
    fs, bucket = s3_server["fs"], s3_server["bucket"]
    data = b"latents" * 1000
    sha = hashlib.sha256(data).hexdigest()
    fs.pipe(f"{bucket}/refs/z.bin", data)
    url = f"s3://{bucket}/refs/z.bin"
    path = fsio.local_copy(url, sha)
    assert path == str(tmp_path / "home" / "cache" / sha / "z.bin") and open(path, "rb").read() == data
    assert fsio.local_copy(url, sha) == path  # checked once, then reused
    assert not list((tmp_path / "home" / "cache" / "partial").iterdir())  # no temp file left behind
    with pytest.raises(FactoryError, match="sha256") as e:
        fsio.local_copy(url, "0" * 64)
    assert "\n" not in str(e.value)
    with pytest.raises(FactoryError, match="not found on this worker"):
        fsio.local_copy(str(tmp_path / "nowhere.npy"), sha)


def test_embeddings_and_latents_from_s3_match_local(s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("FACTORY_HOME", str(tmp_path / "home"))
    fs, bucket = s3_server["fs"], s3_server["bucket"]
    E = np.random.default_rng(1).standard_normal((50, 120)).astype(np.float32)
    np.save(tmp_path / "faces.npy", E)
    fs.put(str(tmp_path / "faces.npy"), f"{bucket}/refs/faces.npy")
    url = f"s3://{bucket}/refs/faces.npy"
    here, there = resolve(str(tmp_path / "faces.npy")), resolve(url)
    assert (here.name, here.shape, here.sha256) == (there.name, there.shape, there.sha256) == \
        ("faces", (50, 120), hashlib.sha256((tmp_path / "faces.npy").read_bytes()).hexdigest())
    assert there.path == url  # workers open the URL themselves
    a = latents.from_embeddings(str(tmp_path / "faces.npy"), 120, 0, 0.1)
    b = latents.from_embeddings(url, 120, 0, 0.1)
    assert a.describe() == b.describe() and np.array_equal(a.rows(0, 2000), b.rows(0, 2000))
    f = latents.from_file(url, 120)
    assert f.path == url and f.describe() == latents.from_file(str(tmp_path / "faces.npy"), 120).describe()
    assert np.array_equal(f.rows(10, 20), E[10:20]) and latents.file_rows(url) == 50
    # a named store (zarr) copied to S3 is the same source as the store itself
    from factory.latents.embeddings import import_npy

    store = import_npy(str(tmp_path / "faces.npy"), "faces")
    fs.put(store.path, f"{bucket}/refs/faces.zarr", recursive=True)
    c = latents.from_embeddings(f"s3://{bucket}/refs/faces.zarr", 120, 0, 0.1)
    assert c.describe() == a.describe() and np.array_equal(c.rows(0, 2000), a.rows(0, 2000))


def test_latents_file_sets_n_and_refuses_another(tmp_path):
    Z = np.random.default_rng(2).standard_normal((6, 120)).astype(np.float32)
    np.save(tmp_path / "z.npy", Z)
    out = tmp_path / "ds"
    r = CliRunner().invoke(main, GEN + ["--latents", str(tmp_path / "z.npy"), "--shard-size", "3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "manifest.json").read_text())["samples"] == 6
    for n in ("4", "7"):
        r = CliRunner().invoke(main, GEN + ["--latents", str(tmp_path / "z.npy"), "--n", n, "--out",
                                            str(tmp_path / f"o{n}")])
        assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
        assert f"--n {n}" in r.output and "6 rows" in r.output and "Traceback" not in r.output
        assert not (tmp_path / f"o{n}").exists()


def test_dashboard_only_when_asked(tmp_path, capsys):
    from factory.generate.config import GenerateConfig
    from factory.generate.distribute import start_client

    assert "--dashboard" in CliRunner().invoke(main, ["generate", "--help"]).output
    for dashboard in (False, True):
        cfg = GenerateConfig(n=1, out=str(tmp_path / "x"), workers=1, dashboard=dashboard, device="cpu")
        client, cluster = start_client(cfg, 1)
        try:
            host = client.scheduler.address.split("://")[1].rsplit(":", 1)[0]
            status = http_status(f"http://{host}:{client.scheduler_info()['services']['dashboard']}/status")
        finally:
            client.close()
            cluster.close()
        err = capsys.readouterr().err
        assert (status == 200) == dashboard, status
        assert ("dask dashboard: http://" in err) == dashboard, err


def http_status(url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_weights_from_s3_give_the_same_shards(s3_server, tmp_path, monkeypatch):
    import hashlib as _h

    import torch

    from factory.generate.config import GenerateConfig
    from factory.generate.plan import make_plan
    from factory.generators import load_generator

    monkeypatch.setenv("FACTORY_HOME", str(tmp_path / "client-home"))
    fs, bucket = s3_server["fs"], s3_server["bucket"]
    g = load_generator("dcgan", random_weights=True, seed=1, config={"nz": 6, "ngf": 2, "nc": 3, "resolution": 16})
    torch.save(g.module.state_dict(), tmp_path / "netG.pth")
    fs.put(str(tmp_path / "netG.pth"), f"{bucket}/weights/netG.pth")
    np.save(tmp_path / "h.npy", np.ones(6, np.float32))
    args = ["generate", "--generator", "dcgan", "--direction", str(tmp_path / "h.npy"), "--n", "8",
            "--shard-size", "4", "--workers", "0", "--quiet"]
    digests = {}
    for where, weights in (("local", str(tmp_path / "netG.pth")), ("s3", f"s3://{bucket}/weights/netG.pth")):
        r = CliRunner().invoke(main, args + ["--weights", weights, "--out", str(tmp_path / where)])
        assert r.exit_code == 0, r.output
        man = json.loads((tmp_path / where / "manifest.json").read_text())
        assert man["spec"]["generator"]["weights_source"] == "netG.pth"  # its name, not where it lives
        digests[where] = (man["dataset_id"], man["spec"],
                          [_h.sha256((tmp_path / where / s["path"]).read_bytes()).hexdigest() for s in man["shards"]])
    assert digests["local"] == digests["s3"]
    # a worker on another host: the job carries the URL and sha256, the worker makes its own copy
    plan = make_plan(GenerateConfig(n=8, out=str(tmp_path / "x"), generator="dcgan", direction=str(tmp_path / "h.npy"),
                                    generator_options={"weights": f"s3://{bucket}/weights/netG.pth"}))
    job = pickle.loads(pickle.dumps(plan.job(str(tmp_path / "x"))))
    assert job.generator_options["weights"].startswith("s3://") and len(pickle.dumps(job)) < 4000
    monkeypatch.setenv("FACTORY_HOME", str(tmp_path / "worker-home"))
    fsio.forget_checked()
    local = job.worker_options()["weights"]
    assert local.startswith(str(tmp_path / "worker-home" / "cache")) and open(local, "rb").read() == \
        (tmp_path / "netG.pth").read_bytes()
