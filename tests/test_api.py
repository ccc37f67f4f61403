"""The public Python API (factory.api, docs/python.md): open, keys, sample, table, filter == `factory filter`
byte for byte, save, and `factory export wids` read back through wids."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import cli, one_line_error
from PIL import Image

import factory
from factory import format as fmt

REPO = Path(__file__).resolve().parent.parent


def members_of(root: Path, key: str) -> dict[str, bytes]:
    """A sample's members read straight from the shard tars (no factory code)."""
    for tar in sorted((root / "shards").glob("*.tar")):
        with tarfile.open(tar) as tf:
            got = {m.name.split(".", 1)[1]: tf.extractfile(m).read() for m in tf if m.name.split(".", 1)[0] == key}
        if got:
            return got
    raise AssertionError(f"no sample {key}")


def index_of(root: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in sorted((root / "index").glob("*.parquet"))])


def test_docs_example_runs(small_dataset, tmp_path, monkeypatch):
    text = (REPO / "docs" / "python.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert len(code.strip().splitlines()) == 5
    (tmp_path / "data").mkdir()
    os.symlink(small_dataset, tmp_path / "data" / "demo")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/python.md", "exec"), {})
    r = cli("filter", "data/demo", "--max-fg", "0.5", "--histogram", "reference", "--out", "data/cli.json")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "data" / "paper.json").read_bytes() == (tmp_path / "data" / "cli.json").read_bytes()


def test_open_keys_len_and_sample(small_dataset):
    ds = factory.open(str(small_dataset))
    assert isinstance(ds, factory.Dataset) and not isinstance(ds, factory.View)
    keys = sorted(index_of(small_dataset).column("key").to_pylist())
    assert ds.keys() == keys and len(ds) == len(keys) == 60
    key = keys[23]
    assert key in ds and "9999999999" not in ds and "x" not in ds
    s = ds.sample(key)
    raw = members_of(small_dataset, key)
    image = np.asarray(Image.open(io.BytesIO(raw["png"])).convert("RGB"))
    mask = np.asarray(Image.open(io.BytesIO(raw["mask.png"]))) > 127
    assert s["image"].dtype == np.uint8 and s["image"].shape == (64, 64, 3)
    assert np.array_equal(s["image"], image)
    assert s["mask"].dtype == bool and np.array_equal(s["mask"], mask)
    latent = np.load(io.BytesIO(raw["latent.npy"]))
    assert s["latent"].dtype == np.float32 and np.array_equal(s["latent"], latent)
    assert s["stats"]["key"] == key and "teacher" not in s


def test_table_and_errors(small_dataset):
    ds = factory.open(str(small_dataset))
    t = ds.table(["key", "fg_ratio"])
    assert t.column_names == ["key", "fg_ratio"] and t.num_rows == 60
    ref = index_of(small_dataset)
    assert t.column("fg_ratio").to_pylist() == ref.column("fg_ratio").to_pylist()
    with pytest.raises(fmt.FactoryError, match="no index column 'nope'"):
        ds.table(["nope"])
    with pytest.raises(fmt.FactoryError, match="no sample"):
        ds.sample("9999999999")


@pytest.mark.parametrize("flags", [dict(max_fg=0.5, histogram="reference"),
                                   dict(where="n_components <= 1 and fg_ratio > 0.05", min_fg=0.01)])
def test_filter_equals_cli_on_dataset_and_view(small_dataset, tmp_path, flags):
    ds = factory.open(str(small_dataset))
    view = ds.filter(**flags)
    args = [f"--{k.replace('_', '-')}={v}" for k, v in flags.items()]
    assert cli("filter", small_dataset, *args, "--out", tmp_path / "cli.json").exit_code == 0
    assert view.save(str(tmp_path / "api.json")) is True
    assert (tmp_path / "api.json").read_bytes() == (tmp_path / "cli.json").read_bytes()
    assert view.save(str(tmp_path / "api.json")) is False  # the same content again: unchanged
    # a view of the view, from the saved file, in another folder (parent url relative to it)
    opened = factory.open(str(tmp_path / "api.json"))
    assert isinstance(opened, factory.View) and opened.id == view.id and opened.keys() == view.keys()
    sub = opened.filter(max_components=1)
    (tmp_path / "sub").mkdir()
    assert cli("filter", tmp_path / "api.json", "--max-components", "1", "--out", tmp_path / "sub" / "c.json").exit_code == 0
    sub.save(str(tmp_path / "sub" / "a.json"))
    assert (tmp_path / "sub" / "a.json").read_bytes() == (tmp_path / "sub" / "c.json").read_bytes()
    # the view's rows, counts and table
    rows = fmt.AcceptedRows(view.view["accepted"], view.view["format_version"]).all_rows().tolist()
    assert view.keys() == [fmt.sample_key(r) for r in rows] and len(view) == len(rows) > 0
    assert view.counts["accepted"] == len(rows) and view.counts["candidates"] == 60
    assert sorted(view.table(["row"]).column("row").to_pylist()) == rows
    outside = next(k for k in ds.keys() if k not in view)
    with pytest.raises(fmt.FactoryError, match="no sample"):
        view.sample(outside)


def test_save_refuses_another_view(small_dataset, tmp_path):
    ds = factory.open(str(small_dataset))
    ds.filter(max_fg=0.5).save(str(tmp_path / "v.json"))
    with pytest.raises(fmt.FactoryError, match="views are immutable"):
        ds.filter(max_fg=0.3).save(str(tmp_path / "v.json"))
    assert ds.filter(max_fg=0.3).save(str(tmp_path / "v.json"), overwrite=True)


def test_export_wids_subset_is_the_view(small_dataset, tmp_path):
    import torch
    import wids

    view = factory.open(str(small_dataset)).filter(where="row >= 25 and row != 31 and row < 58")  # not shard 0
    view.save(str(tmp_path / "v.json"))
    r = cli("export", "wids", tmp_path / "v.json", "--out", tmp_path / "w.json", "--indices", tmp_path / "w.npy")
    assert r.exit_code == 0, r.output
    indices = np.load(tmp_path / "w.npy")
    ds = wids.ShardListDataset(str(tmp_path / "w.json"), cache_dir=str(tmp_path / "wids-cache"))
    assert len(ds) == 40  # shards 1 and 2 only
    subset = torch.utils.data.Subset(ds, indices)
    keys = [subset[i]["__key__"] for i in range(len(subset))]
    assert keys == view.keys()
    one = subset[3]
    assert np.array_equal(np.asarray(one[".png"].convert("RGB")), view.sample(keys[3])["image"])


def test_export_wids_refuses_other_names(small_dataset, tmp_path):
    one_line_error(cli("export", "wids", small_dataset, "--out", tmp_path / "w.txt", "--indices", tmp_path / "i.npy"),
                   "name it *.json")


def test_import_factory_is_light():
    code = ("import sys, factory; ds = factory.open; import factory.api; "
            "print(sorted(m for m in ('torch', 'dask', 'distributed', 'zarr', 'matplotlib', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_missing_extra_is_one_line(small_dataset, tmp_path, monkeypatch):
    # a training install has no zarr: a command that needs it names the extra, no traceback
    monkeypatch.setitem(sys.modules, "zarr", None)
    r = cli("generate", "--generator", "shapes", "--resolution", "32", "--n", "8", "--shard-size", "8",
            "--workers", "0", "--quiet", "--out", tmp_path / "d")
    one_line_error(r, "needs the 'zarr' package", "pip install 'gan-dataset-factory[full]'")
    # reading and filtering need none of them
    assert len(factory.open(str(small_dataset)).filter(max_fg=0.5)) > 0


def test_core_dependencies_leave_out_the_factory_stack():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {re.split(r"[<>=\[]", d)[0] for d in project["dependencies"]}
    assert core.isdisjoint({"dask", "distributed", "zarr", "numcodecs", "matplotlib", "scipy", "cryptography"})
    extras = project["optional-dependencies"]
    assert "train" in extras and "gan-dataset-factory[full,examples]" in extras["test"]
    full = {re.split(r"[<>=\[]", d)[0] for d in extras["full"]}
    assert {"dask", "zarr", "numcodecs", "matplotlib", "scipy", "cryptography"} <= full
