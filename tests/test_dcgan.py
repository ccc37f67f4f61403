"""The `dcgan` adapter: shape inference and strict loading on tiny synthetic state dicts (built
here with the PyTorch examples' layout, independently of the adapter's own module), and the real
pretrained face DCGAN of the `gan-face-generate` package when it is installed."""
from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from factory.format import FactoryError
from factory.generators import Generator, known_generators, load_generator
from factory.generators.dcgan import packaged_face_weights


def examples_netG(nz: int, ngf: int, nc: int, n_layers: int) -> nn.Sequential:
    """The examples' generator written out by hand: (ConvT, BN, ReLU) * (L-1), ConvT, Tanh."""
    ch = [nz] + [ngf * 2 ** (n_layers - 2 - i) for i in range(n_layers - 1)] + [nc]
    mods: list[nn.Module] = []
    for i in range(n_layers):
        mods.append(nn.ConvTranspose2d(ch[i], ch[i + 1], 4, 1 if i == 0 else 2, 0 if i == 0 else 1, bias=False))
        mods += [nn.BatchNorm2d(ch[i + 1]), nn.ReLU(True)] if i < n_layers - 1 else [nn.Tanh()]
    return nn.Sequential(*mods)


class Examples(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.main = examples_netG(**kw)

    def forward(self, z):
        return self.main(z)


def synthetic(nz=8, ngf=4, nc=3, n_layers=3, seed=0) -> tuple[Examples, dict]:
    """A trained-looking tiny netG: random weights and non-trivial BatchNorm running statistics."""
    torch.manual_seed(seed)
    net = Examples(nz=nz, ngf=ngf, nc=nc, n_layers=n_layers)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval(), {k: v.clone() for k, v in net.state_dict().items()}


def save(tmp_path, obj, name="netG.pth"):
    p = tmp_path / name
    torch.save(obj, p)
    return p


def z_of(n, dim, seed=0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def test_registered():
    assert "dcgan" in known_generators()


@pytest.mark.parametrize("nz,ngf,nc,n_layers,res", [(8, 4, 3, 3, 16), (5, 2, 3, 4, 32), (3, 3, 1, 2, 8)])
def test_infers_shape_and_matches_the_examples_network(tmp_path, nz, ngf, nc, n_layers, res):
    net, sd = synthetic(nz, ngf, nc, n_layers)
    g = load_generator("dcgan", weights=save(tmp_path, sd))
    assert isinstance(g, Generator)
    assert (g.dim_z, g.resolution) == (nz, res)
    assert g.identity()["config"] == {"nz": nz, "ngf": ngf, "nc": nc, "resolution": res}
    z = z_of(4, nz)
    x = g(z)
    assert x.shape == (4, 3, res, res) and x.dtype == torch.float32
    with torch.no_grad():
        ref = net(z[:, :, None, None]).expand(-1, 3, -1, -1)  # nc=1 is repeated to RGB
    torch.testing.assert_close(x, ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(g(z), x)  # deterministic
    torch.testing.assert_close(g(z[1:2]), x[1:2], rtol=1e-5, atol=1e-6)  # eval BN: no batch statistics


def test_checkpoint_dict_form(tmp_path):
    _, sd = synthetic()
    plain = load_generator("dcgan", weights=save(tmp_path, sd, "plain.pth"))
    ckpt = {"netG_state_dict": sd, "netD_state_dict": {"main.0.weight": torch.zeros(1)}, "epoch": 3}
    p = save(tmp_path, ckpt, "ckpt.tar")
    g = load_generator("dcgan", weights=p)
    z = z_of(2, 8)
    assert torch.equal(g(z), plain(z))
    ident = g.identity()
    assert ident["state_dict_key"] == "netG_state_dict" and plain.identity()["state_dict_key"] is None
    assert ident["weights_sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()


def test_lenient_only_where_harmless(tmp_path):
    _, sd = synthetic()
    z = z_of(2, 8)
    ref = load_generator("dcgan", weights=save(tmp_path, sd, "a.pth"))(z)
    no_counters = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    assert torch.equal(load_generator("dcgan", weights=save(tmp_path, no_counters, "b.pth"))(z), ref)
    data_parallel = {f"module.{k}": v for k, v in sd.items()}
    assert torch.equal(load_generator("dcgan", weights=save(tmp_path, data_parallel, "c.pth"))(z), ref)


def error(tmp_path, obj, **kw) -> str:
    with pytest.raises(FactoryError) as e:
        load_generator("dcgan", weights=save(tmp_path, obj), **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_strict_keys(tmp_path):
    _, sd = synthetic()
    extra = dict(sd, **{"main.7.weight": torch.ones(3)})  # main.7 is the Tanh: no parameters
    assert "1 unexpected keys: main.7.weight" in error(tmp_path, extra)
    missing = {k: v for k, v in sd.items() if k != "main.1.running_var"}
    assert "1 missing keys: main.1.running_var" in error(tmp_path, missing)
    assert "not a DCGAN generator" in error(tmp_path, {"fc.weight": torch.ones(2, 2)})
    moved = {k.replace("main.6.", "main.7."): v for k, v in sd.items()}
    assert "one every 3 modules" in error(tmp_path, moved)


def test_wrong_shape(tmp_path):
    _, sd = synthetic()  # ngf=4: main.3 is [8, 4, 4, 4]
    bad = dict(sd, **{"main.3.weight": torch.randn(8, 5, 4, 4)})
    msg = error(tmp_path, bad)
    assert "nz=8 ngf=4 nc=3 16px" in msg and "main.3.weight (file [8, 5, 4, 4], model [8, 4, 4, 4])" in msg
    five = dict(sd, **{"main.6.weight": torch.randn(4, 5, 4, 4)})
    assert "nc=5" in error(tmp_path, five)
    nan = dict(sd, **{"main.0.weight": torch.full_like(sd["main.0.weight"], float("nan"))})
    assert "NaN" in error(tmp_path, nan)
    assert "resolution=64 but" in error(tmp_path, sd, resolution=64)
    msg = error(tmp_path, sd, config={"nz": 8, "ngf": 8, "nc": 3, "resolution": 16})
    assert "config nz=8 ngf=8 nc=3 16px disagrees" in msg and "holds nz=8 ngf=4 nc=3 16px" in msg
    assert load_generator("dcgan", weights=save(tmp_path, sd, "ok.pth"), resolution=16).resolution == 16


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_files_and_options(tmp_path):
    _, sd = synthetic()
    p = tmp_path / "evil.pth"
    with open(p, "wb") as f:
        pickle.dump({"netG_state_dict": _Evil()}, f, protocol=2)
    with pytest.raises(FactoryError, match=r"refused: .*print"):
        load_generator("dcgan", weights=p)
    (tmp_path / "page.pth").write_text("<html>login</html>")
    with pytest.raises(FactoryError, match="not a torch checkpoint .*HTML page"):
        load_generator("dcgan", weights=tmp_path / "page.pth")
    (tmp_path / "cut.pth").write_bytes(save(tmp_path, sd).read_bytes()[:300])
    with pytest.raises(FactoryError, match="corrupt or truncated torch checkpoint"):
        load_generator("dcgan", weights=tmp_path / "cut.pth")
    with pytest.raises(FactoryError, match="not found"):
        load_generator("dcgan", weights=tmp_path / "nope.pth")
    with pytest.raises(FactoryError, match="netG_state_dict"):
        load_generator("dcgan", weights=save(tmp_path, {"epoch": 3, "G": sd}, "other.tar"))
    with pytest.raises(FactoryError, match="needs its weights"):
        load_generator("dcgan")
    with pytest.raises(FactoryError, match="unknown option"):
        load_generator("dcgan", weights=save(tmp_path, sd), colour="red")
    with pytest.raises(FactoryError, match="dtype"):
        load_generator("dcgan", weights=save(tmp_path, sd), dtype="int8")
    with pytest.raises(FactoryError, match="expects z of shape"):
        load_generator("dcgan", weights=save(tmp_path, sd))(torch.zeros(2, 9))


def test_random_weights_and_precisions(tmp_path):
    a = load_generator("dcgan", random_weights=True, seed=1, config={"nz": 6, "ngf": 2, "nc": 3, "resolution": 16})
    b = load_generator("dcgan", random_weights=True, seed=1, config={"nz": 6, "ngf": 2, "nc": 3, "resolution": 16})
    assert a.identity() == b.identity() and (a.dim_z, a.resolution) == (6, 16)
    assert load_generator("dcgan", random_weights=True).dim_z == 100  # the examples' default shape
    _, sd = synthetic()
    p = save(tmp_path, sd)
    z = z_of(3, 8)
    ref = load_generator("dcgan", weights=p)(z)
    for kw in ({"dtype": torch.float64}, {"dtype": "bf16"}, {"autocast": "bf16"}, {"channels_last": True}):
        x = load_generator("dcgan", weights=p, **kw)(z)
        assert x.dtype == torch.float32 and x.shape == ref.shape
        torch.testing.assert_close(x, ref, atol=0.05, rtol=0)


# ------------------------------------------------------------------ the real pretrained face DCGAN

REAL = packaged_face_weights()
needs_real = pytest.mark.skipif(
    REAL is None, reason="gan-face-generate is not installed: pip install --no-deps gan-face-generate==1.1.1"
)


@pytest.fixture(scope="module")
def face():
    return load_generator("dcgan", weights=REAL)


@needs_real
def test_real_face_dcgan(face):
    assert (face.dim_z, face.resolution) == (100, 64)
    assert face.identity()["config"] == {"nz": 100, "ngf": 64, "nc": 3, "resolution": 64}
    assert face.identity()["state_dict_key"] == "netG_state_dict"
    z = z_of(8, 100, seed=3)
    x = face(z)
    assert x.shape == (8, 3, 64, 64) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(face(z), x)
    torch.testing.assert_close(face(z[5:6]), x[5:6], rtol=1e-4, atol=1e-5)
    assert x.std() > 0.1  # a picture, not a constant
    assert (x[0] - x[1]).abs().mean() > 0.05  # different latents, different faces
    again = load_generator("dcgan", weights=REAL)
    assert torch.equal(again(z), x) and again.identity() == face.identity()


@needs_real
@pytest.mark.gpu
def test_real_face_dcgan_cuda(face):
    g = load_generator("dcgan", weights=REAL, device="cuda")
    z = z_of(64, 100, seed=4)
    x = g(z)
    assert x.device.type == "cuda" and torch.equal(g(z), x)
    torch.testing.assert_close(x.cpu(), face(z), atol=2e-3, rtol=0)


@pytest.mark.parametrize("name,options", [
    ("dcgan", {"random_weights": True, "seed": 1, "config": {"nz": 6, "ngf": 2, "nc": 3, "resolution": 16}}),
    ("bigbigan", {"random_weights": True, "seed": 0,
                  "config": {"G_ch": 4, "dim_z": 24, "resolution": 32, "G_attn": "0"}}),
])
def test_gradients_reach_z_never_the_weights(name, options):
    """`directions discover` and `score --refine-steps` train through G: the output must be
    differentiable in z (the engine itself calls G under no_grad), with frozen weights."""
    gen = load_generator(name, **options)
    z = torch.randn(2, gen.dim_z, requires_grad=True)
    gen(z).square().mean().backward()
    assert z.grad is not None and float(z.grad.abs().sum()) > 0


def test_random_directions_take_the_generators_width(tmp_path):
    """`directions random` defaults --dim to the generator's dim_z (read off a dcgan weights file)."""
    from click.testing import CliRunner

    from factory.cli import main

    _, sd = synthetic(nz=8)
    weights = save(tmp_path, sd)
    r = CliRunner().invoke(main, ["directions", "random", "--n", "3", "--generator", "dcgan", "--weights", str(weights),
                                  "--out", str(tmp_path / "d.npy")])
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "d.npy").shape == (3, 8)
    r = CliRunner().invoke(main, ["directions", "random", "--n", "3", "--out", str(tmp_path / "s.npy")])
    assert r.exit_code == 0 and np.load(tmp_path / "s.npy").shape == (3, 120)
