"""Reading a received dataset: its files are data that stays inside its folder; nothing in it is unpickled."""
from __future__ import annotations

import io
import json
import shutil
import tarfile

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import cli, one_line_error, reseal

from factory import format as fmt


class _Opens:
    """Unpickling this creates the file it names: proof that a loader ran a dataset's pickle."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture()
def ds(small_dataset, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(small_dataset, out)
    return out


def _train(ds, out, *extra):
    from trainers.cli import main as tmain

    return CliRunner().invoke(tmain, ["train", "--data", str(ds), "--out", str(out), "--steps", "2", "--batch-size", "4",
                                      "--width", "4", "--workers", "0", "--val-every", "0", "--holdout-permille", "0",
                                      "--device", "cpu", "--no-progress", *[str(x) for x in extra]])


def _one_line(r, *fragments):
    assert r.exit_code == 1, r.output
    lines = [x for x in r.output.strip().splitlines() if x.strip() and not x.startswith("train: device")]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    for f in fragments:
        assert f in lines[0], lines[0]


def test_pickled_latent_members_are_never_unpickled(ds, tmp_path):
    from helpers import forge_samples

    from factory.browse.api import Browser

    marker = tmp_path / "ran"

    def edit(parts, row):
        buf = io.BytesIO()
        np.save(buf, np.array([_Opens(str(marker))], dtype=object), allow_pickle=True)
        parts[fmt.EXT_LATENT] = buf.getvalue()

    forge_samples(ds, edit)
    r = cli("verify", ds)
    assert r.exit_code == 1 and "latent.npy is not a readable .npy" in r.output, r.output
    with pytest.raises(fmt.FactoryError, match="latent"):
        Browser(str(ds)).sample("0000000000")
    assert not marker.exists()


def _outside(ds, tmp_path, how: str) -> None:
    """Shard 0's path in the manifest points outside the dataset at a copy of its real tar, resealed."""
    m = json.loads((ds / "manifest.json").read_text())
    e = m["shards"][0]
    away = tmp_path / "elsewhere" / "000000.tar"
    away.parent.mkdir()
    shutil.copyfile(ds / e["path"], away)
    e["path"] = "../elsewhere/000000.tar" if how == "dotdot" else str(away)
    (ds / "manifest.json").write_text(json.dumps(m))
    reseal(ds)


@pytest.mark.parametrize("how", ["dotdot", "absolute"])
def test_paths_outside_the_dataset_are_refused_everywhere(ds, tmp_path, how):
    from factory.browse.api import Browser

    _outside(ds, tmp_path, how)
    for args in (["info", ds], ["verify", ds], ["filter", ds, "--max-fg", "0.5", "--out", tmp_path / "v.json"],
                 ["preview", ds, "--out", tmp_path / "p.png"]):
        one_line_error(cli(*args), "000000.tar")
    _one_line(_train(ds, tmp_path / "run"), "000000.tar")
    with pytest.raises(fmt.FactoryError, match="000000.tar"):
        Browser(str(ds))
    assert not (tmp_path / "v.json").exists() and not (tmp_path / "p.png").exists()


def test_link_members_are_refused(ds, tmp_path):
    """A shard whose first image is a symlink to a file of the receiver's (hashes resealed)."""
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"the receiver's file")
    m = json.loads((ds / "manifest.json").read_text())
    path = ds / m["shards"][0]["path"]
    members = fmt.safe_tar_members(path.read_bytes(), "shard 0")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, body in members:
            info = tarfile.TarInfo(name)
            if name == f"0000000000.{fmt.EXT_IMAGE}":
                info.type, info.linkname = tarfile.SYMTYPE, str(secret)
                t.addfile(info)
            else:
                info.size = len(body)
                t.addfile(info, io.BytesIO(body))
    path.write_bytes(buf.getvalue())
    reseal(ds)
    r = cli("verify", ds)
    assert r.exit_code == 1 and "is a link; shards hold regular files only" in r.output, r.output
    _one_line(_train(ds, tmp_path / "run"), "is a link")
