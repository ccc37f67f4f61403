"""Reproducibility as promised in docs/format.md ("Reproducibility"): the same shapes bytes under every
CPU capability torch can pick, the platform record (sidecars, manifest, info, card, --same-platform),
and `factory verify --regenerate` (honest datasets pass, an edited spec fails in one line)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from factory import format as fmt
from factory.cli import main

REPO = Path(__file__).resolve().parent.parent
BASE = ["generate", "--generator", "shapes", "--workers", "0", "--quiet"]
SMALL = BASE + ["--n", "48", "--shard-size", "16", "--seed", "7"]


def cli(*args, expect=0):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == expect, r.output
    assert "Traceback" not in r.output
    return r


def factory_cmd(args, capability: str | None, expect=0) -> subprocess.CompletedProcess:
    """`factory ARGS` in a fresh process under ATEN_CPU_CAPABILITY (OPENBLAS_CORETYPE left as it is)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("ATEN_CPU_CAPABILITY", None)
    if capability:
        env["ATEN_CPU_CAPABILITY"] = capability
    p = subprocess.run([sys.executable, "-m", "factory.cli", *map(str, args)], env=env, capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == expect, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    return p


def capabilities() -> list[str]:
    """default, avx2 and this machine's best (x86-64 only)."""
    import platform

    import torch

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the capability test is for x86-64 (ATEN_CPU_CAPABILITY default/avx2/avx512)")
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    caps = ["default"] + (["avx2"] if " avx2" in flags else [])
    best = torch.backends.cpu.get_cpu_capability().lower()
    return caps + ([best] if best not in caps else [])


def content(root: Path) -> dict:
    """Everything whose bytes the promise covers: shard tars, index fragments, latents, and the ids."""
    m = json.loads((root / "manifest.json").read_text())
    files = {p.relative_to(root).as_posix(): fmt.sha256_bytes(p.read_bytes())
             for d in ("shards", "index") for p in sorted((root / d).iterdir())}
    return {"files": files, "dataset_id": m["dataset_id"], "spec_hash": m["spec_hash"],
            "latents": m["latents"]["sha256_of_shard_hashes"]}


@pytest.fixture(scope="module")
def by_capability(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for cap in capabilities():
        root = tmp_path_factory.mktemp("cap") / cap
        factory_cmd(SMALL + ["--out", root], cap)
        out[cap] = root
    return out


def test_same_bytes_under_every_cpu_capability(by_capability):
    made = {cap: content(root) for cap, root in by_capability.items()}
    first = next(iter(made.values()))
    assert len(first["files"]) == 6
    for cap, c in made.items():
        assert c == first, f"ATEN_CPU_CAPABILITY={cap} made other bytes"
    recorded = {cap: json.loads((root / "done" / "000000.json").read_text())["platform"]["cpu_capability"]
                for cap, root in by_capability.items()}
    assert [v.lower() for v in recorded.values()] == list(recorded)  # each sidecar names its capability


def test_platform_record_info_card_and_same_platform(by_capability, tmp_path):
    caps = list(by_capability)
    if len(caps) < 2:
        pytest.skip("this CPU offers one capability only")
    root = tmp_path / "mixed"
    src = by_capability[caps[0]]
    cli(*SMALL, "--out", root)  # this process: the machine's best capability unless the environment says otherwise
    m = json.loads((root / "manifest.json").read_text())
    (pid, rec), = m["platforms"].items()
    assert all(s["platform"] == pid for s in m["shards"]) and rec["torch"] and rec["device"].startswith("cpu")
    assert {"device", "torch", "cpu_capability", "precision", "compile"} <= set(rec)
    assert "made on 1 platform" in cli("info", root).output
    # shard 2 made again under another capability: allowed, and shown
    (root / "manifest.json").unlink()
    (root / "done" / "000002.json").unlink()
    other = caps[0] if caps[0] != rec["cpu_capability"].lower() else caps[-1]
    refused = factory_cmd(SMALL + ["--out", root, "--same-platform"], other, expect=1)
    assert len(refused.stderr.strip().splitlines()[-1:]) == 1
    assert "another platform" in refused.stderr and "--same-platform" in refused.stderr
    factory_cmd(SMALL + ["--out", root], other)
    info = cli("info", root).output
    assert "made on 2 platforms" in info
    assert "made on 2 platforms" in (root / "README.md").read_text()
    assert content(root)["dataset_id"] == content(src)["dataset_id"]  # the same bytes all the same
    # the mixed dataset still regenerates, bytes compared on every shard (shapes: the same bytes on any x86-64 CPU)
    r = cli("verify", root, "--regenerate", 6, "--seed", 1, "--json")
    rep = json.loads(r.output)["regenerate"]
    assert rep["ok"] and rep["exact"] and rep["latents_equal"] == 6 and rep["bytes_equal"] == 6


def test_verify_regenerate_honest_and_edited(tmp_path):
    honest = tmp_path / "seed8"
    cli(*BASE, "--n", 24, "--shard-size", 12, "--seed", 8, "--resolution", 64, "--out", honest)
    r = cli("verify", honest, "--regenerate", 5)
    lines = r.output.strip().splitlines()
    assert lines[0].startswith("PASS") and len(lines) == 2 and lines[1].startswith("coverage: every shard checked")
    assert "bytes compared (the shapes world promises the same bytes on every x86-64 CPU" in r.output
    verbose = cli("verify", honest, "--regenerate", 3, "--seed", 2, "--verbose").output.strip().splitlines()
    assert verbose[0].startswith("OK") and len(verbose) == 6 and all("latent True" in x for x in verbose[1:4])
    assert "(--seed 2)" in verbose[4]
    # the forgery: made with seed 8, the manifest says seed 7 (and its spec_hash matches)
    m = json.loads((honest / "manifest.json").read_text())
    m["spec"]["latents"]["seed"] = 7
    m["spec_hash"] = fmt.sha256_bytes(fmt.canonical_json(m["spec"]))
    (honest / "manifest.json").write_text(json.dumps(m))
    assert cli("verify", honest).output.startswith("OK")  # every byte and hash is self-consistent
    assert "seed         7" in cli("info", honest).output
    r = cli("verify", honest, "--regenerate", 4, expect=1)
    assert r.output.startswith("FAIL") and len(r.output.strip().splitlines()) == 2
    assert "latents are not the spec's (gaussian, seed 7)" in r.output
    # an edited spec without a matching hash is named as such
    m["spec"]["shift_r"] = 4.0
    (honest / "manifest.json").write_text(json.dumps(m))
    r = cli("verify", honest, "--regenerate", 2, expect=1)
    assert "spec_hash is not the sha256 of its spec" in r.output


def test_verify_regenerate_on_s3(s3_server, tmp_path):
    url = f"s3://{s3_server['bucket']}/regen"
    cli(*BASE, "--n", 16, "--shard-size", 8, "--resolution", 64, "--out", url)
    rep = json.loads(cli("verify", url, "--regenerate", 4, "--json").output)
    assert rep["ok"] and rep["regenerate"]["exact"] and rep["regenerate"]["bytes_equal"] == 4


# ------------------------------------------------------------------ learned generators

def test_verify_regenerate_dcgan_real_faces(tmp_path):
    from factory.generators.dcgan import packaged_face_weights

    weights = packaged_face_weights()
    if weights is None:
        pytest.skip("gan-face-generate is not installed: pip install --no-deps gan-face-generate==1.1.1")
    h = np.random.default_rng(0).standard_normal(100).astype(np.float32)
    np.save(tmp_path / "h.npy", h / np.linalg.norm(h))
    out = tmp_path / "faces"
    cli("generate", "--generator", "dcgan", "--weights", weights, "--direction", tmp_path / "h.npy", "--n", 12,
        "--shard-size", 6, "--workers", 0, "--quiet", "--out", out)
    r = cli("verify", out, "--regenerate", 4, "--weights", weights)
    assert r.output.startswith("PASS") and "identical" in r.output
    r = cli("verify", out, "--regenerate", 2, expect=1)  # the weights are not at hand
    assert "pass --weights FILE" in r.output and len(r.output.strip().splitlines()) == 1
    np.save(tmp_path / "other.npy", np.zeros((1,), np.float32))
    r = cli("verify", out, "--regenerate", 2, "--weights", tmp_path / "other.npy", expect=1)
    assert "has sha256" in r.output


def test_verify_regenerate_bigbigan_golden(golden, tmp_path):
    out = tmp_path / "gold"
    cli("generate", "--generator", "bigbigan", "--weights", golden / "state_dict.safetensors",
        "--generator-config", golden / "config.json", "--latents", golden / "z.npy",
        "--direction", golden / "shift_direction.npy", "--n", 4, "--shard-size", 2, "--workers", 0, "--quiet",
        "--out", out)
    r = cli("verify", out, "--regenerate", 3, "--weights", golden / "state_dict.safetensors",
            "--latents", golden / "z.npy")
    assert r.output.startswith("PASS") and "identical" in r.output
    r = cli("verify", out, "--regenerate", 1, "--weights", golden / "state_dict.safetensors", expect=1)
    assert "pass --latents FILE" in r.output
