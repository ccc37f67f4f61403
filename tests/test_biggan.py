"""The `biggan` generator: parity with the `pytorch-pretrained-biggan` port (its code, tiny configs, seeded
random weights), strict and safe checkpoint reading, class sampling, and the engine and directions running
through it (tiny sizes, CPU)."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import pytorch_pretrained_biggan as port  # the reference port's code (test extras); no weights needed
import torch
from click.testing import CliRunner

import factory.format as fmt
from factory.format import FactoryError
from factory.generators import known_generators, load_generator
from factory.generators.biggan.checkpoint import random_state_dict, save_checkpoint
from factory.generators.biggan.generator import class_draws, parse_classes
from factory.generators.biggan.model import BigGAN, BigGANConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY = dict(output_dim=32, z_dim=8, class_embed_dim=8, channel_width=4, num_classes=10,
            layers=[[False, 16, 16], [True, 16, 8], [True, 8, 4], [False, 4, 2], [True, 2, 1]],
            attention_layer_position=2, eps=1e-4, n_stats=51)


def port_model(seed: int = 0):
    """The port's BigGAN at the TINY config with seeded random weights (positive variances, distinct
    truncation rows, spectral-norm vectors from power iterations, a non-zero attention gamma)."""
    model = port.BigGAN(port.BigGANConfig(**TINY)).eval()
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith("running_vars"):
            sd[k] = 0.5 + torch.rand(v.shape, generator=g)
        elif k.endswith("gamma"):
            sd[k] = torch.full(v.shape, 0.7)
        elif not k.endswith(("weight_u", "weight_v")):
            sd[k] = 0.3 * torch.randn(v.shape, generator=g)
    for k in list(model.state_dict()):
        if k.endswith("weight_u"):
            w = sd[k[:-1] + "orig"].reshape(sd[k[:-1] + "orig"].shape[0], -1)
            u = torch.nn.functional.normalize(torch.randn(w.shape[0], generator=g), dim=0)
            for _ in range(3):
                v = torch.nn.functional.normalize(w.t() @ u, dim=0)
                u = torch.nn.functional.normalize(w @ v, dim=0)
            sd[k], sd[k[:-1] + "v"] = u, v
    model.load_state_dict(sd, strict=True)
    return model


@pytest.fixture(scope="module")
def port_checkpoint(tmp_path_factory):
    """The port's tiny model saved as the port saves one: config.json + torch.save(state_dict)."""
    model = port_model()
    folder = tmp_path_factory.mktemp("port") / "biggan-tiny"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (folder / "config.json").write_text(model.config.to_json_string())
    return model, folder


class Payload:  # an object in a pickle (code would run to rebuild it): weights_only reading refuses it
    pass


def inputs(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, TINY["z_dim"], generator=g), torch.tensor([1, 7, 3, 0, 9][:n])


@pytest.mark.parametrize("truncation", [1.0, 0.4, 0.73])
def test_matches_the_port(port_checkpoint, truncation):
    model, folder = port_checkpoint
    gen = load_generator("biggan", weights=str(folder), truncation=truncation)
    z, y = inputs()
    with torch.no_grad():
        want = model(z, torch.nn.functional.one_hot(y, TINY["num_classes"]).float(), truncation)
        got = gen(z, labels=y)
    assert got.shape == (3, 3, 32, 32) and want.std() > 0.05
    assert (got - want).abs().max().item() <= 1e-5
    # class vectors (not only labels) go through the embedding as in the port
    mix = torch.softmax(torch.randn(3, TINY["num_classes"], generator=torch.Generator().manual_seed(3)), 1)
    with torch.no_grad():
        assert (gen.module(z, mix, truncation) - model(z, mix, truncation)).abs().max().item() <= 1e-5


def test_safetensors_and_weights_file_read_alike(port_checkpoint, tmp_path):
    model, folder = port_checkpoint
    cfg = BigGANConfig.from_dict(json.loads((folder / "config.json").read_text()))
    st = save_checkpoint(tmp_path / "st", cfg, model.state_dict(), safetensors=True)
    a = load_generator("biggan", weights=str(folder / "pytorch_model.bin"))
    b = load_generator("biggan", weights=str(st))
    z, y = inputs()
    assert torch.equal(a(z, labels=y), b(z, labels=y))
    assert a.identity()["config"] == b.identity()["config"] == cfg.to_dict()


def test_the_128_model_has_the_ports_keys_and_shapes():
    ours = {k: tuple(v.shape) for k, v in BigGAN(BigGANConfig.preset(128)).state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in port.BigGAN(port.BigGANConfig()).state_dict().items()}
    assert ours == theirs and len(ours) > 400
    from pytorch_pretrained_biggan.convert_tf_to_pytorch import BigGAN256, BigGAN512

    for res, ref in ((256, BigGAN256), (512, BigGAN512)):
        want = {**ref.to_dict(), "layers": [list(t) for t in ref.layers]}
        assert BigGANConfig.preset(res).to_dict() == want


def test_strict_loading_names_missing_and_unexpected_keys(port_checkpoint, tmp_path):
    model, folder = port_checkpoint
    sd = dict(model.state_dict())
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    gone = "generator.layers.1.bn_2.scale.weight_u"
    torch.save({k: v for k, v in sd.items() if k != gone}, tmp_path / "pytorch_model.bin")
    with pytest.raises(FactoryError) as e:
        load_generator("biggan", weights=str(tmp_path))
    assert "1 missing keys: " + gone in str(e.value) and "\n" not in str(e.value)
    torch.save({**sd, "generator.extra.bias": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(FactoryError) as e:
        load_generator("biggan", weights=str(tmp_path))
    assert "1 unexpected keys: generator.extra.bias" in str(e.value) and "\n" not in str(e.value)


def test_checkpoint_errors_are_one_line(port_checkpoint, tmp_path):
    model, folder = port_checkpoint
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(FactoryError, match="no config.json beside"):
        load_generator("biggan", weights=str(tmp_path / "pytorch_model.bin"))
    (tmp_path / "config.json").write_text(json.dumps({**TINY, "dropout": 0.1}))
    with pytest.raises(FactoryError, match=r"unknown BigGAN config keys \['dropout'\]"):
        load_generator("biggan", weights=str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({**TINY, "channel_width": 8}))
    with pytest.raises(FactoryError, match="shape mismatches"):
        load_generator("biggan", weights=str(tmp_path))

    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    torch.save({"generator.gen_z.bias": Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(FactoryError, match="refused"):
        load_generator("biggan", weights=str(tmp_path))
    with pytest.raises(FactoryError, match="needs its weights"):
        load_generator("biggan")


def test_class_rule_and_reproducible_labels():
    assert parse_classes("1,207,151-153", 1000) == (1, 207, 151, 152, 153)
    assert parse_classes([3, "5-6"], 10) == (3, 5, 6) and parse_classes("all", 10) is None
    assert parse_classes(7, 10) == (7,)  # a recipe's classes = 7
    for bad, msg in (("1,x", "not an integer"), ("12", "outside"), ("1,1", "twice"), ("", "not an integer")):
        with pytest.raises(FactoryError, match=msg):
            parse_classes(bad, 10)
    a = class_draws(7, 0, 5000, 4)
    assert np.array_equal(a[1234:1300], class_draws(7, 1234, 1300, 4))  # any range, from (seed, index) alone
    assert not np.array_equal(a, class_draws(8, 0, 5000, 4))
    counts = np.bincount(a, minlength=4)
    assert counts.min() > 1150 and counts.max() < 1350  # uniform (expected 1250 each)
    gen = load_generator("biggan", random_weights=True, config=TINY, classes="2,5")
    assert set(gen.labels(0, 0, 200).tolist()) == {2, 5}


def test_differentiable_in_z_with_frozen_weights():
    gen = load_generator("biggan", random_weights=True, config=TINY, truncation=0.5)
    z = torch.randn(2, 8, requires_grad=True)
    gen(z, labels=torch.tensor([1, 2])).square().mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in gen.module.parameters())
    assert gen.identity()["truncation"] == 0.5 and gen.latent_prior()["scale"] == 0.5
    assert "biggan" in known_generators()


def test_precision_options_on_cpu(port_checkpoint):
    """channels_last and float64 keep the fp32 result; bf16 autocast stays close; options are checked."""
    _, folder = port_checkpoint
    z, y = inputs()
    ref = load_generator("biggan", weights=str(folder), truncation=0.6)(z, labels=y)
    for opts, tol in ((dict(channels_last=True), 1e-5), (dict(dtype=torch.float64), 1e-5), (dict(autocast="bf16"), 0.1)):
        gen = load_generator("biggan", weights=str(folder), truncation=0.6, **opts)
        assert (gen(z, labels=y) - ref).abs().max().item() <= tol, opts
    assert gen.identity()["precision"]["autocast"] == "bf16"
    for bad, msg in ((dict(autocast="fp8"), "autocast"), (dict(truncation=0), "truncation"), (dict(resolution=64), "32 px")):
        with pytest.raises(FactoryError, match=msg):
            load_generator("biggan", weights=str(folder), **bad)


def test_generate_records_classes_and_verifies(tmp_path):
    from factory.cli import main
    from factory.dataset.reader import load_index

    ckpt = save_checkpoint(tmp_path / "ckpt", BigGANConfig(**TINY), random_state_dict(BigGANConfig(**TINY), 0))
    np.save(tmp_path / "h.npy", np.random.default_rng(0).standard_normal(8).astype(np.float32))
    out = tmp_path / "ds"
    args = ["generate", "--generator", "biggan", "--weights", str(ckpt.parent), "--classes", "1,3,5-7",
            "--truncation", "0.5", "--n", "16", "--shard-size", "8", "--batch-size", "8", "--seed", "4",
            "--direction", str(tmp_path / "h.npy"), "--workers", "0", "--quiet", "--out", str(out)]
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["verify", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["spec"]["generator"]["classes"] == [1, 3, 5, 6, 7] and man["spec"]["labels"] == {"seed": 4}
    assert man["spec"]["latents"]["kind"] == "truncated" and man["spec"]["latents"]["scale"] == 0.5
    index = load_index(str(out), man).sort_by("row")
    gen = load_generator("biggan", weights=str(ckpt))
    gen_classes = load_generator("biggan", weights=str(ckpt), classes="1,3,5-7")
    assert index.column("class").to_pylist() == gen_classes.labels(4, 0, 16).tolist()
    import tarfile

    with tarfile.open(out / "shards" / "000001.tar") as tar:
        meta = json.loads(tar.extractfile("0000000009.json").read())
        latent = np.load(io.BytesIO(tar.extractfile("0000000009.latent.npy").read()))
    assert meta["class"] == index.column("class")[9].as_py()
    assert np.abs(latent).max() <= 1.0  # 0.5 * TruncatedNormal(-2, 2)
    del gen
    res = CliRunner().invoke(main, ["filter", str(out), "--where", "class == 6", "--out", str(tmp_path / "v.json")],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    view = json.loads((tmp_path / "v.json").read_text())
    accepted = fmt.AcceptedRows(view["accepted"], view["format_version"]).all_rows().size
    assert accepted == index.column("class").to_pylist().count(6) > 0


def test_directions_discover_and_score_run_through_biggan(tmp_path):
    from factory.cli import main
    from factory.directions.common import open_generator

    ckpt = save_checkpoint(tmp_path / "ckpt", BigGANConfig(**TINY), random_state_dict(BigGANConfig(**TINY), 1))
    gen = open_generator("biggan", torch.device("cpu"), {"weights": str(ckpt.parent)}, class_id=3)
    z = torch.randn(2, 8)
    assert torch.equal(gen(z), gen(z, labels=torch.tensor([3, 3])))  # --class: every latent renders class 3
    assert not torch.equal(gen(z), gen(z, labels=torch.tensor([4, 4])))
    common = ["--generator", "biggan", "--weights", str(ckpt.parent), "--class", "3", "--device", "cpu", "--quiet"]
    res = CliRunner().invoke(main, ["directions", "discover", *common, "--n-directions", "2", "--steps", "2",
                                    "--batch", "2", "--out", str(tmp_path / "found.npy")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    found = json.loads((tmp_path / "found.json").read_text())
    assert found["config"]["class_id"] == 3 and found["generator"]["classes"] == [3]
    args = ["directions", "score", *common, "--candidates", str(tmp_path / "found.npy"), "--steps", "2", "--batch", "2",
            "--eval-n", "4", "--refine-steps", "1", "--refine-top", "1", "--refine-batch", "2",
            "--out", str(tmp_path / "scores")]
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    h = np.load(tmp_path / "scores" / "direction.npy")
    assert h.shape == (8,) and abs(np.linalg.norm(h) - 1) < 1e-5


def test_table3_recipe_runs_on_a_tiny_checkpoint(tmp_path):
    """manifests/biggan-table3.toml: every key is a generate option and the recipe runs (its n overridden)."""
    from pathlib import Path

    from factory.cli import main

    recipe = Path(__file__).resolve().parent.parent / "manifests" / "biggan-table3.toml"
    ckpt = save_checkpoint(tmp_path / "ckpt", BigGANConfig(**TINY), random_state_dict(BigGANConfig(**TINY), 2))
    np.save(tmp_path / "h.npy", np.ones(8, np.float32))
    args = ["generate", "--recipe", str(recipe), "--weights", str(ckpt.parent), "--direction", str(tmp_path / "h.npy"),
            "--n", "4", "--shard-size", "4", "--batch-size", "4", "--workers", "0", "--quiet", "--out", str(tmp_path / "ds")]
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    spec = json.loads((tmp_path / "ds" / "manifest.json").read_text())["spec"]
    assert spec["generator"]["classes"] == "all" and spec["generator"]["truncation"] == 1.0
    assert spec["image_codec"]["image"] == "webp" and spec["shift_r"] == 5.0 and spec["latents"]["kind"] == "truncated"


def test_generators_list_shows_biggan():
    from factory.cli import main

    res = CliRunner().invoke(main, ["generators", "list"], catch_exceptions=False)
    row = next(line for line in res.output.splitlines() if line.startswith("biggan "))
    assert "128" in row and "builtin" in row and "factory.generators.biggan.generator:load_biggan" in row


@pytest.mark.slow
def test_the_full_128_model_matches_the_port():
    """The real 128 px architecture (random weights, ~12 s on one core): the same image as the port's code."""
    cfg = BigGANConfig.preset(128)
    sd = random_state_dict(cfg, 0)
    ref = port.BigGAN(port.BigGANConfig()).eval()
    ref.load_state_dict(sd, strict=True)
    gen = load_generator("biggan", random_weights=True, resolution=128, truncation=0.4)
    z, y = torch.randn(2, 128, generator=torch.Generator().manual_seed(0)), torch.tensor([207, 1])
    with torch.no_grad():
        want = ref(z, torch.nn.functional.one_hot(y, 1000).float(), 0.4)
    got = gen(z, labels=y)
    assert got.shape == (2, 3, 128, 128) and want.std() > 0.05
    assert (got - want).abs().max().item() <= 1e-5
