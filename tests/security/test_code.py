"""Nothing in a received dataset chooses code (issue 38, items 1 and 7): a manifest's generator name maps
to code only through the built-ins and the plug-ins installed on the receiving machine; `module:function`
from a manifest is never imported; every refusal is one line."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from helpers import PLUGIN_DIR, cli, copy_of, install_dist, one_line_error, shapes_dataset

from factory import format as fmt

NOT_INSTALLED = "is not installed here; install the plug-in that provides it or pass --generator"

HUBCONF = '''
from pathlib import Path

Path({marker!r}).write_text("the dataset's code ran")


def x(**kwargs):
    Path({marker!r}).write_text("the dataset's model ran")
    raise SystemExit(0)
'''


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    return shapes_dataset(tmp_path_factory, "code", n=8, shard_size=4)


@pytest.fixture()
def ds(made, tmp_path) -> Path:
    return copy_of(made, tmp_path)


def respec(ds: Path, fn) -> None:
    """Edit the manifest's spec and recompute its spec_hash, as a forger would (the dataset id does not
    cover the spec)."""
    m = json.loads((ds / "manifest.json").read_text())
    fn(m["spec"])
    m["spec_hash"] = fmt.sha256_bytes(fmt.canonical_json(m["spec"]))
    (ds / "manifest.json").write_text(json.dumps(m))


def test_hub_hook_dataset_runs_no_code(ds, tmp_path):
    """The issue's dataset: spec.generator names torch.hub:load with the dataset folder as a local hub repo
    holding a hubconf.py. `verify --regenerate` says why in one line and leaves no trace of that code."""
    marker = tmp_path / "marker.txt"
    (ds / "hubconf.py").write_text(HUBCONF.format(marker=str(marker)))
    respec(ds, lambda s: s.update(generator={**s["generator"], "name": "torch.hub:load", "repo_or_dir": str(ds),
                                             "source": "local", "trust_repo": True, "model": "x"}))
    before = set(sys.modules)
    assert cli("verify", ds).exit_code == 0  # the bytes are all self-consistent
    r = cli("verify", ds, "--regenerate", 4)
    one_line_error(r, "generator 'torch.hub:load' " + NOT_INSTALLED)
    assert not marker.exists()
    assert not (ds / "__pycache__").exists()
    assert "hubconf" not in set(sys.modules) - before


@pytest.mark.parametrize("name", ["builtins:dict", "os:system", "factory.generators.shapes:load_shapes", "nothere"])
def test_manifest_names_outside_the_registry_are_one_line(ds, name):
    respec(ds, lambda s: s["generator"].update(name=name))
    one_line_error(cli("verify", ds, "--regenerate", 2), f"generator {name!r} " + NOT_INSTALLED)


def test_user_may_choose_the_code(ds):
    """The receiver's own choice on the command line (any form load_generator takes) is honoured; the
    rebuilt generator must still describe itself as the spec does."""
    respec(ds, lambda s: s["generator"].update(name="somebody-elses-shapes"))
    one_line_error(cli("verify", ds, "--regenerate", 2), NOT_INSTALLED)
    r = cli("verify", ds, "--regenerate", 2, "--generator", "factory.generators.shapes:load_shapes")
    assert r.exit_code == 1 and r.output.startswith("FAIL")
    assert "the generator rebuilt from the spec differs from it in name" in r.output


@pytest.fixture
def tinygen_site(tmp_path, monkeypatch) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    monkeypatch.syspath_prepend(str(site))
    return site


def test_plugin_dataset_regenerates_where_the_plugin_is_installed(tinygen_site, tmp_path):
    """A dataset made with a plug-in regenerates on a machine where that plug-in is installed under the
    name its identity writes, or where the user names the plug-in; never because the manifest said so."""
    out = tmp_path / "tiny"
    r = cli("generate", "--generator", "tinygen:make", "--resolution", 16, "--n", 4, "--shard-size", 2,
            "--workers", 0, "--quiet", "--out", out)
    assert r.exit_code == 0, r.output
    one_line_error(cli("verify", out, "--regenerate", 2), "generator 'tinygen' " + NOT_INSTALLED)
    r = cli("verify", out, "--regenerate", 2, "--generator", "tinygen:make")
    assert r.exit_code == 0 and r.output.startswith("PASS"), r.output
    install_dist(tinygen_site, "factory-tinygen", "0.1.0", {"tinygen": "tinygen:make"})
    r = cli("verify", out, "--regenerate", "all")
    assert r.exit_code == 0 and r.output.startswith("PASS") and ": 4 samples" in r.output, r.output


def test_identity_inverse_belongs_to_the_registry():
    """The registry rebuilds loader options from an identity (no signature inspection, no parsing in
    regenerate); a plug-in without an inverse is one line."""
    from factory.format import FactoryError
    from factory.generators import options_from_identity

    ident = {"name": "dcgan", "config": {"nz": 100}, "weights_source": "random(seed=42)",
             "precision": {"dtype": "float32", "autocast": None, "channels_last": True, "compile": False}}
    assert options_from_identity("dcgan", ident) == {"config": {"nz": 100}, "channels_last": True,
                                                     "random_weights": True, "seed": 42}
    assert options_from_identity("shapes", {"resolution": 32, "dim_z": 8, "seed": 3, "extra": 1}) == \
        {"resolution": 32, "dim_z": 8, "seed": 3}
    with pytest.raises(FactoryError, match="the identity's config must be an object"):
        options_from_identity("bigbigan", {"config": "/etc/passwd"})  # a manifest never names a file to read
    with pytest.raises(FactoryError, match="has no options_from_identity"):
        options_from_identity("helpers:run", {})


@pytest.mark.parametrize("case", ["no-latents", "no-generator", "file-latents-without-sha256", "latent-kind",
                                  "direction-name"])
def test_unregenerable_specs_are_one_line(ds, case):
    edits = {
        "direction-name": lambda s: s["direction"].update(name="__class__"),
        "no-latents": lambda s: s.pop("latents"),
        "no-generator": lambda s: s.pop("generator"),
        "file-latents-without-sha256": lambda s: s.update(latents={"kind": "file", "seed": 0, "dim_z": 120}),
        "latent-kind": lambda s: s.update(latents={**s["latents"], "kind": "pickle"}),
    }
    respec(ds, edits[case])
    r = cli("verify", ds, "--regenerate", 2)
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output


def test_embeddings_name_is_never_a_path(ds, tmp_path):
    """A manifest's embeddings name is looked up in the receiver's store only: a path or URL in it is not read."""
    respec(ds, lambda s: s.update(latents={"kind": "embeddings", "name": "s3://elsewhere/z.npy", "seed": 0,
                                           "dim_z": 120, "z_noise": 0.0, "sha256": "0" * 64, "rows": 1}))
    one_line_error(cli("verify", ds, "--regenerate", 2), "are not in this machine's store: pass --latents FILE")


def _paths(spec: dict) -> list[tuple[str, ...]]:
    out = []
    for k, v in spec.items():
        out.append((k,))
        if isinstance(v, dict):
            out += [(k, kk) for kk in v]
    return out


def test_every_spec_field_removed_or_mistyped_is_at_most_one_line(made, tmp_path):
    """Each field of the spec (and of its objects) removed, or replaced by a list: `verify --regenerate 1`
    passes, or fails in one line, never with a traceback."""
    spec = json.loads((made / "manifest.json").read_text())["spec"]
    for path in _paths(spec):
        for how in ("remove", "list"):
            ds = tmp_path / f"{'.'.join(path)}-{how}"
            shutil.copytree(made, ds)

            def change(s, path=path, how=how):
                d = s
                for k in path[:-1]:
                    d = d[k]
                if how == "remove":
                    d.pop(path[-1])
                else:
                    d[path[-1]] = [1]

            respec(ds, change)
            r = cli("verify", ds, "--regenerate", 1, "--seed", 0)
            lines = [x for x in r.output.strip().splitlines() if not x.startswith("coverage:")]
            assert r.exit_code in (0, 1) and len(lines) == 1, (path, how, r.output)
            shutil.rmtree(ds)
