"""Generator plug-ins: entry points of the group `factory.generators`, `package.module:function`
names, the listing, and the one-line errors. The installed plug-in is a dist-info folder written
into a tmp dir on sys.path (what `pip install` would leave), so importlib.metadata finds it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import PLUGIN_DIR, install_dist

from factory.format import FactoryError
from factory.generators import (
    describe_generators,
    known_generators,
    load_generator,
)

BROKEN_MODULE = '''
def make(**options):
    raise RuntimeError("weights server unreachable")

def not_a_generator(**options):
    return object()

def strict(*, device):
    raise AssertionError("unreachable")
'''


@pytest.fixture
def plugins(tmp_path, monkeypatch) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / "tinygen_broken.py").write_text(BROKEN_MODULE)
    install_dist(site, "factory-tinygen", "0.1.0", {
        "tiny": "tinygen:make",
        "tiny-missing-module": "tinygen_nowhere:make",
        "tiny-missing-attr": "tinygen:nope",
        "tiny-raises": "tinygen_broken:make",
        "shapes": "tinygen:make",  # shadowed by the built-in
    })
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    monkeypatch.syspath_prepend(str(site))
    return site


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    return msg


def check_output(g, n=3):
    z = torch.randn(n, g.dim_z, generator=torch.Generator().manual_seed(0))
    x = g(z)
    assert x.shape == (n, 3, g.resolution, g.resolution) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(x, g(z))


def test_entry_point_loads(plugins):
    assert "tiny" in known_generators() and "shapes" in known_generators()
    g = load_generator("tiny", device="cpu", resolution=16)
    assert (g.dim_z, g.resolution) == (16, 16)
    check_output(g)
    assert g.identity()["name"] == "tinygen"


def test_module_function_loads(plugins):
    g = load_generator("tinygen:make", device="cpu", seed=1)
    assert (g.dim_z, g.resolution) == (16, 32)
    check_output(g)
    assert g.identity() != load_generator("tinygen:make", seed=2).identity()


def test_listing(plugins):
    rows = {(r.name, r.origin): r for r in describe_generators(["tinygen:make"])}
    ep = rows["tiny", "entry point"]
    assert (ep.dim_z, ep.resolution) == (16, 32)  # probed: built once on the CPU
    assert ep.source == "factory-tinygen 0.1.0 (tinygen:make)" and not ep.note
    assert ep.summary.startswith("Tiny test generator")
    mod = rows["tinygen:make", "module"]
    assert (mod.dim_z, mod.resolution, mod.source) == (16, 32, "tinygen:make")
    assert rows["shapes", "builtin"].dim_z == 120
    assert rows["dcgan", "builtin"].dim_z is None and "weights" in rows["dcgan", "builtin"].note
    assert "shadowed by the built-in" in rows["shapes", "entry point"].note
    assert "not importable" in rows["tiny-missing-module", "entry point"].note
    assert "no attribute 'nope'" in rows["tiny-missing-attr", "entry point"].note
    assert "weights server unreachable" in rows["tiny-raises", "entry point"].note
    # without probing, a factory that declares nothing has no dims
    quiet = {r.name: r for r in describe_generators(probe=False)}
    assert quiet["tiny"].dim_z is None


def test_declared_dims_skip_probe(plugins):
    (plugins / "tinygen_declared.py").write_text(
        "def make(**options):\n    raise RuntimeError('must not be built')\nmake.dim_z = 7\nmake.resolution = 8\n")
    (row,) = describe_generators(["tinygen_declared:make"])[-1:]
    assert (row.dim_z, row.resolution, row.note) == (7, 8, "")


def test_errors_are_one_line(plugins):
    with pytest.raises(FactoryError) as e:
        load_generator("nosuch")
    assert "unknown generator 'nosuch'" in one_line(e) and "tiny" in str(e.value) and "shapes" in str(e.value)
    with pytest.raises(FactoryError) as e:
        load_generator("tiny-missing-module")
    assert "factory-tinygen 0.1.0" in one_line(e) and "'tinygen_nowhere' is not importable" in str(e.value)
    with pytest.raises(FactoryError) as e:
        load_generator("no_such_pkg.gens:make")
    assert "'no_such_pkg.gens' is not importable" in one_line(e)
    with pytest.raises(FactoryError) as e:
        load_generator("tinygen:nope")
    assert "has no attribute 'nope'" in one_line(e) and "make" in str(e.value)
    with pytest.raises(FactoryError) as e:
        load_generator("tiny-raises")
    assert "'tiny-raises'" in one_line(e) and "RuntimeError: weights server unreachable" in str(e.value)
    with pytest.raises(FactoryError) as e:
        load_generator("tinygen_broken:not_a_generator")
    assert "not a generator: it lacks dim_z, resolution, device, identity, __call__" in one_line(e)
    with pytest.raises(FactoryError) as e:
        load_generator("tinygen_broken:strict", device="cpu", weights="w.pt")
    assert "unexpected keyword argument 'weights'" in one_line(e) and "accept **options" in str(e.value)
    with pytest.raises(FactoryError) as e:
        load_generator("tiny", colour="red")
    assert "ValueError: tinygen: unknown options ['colour']" in one_line(e)
    for bad in ("tinygen:", ":make", "tinygen:make()", "tin-ygen:make"):
        with pytest.raises(FactoryError) as e:
            load_generator(bad)
        assert "package.module:function" in one_line(e)


def test_import_error_inside_plugin(plugins):
    (plugins / "tinygen_deps.py").write_text("import a_dependency_that_is_absent\n")
    with pytest.raises(FactoryError) as e:
        load_generator("tinygen_deps:make")
    assert "importing 'tinygen_deps' failed: ModuleNotFoundError" in one_line(e)


def test_ambiguous_entry_points(plugins):
    install_dist(plugins, "other-gens", "2.0", {"tiny": "tinygen_broken:make"})
    with pytest.raises(FactoryError) as e:
        load_generator("tiny")
    msg = one_line(e)
    assert "several installed distributions" in msg and "other-gens 2.0" in msg and "factory-tinygen" in msg


@pytest.mark.parametrize("name", ["tiny", "tinygen:make"])
def test_plugin_generates_a_dataset(plugins, tmp_path, name):
    from factory.cli import main

    out = tmp_path / "ds"
    args = ["generate", "--generator", name, "--resolution", "16", "--n", "6", "--shard-size", "3",
            "--workers", "0", "--quiet", "--out", str(out)]
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["samples"] == 6 and (man["dim_z"], man["resolution"]) == (16, 16)
    assert man["spec"]["generator"]["name"] == "tinygen"
    res = CliRunner().invoke(main, ["verify", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output


def test_the_documented_plugin_is_complete():
    """docs/generators.md's plug-in, executed as written, is a working generator."""
    import re

    doc = (Path(__file__).resolve().parent.parent / "docs" / "generators.md").read_text()
    code = re.search(r"```python\n(import hashlib.*?)```", doc, re.S).group(1)
    ns: dict = {}
    exec(compile(code, "docs/generators.md", "exec"), ns)
    g = ns["make"](resolution=8)
    assert (g.dim_z, g.resolution) == (16, 8)
    check_output(g)
    assert set(g.named_directions()) == {"background"}


def test_generators_list_cli(plugins):
    """`factory generators list`: a table of every name (built-in, entry point, module:function
    given) with dim_z and resolution, and --json with the same rows."""
    from click.testing import CliRunner

    from factory.cli import main

    r = CliRunner().invoke(main, ["generators", "list", "tinygen:make"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split() == ["name", "dim_z", "res", "origin", "source"]
    table = {(c[0], c[3]): c for c in (ln.split() for ln in lines[1:] if not ln.startswith(" "))}
    assert table["shapes", "builtin"][1:3] == ["120", "128"]
    assert table["dcgan", "builtin"][1:3] == ["-", "-"]  # read off the weights file
    assert table["tiny", "entry"][1:3] == ["16", "32"]
    assert table["tinygen:make", "module"][1:3] == ["16", "32"]
    assert any("shadowed by the built-in" in ln for ln in lines if ln.startswith("    "))
    r = CliRunner().invoke(main, ["generators", "list", "tinygen:make", "--json"])
    assert r.exit_code == 0, r.output
    rows = {(d["name"], d["origin"]): d for d in json.loads(r.output)}
    assert (rows["tinygen:make", "module"]["dim_z"], rows["tinygen:make", "module"]["resolution"]) == (16, 32)
    assert rows["shapes", "builtin"]["dim_z"] == 120 and rows["tiny", "entry point"]["source"].startswith("factory-tinygen")
    r = CliRunner().invoke(main, ["generators", "list", "nosuchpkg.mod:make"])
    assert r.exit_code != 0 and r.output.count("\n") == 1 and "nosuchpkg" in r.output
