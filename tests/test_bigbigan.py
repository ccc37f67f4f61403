"""BigBiGAN generator: golden parity, key layout, strict/safe loading, fast paths, direction files."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from factory.directions.io import load_direction_file
from factory.format import FactoryError
from factory.generators import Generator, known_generators, load_generator
from factory.generators.bigbigan.fused import interleave_phases, polyphase_weight
from factory.generators.bigbigan.model import BigBiGANConfig

REPO = Path(__file__).resolve().parent.parent
SMALL = {"G_ch": 8, "dim_z": 24, "shared_dim": 16}

# Measured on CPU with the golden model (max abs vs the stored fp32 images, 8 images):
# reference fp32 1.7e-6, fused fp32 1.9e-6, fused channels_last 1.9e-6, TF32 (no-op on CPU) 1.9e-6,
# bf16 autocast 2.9e-2. Stated tolerances:
TOL_FP32 = 2e-5
TOL_BF16 = 0.08


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def gold(golden):
    z = torch.from_numpy(np.load(golden / "z.npy"))
    h = torch.from_numpy(np.load(golden / "shift_direction.npy"))
    zz = torch.cat([z, z + 5.0 * h])  # G(z) and G(z + 5h) in one batch
    expected = np.concatenate([np.load(golden / "image.npy"), np.load(golden / "image_shifted.npy")])
    return {"dir": golden, "weights": golden / "state_dict.safetensors", "config": golden / "config.json",
            "z": z, "zz": zz, "expected": expected}


def _load(gold, **kw):
    return load_generator("bigbigan", weights=gold["weights"], config=gold["config"], **kw)


@pytest.fixture(scope="module")
def small_sd(gold):
    from safetensors.torch import load_file

    return load_file(str(gold["weights"]))


# ---------------------------------------------------------------------------------------------- parity


def test_registered_and_protocol(gold):
    assert "bigbigan" in known_generators()
    g = _load(gold)
    assert isinstance(g, Generator)
    assert (g.dim_z, g.resolution, g.device) == (24, 128, torch.device("cpu"))
    ident = g.identity()
    assert ident["name"] == "bigbigan" and ident["config"]["G_ch"] == 8 and ident["config"]["dim_z"] == 24
    assert len(ident["weights_sha256"]) == 64
    assert ident["precision"] == {"dtype": "float32", "autocast": None, "fused": False,
                                  "channels_last": False, "compile": False}
    json.dumps(ident)
    assert g.named_directions() == {}
    with pytest.raises(FactoryError, match=r"z of shape \[B, 24\]"):
        g(torch.zeros(2, 120))


def test_golden_parity_fp32_and_intermediates(gold):
    g = _load(gold)
    out = g(gold["zz"])
    assert out.dtype == torch.float32 and out.shape == (8, 3, 128, 128) and not out.requires_grad
    err = np.abs(out.numpy() - gold["expected"]).max()
    assert err < TOL_FP32, err
    acts = g.intermediates(gold["z"][:1])
    ref = np.load(gold["dir"] / "intermediates_sample0.npz")
    assert set(ref.files) <= set(acts)
    for k in ref.files:
        assert acts[k].shape == ref[k].shape, k
        assert np.abs(acts[k].numpy() - ref[k]).max() < TOL_FP32, k


def test_config_dict_equals_config_file(gold):
    full = json.loads(gold["config"].read_text())["config"]
    a = BigBiGANConfig.from_any(full)
    assert a == BigBiGANConfig.from_any(gold["config"]) == BigBiGANConfig.from_any(SMALL)
    assert (a.in_channels, a.out_channels, a.attn_resolutions) == ([128, 128, 64, 32, 16], [128, 64, 32, 16, 8], [64])
    with pytest.raises(FactoryError, match="unknown BigBiGAN config keys"):
        BigBiGANConfig.from_any({**full, "G_chh": 3})
    with pytest.raises(FactoryError, match="norm_style"):
        BigBiGANConfig.from_any({**full, "norm_style": "in"})


@pytest.mark.parametrize(
    "opts,tol",
    [
        ({"fused": True}, TOL_FP32),
        ({"fused": True, "channels_last": True}, TOL_FP32),
        ({"autocast": "tf32"}, TOL_FP32),  # TF32 flags only touch CUDA: CPU result is the fp32 one
        ({"autocast": "bf16", "channels_last": True}, TOL_BF16),
    ],
    ids=["fused-fp32", "fused-channels_last", "tf32", "bf16+channels_last"],
)
def test_fast_paths_match_golden(gold, opts, tol):
    g = _load(gold, **opts)
    assert g.identity()["precision"]["fused"] is True
    out = g(gold["zz"])
    assert out.dtype == torch.float32
    err = np.abs(out.numpy() - gold["expected"]).max()
    assert err < tol, err


def test_polyphase_upsample_conv_identity():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 4, generator=gen, dtype=torch.float64)
    w = torch.randn(6, 3, 3, 3, generator=gen, dtype=torch.float64)
    ref = torch.nn.functional.conv2d(torch.nn.functional.interpolate(x, scale_factor=2), w, padding=1)
    p = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1)), polyphase_weight(w))
    for cl in (False, True):
        q = p.contiguous(memory_format=torch.channels_last) if cl else p
        assert torch.allclose(interleave_phases(q, cl), ref, atol=1e-12)


def test_full_size_random_weights_match_spec(shared):
    spec = json.loads((shared / "reference" / "bigbigan" / "bigbigan128_state_dict_spec.json").read_text())
    g = load_generator("bigbigan", random_weights=True, seed=0)
    sd = g.state_dict()
    want = {k: v["shape"] for k, v in spec["state_dict"].items()}
    assert len(sd) == len(want) == 166
    assert list(sd) == list(want)  # same keys, same order
    assert {k: list(v.shape) for k, v in sd.items()} == want
    n_params = sum(p.numel() for p in g.module.parameters())
    assert n_params == spec["total_parameters"] == 70_433_988
    u = sd["blocks.0.0.conv1.u0"]
    assert abs(u.norm().item() - 1) < 1e-5 and (sd["blocks.2.0.bn1.stored_var"] > 0).all()
    assert g.identity()["weights_source"] == "random(seed=0)"
    out = g(torch.randn(1, 120, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (1, 3, 128, 128) and torch.isfinite(out).all() and out.abs().max() <= 1


# ---------------------------------------------------------------------------------------------- loading errors


def test_missing_weights_says_how_to_get_them():
    with pytest.raises(FactoryError) as e:
        load_generator("bigbigan", config=SMALL)
    msg = str(e.value)
    assert "factory weights fetch bigbigan" in msg and "BigBiGAN_x1.pth" in msg
    with pytest.raises(FactoryError, match="weights file not found: .*nope.pth.*factory weights fetch bigbigan"):
        load_generator("bigbigan", weights="/nonexistent/nope.pth", config=SMALL)


def test_pth_state_dict_loads_like_safetensors(gold, small_sd, tmp_path):
    p = tmp_path / "small.pth"
    torch.save(small_sd, p)
    g = load_generator("bigbigan", weights=p, config=SMALL)
    assert np.abs(g(gold["z"][:1]).numpy() - gold["expected"][:1]).max() < TOL_FP32


def _bad_files(tmp_path: Path, gold, small_sd):
    raw = gold["weights"].read_bytes()
    files = {}
    files["truncated.safetensors"] = raw[: len(raw) // 2]
    files["page.pth"] = b"<!DOCTYPE html><html><head><title>Dropbox - Error</title></head></html>"
    files["noise.pth"] = bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8))
    files["empty.pth"] = b""
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    p = tmp_path / "zip-truncated.pth"
    torch.save(small_sd, p)
    p.write_bytes(p.read_bytes()[:100_000])
    return tmp_path


@pytest.mark.parametrize(
    "name,pattern",
    [
        ("truncated.safetensors", r"truncated\.safetensors: corrupt or truncated safetensors file"),
        ("page.pth", r"page\.pth: not a checkpoint: it is an HTML page"),
        ("noise.pth", r"noise\.pth: not a checkpoint: it is an unknown format"),
        ("empty.pth", r"empty\.pth: empty file, not a checkpoint"),
        ("zip-truncated.pth", r"zip-truncated\.pth: corrupt or truncated torch checkpoint"),
    ],
)
def test_non_checkpoint_files_give_one_line_errors(gold, small_sd, tmp_path, name, pattern):
    d = _bad_files(tmp_path, gold, small_sd)
    with pytest.raises(FactoryError, match=pattern) as e:
        load_generator("bigbigan", weights=d / name, config=SMALL)
    assert "\n" not in str(e.value)


def _write_sd(tmp_path, sd, name="w.safetensors"):
    from safetensors.torch import save_file

    p = tmp_path / name
    save_file({k: v.contiguous() for k, v in sd.items()}, str(p))
    return p


def test_missing_key(small_sd, tmp_path):
    sd = dict(small_sd)
    del sd["blocks.3.1.gamma"]
    p = _write_sd(tmp_path, sd)
    with pytest.raises(FactoryError) as e:
        load_generator("bigbigan", weights=p, config=SMALL)
    assert str(e.value).startswith(f"{p} does not match BigBiGAN (G_ch=8, dim_z=24, ")
    assert "1 missing keys: blocks.3.1.gamma" in str(e.value)


def test_extra_key(small_sd, tmp_path):
    sd = dict(small_sd)
    sd["blocks.0.0.bn1.num_batches_tracked"] = torch.zeros(1)
    p = _write_sd(tmp_path, sd)
    with pytest.raises(FactoryError, match=r"1 unexpected keys: blocks\.0\.0\.bn1\.num_batches_tracked"):
        load_generator("bigbigan", weights=p, config=SMALL)


def test_wrong_shape_and_wrong_config(small_sd, tmp_path):
    sd = dict(small_sd)
    sd["linear.bias"] = torch.zeros(7)
    p = _write_sd(tmp_path, sd)
    with pytest.raises(FactoryError, match=r"1 shape mismatches: linear\.bias \(file \[7\], model \[2048\]\)"):
        load_generator("bigbigan", weights=p, config=SMALL)
    # the small file against the default (full) config: names the config that was used
    with pytest.raises(FactoryError, match=r"does not match BigBiGAN \(G_ch=96, dim_z=120.*shape mismatches"):
        load_generator("bigbigan", weights=_write_sd(tmp_path, small_sd, "ok.safetensors"))


def test_nan_weights_refused(small_sd, tmp_path):
    sd = dict(small_sd)
    sd["linear.bias"] = sd["linear.bias"].clone()
    sd["linear.bias"][3] = float("nan")
    with pytest.raises(FactoryError, match="linear.bias contains NaN or inf"):
        load_generator("bigbigan", weights=_write_sd(tmp_path, sd), config=SMALL)


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_malicious_pickle_is_refused_and_not_run(tmp_path):
    target = tmp_path / "pwned.txt"
    p = tmp_path / "evil.pth"
    torch.save({"linear.weight": torch.zeros(2, 2), "payload": _Evil(str(target))}, p)
    assert not target.exists()
    with pytest.raises(FactoryError, match=r"evil\.pth: refused: the checkpoint's pickle references code") as e:
        load_generator("bigbigan", weights=p, config=SMALL)
    assert "\n" not in str(e.value)
    assert not target.exists()
    # a legacy (non-zip) pickle too
    p2 = tmp_path / "evil_legacy.pth"
    with open(p2, "wb") as f:
        pickle.dump(_Evil(str(target)), f, protocol=2)
    with pytest.raises(FactoryError, match="refused"):
        load_generator("bigbigan", weights=p2, config=SMALL)
    assert not target.exists()


def test_bad_options():
    with pytest.raises(FactoryError, match="autocast='fp8'"):
        load_generator("bigbigan", random_weights=True, config=SMALL, autocast="fp8")
    with pytest.raises(FactoryError, match="either weights=PATH or random_weights=True"):
        load_generator("bigbigan", weights="x.pth", random_weights=True, config=SMALL)


def test_random_weights_are_deterministic():
    a = load_generator("bigbigan", random_weights=True, seed=3, config=SMALL)
    b = load_generator("bigbigan", random_weights=True, seed=3, config=SMALL)
    c = load_generator("bigbigan", random_weights=True, seed=4, config=SMALL)
    assert a.identity()["weights_sha256"] == b.identity()["weights_sha256"] != c.identity()["weights_sha256"]


# ---------------------------------------------------------------------------------------------- directions


def test_direction_files(tmp_path, gold):
    h = np.load(gold["dir"] / "shift_direction.npy")
    torch.save(torch.from_numpy(h), tmp_path / "d1.pth")
    torch.save(torch.from_numpy(h)[None], tmp_path / "d2.pth")
    np.save(tmp_path / "d3.npy", h)
    for name in ("d1.pth", "d2.pth", "d3.npy", "shift_direction.npy"):
        d = load_direction_file(gold["dir"] / name if name == "shift_direction.npy" else tmp_path / name, 24)
        assert d.dtype == np.float32 and d.shape == (24,)
        np.testing.assert_array_equal(d, h)


def test_direction_file_errors(tmp_path):
    torch.save(torch.ones(120), tmp_path / "wide.pth")
    with pytest.raises(FactoryError, match=r"wide\.pth: direction has width 120, the generator's dim_z is 24"):
        load_direction_file(tmp_path / "wide.pth", 24)
    np.save(tmp_path / "wide.npy", np.ones((1, 120), np.float32))
    with pytest.raises(FactoryError, match="width 120, the generator's dim_z is 24"):
        load_direction_file(tmp_path / "wide.npy", 24)
    bad = np.ones(24, np.float32)
    bad[2] = np.inf
    np.save(tmp_path / "inf.npy", bad)
    np.save(tmp_path / "obj.npy", np.array([object()] * 24, dtype=object), allow_pickle=True)
    torch.save({"a": 1, "b": 2}, tmp_path / "dict.pth")
    torch.save([1.0] * 24, tmp_path / "list.pth")
    (tmp_path / "junk.pth").write_bytes(b"hello world")
    (tmp_path / "empty.npy").write_bytes(b"")
    target = tmp_path / "pwned.txt"
    torch.save(_Evil(str(target)), tmp_path / "evil.pth")
    cases = {
        "inf.npy": "contains NaN or inf",
        "obj.npy": "not a plain numeric .npy array",
        "dict.pth": "expected a tensor, the file holds a dict",
        "list.pth": "expected a tensor, the file holds a list",
        "junk.pth": "not a .npy or torch tensor file",
        "empty.npy": "empty file",
        "evil.pth": "refused by weights_only loading",
        "missing.npy": "direction file not found",
    }
    for name, msg in cases.items():
        with pytest.raises(FactoryError) as e:
            load_direction_file(tmp_path / name, 24)
        assert msg in str(e.value) and name in str(e.value), (name, str(e.value))
        assert "\n" not in str(e.value)
    assert not target.exists()


# ---------------------------------------------------------------------------------------------- benchmark


def test_benchmark_smoke(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_generator.py"), "--device", "cpu", "--batch", "2",
         "--iters", "2", "--small", "--warmup", "0", "--variants", "fp32,fp32-fused,bf16-fused+cl",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(out.read_text())
    names = [x["variant"] for x in rep["results"]]
    assert names == ["fp32", "fp32-fused", "bf16-fused+cl"]
    d = {x["variant"]: x["max_abs_diff_vs_fp32"] for x in rep["results"]}
    assert d["fp32"] == 0 and d["fp32-fused"] < TOL_FP32 and d["bf16-fused+cl"] < TOL_BF16
    assert "| variant | batch | img/s |" in r.stdout


# ---------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize(
    "opts,tol",
    [
        ({}, 1e-4),
        ({"fused": True}, 1e-4),
        ({"autocast": "tf32"}, 5e-3),
        ({"autocast": "bf16", "channels_last": True}, TOL_BF16),
        ({"autocast": "bf16", "channels_last": True, "compile": True}, TOL_BF16),
    ],
    ids=["fp32", "fused", "tf32", "bf16+cl", "bf16+cl+compile"],
)
def test_gpu_paths_match_golden(gold, opts, tol):
    g = _load(gold, device="cuda", **opts)
    out = g(gold["zz"].cuda())
    assert out.is_cuda and out.dtype == torch.float32
    err = np.abs(out.cpu().numpy() - gold["expected"]).max()
    print(f"{opts}: max abs {err:.2e}")
    assert err < tol, err
