"""A FactoryError raised inside a DataLoader worker reaches the user as its own one line."""
from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from trainers.errors import TrainersError, one_line


class _Refusing:
    """A dataset whose every item is refused, as a tampered shard is."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        raise TrainersError(f"shard x/000001.tar: sha256 differs from the manifest (item {i})")


def test_worker_exception_is_its_original_line():
    from torch.utils.data import DataLoader

    with pytest.raises(TrainersError) as e:
        next(iter(DataLoader(_Refusing(), batch_size=2, num_workers=1)))
    assert "Original Traceback" in str(e.value)  # what torch re-raises in the main process
    assert one_line(e.value) == "shard x/000001.tar: sha256 differs from the manifest (item 0)"
    plain = TrainersError("Caught nothing; a message of its own")
    assert one_line(plain) == str(plain)


@pytest.mark.parametrize("access", ["stream", "random"])
def test_tampered_shard_with_loader_workers_is_one_line(small_dataset, tmp_path, access):
    from trainers.cli import main as tmain

    ds = tmp_path / "ds"
    shutil.copytree(small_dataset, ds)
    tar = ds / "shards" / "000001.tar"
    b = bytearray(tar.read_bytes())
    b[-1] ^= 1  # the tar's end padding: every member still reads, only the hash differs
    tar.write_bytes(bytes(b))
    r = CliRunner().invoke(tmain, ["train", "--data", str(ds), "--out", str(tmp_path / "run"), "--steps", "10",
                                   "--batch-size", "4", "--width", "4", "--workers", "1", "--val-every", "0",
                                   "--holdout-permille", "0", "--device", "cpu", "--no-progress", "--access", access])
    assert r.exit_code == 1, r.output
    lines = [x for x in r.output.strip().splitlines() if x.strip() and not x.startswith("train: device")]
    assert len(lines) == 1 and "Caught" not in r.output and "Traceback" not in r.output, r.output
    assert lines[0].startswith("Error: shard ") and "000001.tar: sha256 differs from the manifest" in lines[0], lines
