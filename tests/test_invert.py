"""`factory embeddings invert / export`: GAN inversion into a named embedding store (issue 16)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from factory.cli import main
from factory.format import FactoryError
from factory.fsio import sha256_file
from factory.generators import load_generator
from factory.latents import embeddings as emb
from factory.latents import inversion as inv

R = 16  # a tiny shapes world keeps every test to seconds on a CPU


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch, torch_one_thread):
    monkeypatch.setenv("FACTORY_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def write_photos(folder: Path, names: list[str], *, size: int = R, seed: int = 3) -> np.ndarray:
    """Images of the shapes world at `size` px, saved under `names` in that order; their latents."""
    gen = load_generator("shapes", resolution=size)
    z = np.random.default_rng(seed).standard_normal((len(names), gen.dim_z)).astype(np.float32)
    with torch.no_grad():
        img = ((gen(torch.from_numpy(z)) + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    folder.mkdir(parents=True, exist_ok=True)
    for name, im in zip(names, img):
        Image.fromarray(im).save(folder / name)
    return z


def invoke(*args: str):
    return CliRunner().invoke(main, ["embeddings", *args], catch_exceptions=False)


def invert_args(images: Path, name: str, *extra: str) -> list[str]:
    return ["invert", "--generator", "shapes", "--resolution", str(R), "--images", str(images), "--name", name,
            "--steps", "4", "--batch", "2", "--restarts", "1", "--quiet", *extra]


# ----------------------------------------------------------------------------- the algorithm


def test_losses_are_zero_only_at_the_target_and_on_the_shell():
    y = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(inv.reconstruction_loss(y, y), torch.zeros(2))
    x = y.clone()
    x[1, :, 4, 4] += 0.5
    loss = inv.reconstruction_loss(x, y)
    assert loss[0] == 0 and loss[1] > 0
    z = torch.randn(3, 120)
    shell = z / z.norm(dim=1, keepdim=True) * 120**0.5
    assert torch.allclose(inv.prior_loss(shell), torch.zeros(3), atol=1e-6)
    assert (inv.prior_loss(0.5 * shell) > 0.5).all()
    assert torch.allclose(inv.prior_loss(shell, "gaussian"), torch.full((3,), 0.5))  # NLL per coordinate
    assert torch.equal(inv.prior_loss(torch.zeros(1, 120), "gaussian"), torch.zeros(1))


def test_invert_batch_reconstructs_better_than_its_starts_and_restarts_help():
    gen = load_generator("shapes", resolution=R)
    truth = torch.randn(4, gen.dim_z, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = gen(truth)
        start = torch.from_numpy(inv.initial_latents(range(4), 1, gen.dim_z, 0))
        start_mse = ((gen(start) - y) ** 2).mean((1, 2, 3)).numpy() / 4
    z, mse = inv.invert_batch(gen, y, range(4), inv.InvertSettings(steps=60, restarts=1))
    assert z.shape == (4, gen.dim_z) and z.dtype == np.float32
    assert (mse < 0.5 * start_mse).all()
    _, mse3 = inv.invert_batch(gen, y, range(4), inv.InvertSettings(steps=60, restarts=3))
    assert (mse3 <= mse + 1e-7).all()  # restart 0 is the same start: the best of three is never worse
    assert np.allclose(inv.psnr(np.array([0.01])), 20.0)


class NoGradGenerator:
    """A generator that withholds its gradient (runs under no_grad): inversion must say so."""

    dim_z, resolution, device = 4, 8, torch.device("cpu")

    def __call__(self, z):
        with torch.no_grad():
            return torch.tanh(z.sum(1))[:, None, None, None].expand(-1, 3, 8, 8)

    def identity(self):
        return {"name": "nograd"}


def test_a_generator_without_gradient_is_a_one_line_error():
    with pytest.raises(FactoryError, match="'nograd' passes back no gradient in z"):
        inv.invert_batch(NoGradGenerator(), torch.zeros(2, 3, 8, 8), range(2), inv.InvertSettings(steps=2))


def test_starts_depend_on_the_row_not_on_the_chunk():
    a = inv.initial_latents(range(4), 2, 8, 5)
    b = inv.initial_latents(range(2, 4), 2, 8, 5)
    assert np.array_equal(a.reshape(2, 4, 8)[:, 2:], b.reshape(2, 2, 8))
    assert not np.array_equal(a[0], inv.initial_latents(range(1), 1, 8, 6)[0])


# ------------------------------------------------------------------------------ the command


def test_invert_stores_sorted_rows_with_sha256_and_error_and_generate_uses_it(tmp_path, home):
    photos = tmp_path / "photos"
    write_photos(photos, ["c.png", "a.png", "b.jpg"])
    (photos / "notes.txt").write_text("not an image")
    r = invoke(*invert_args(photos, "mine"))
    assert r.exit_code == 0, r.output
    assert "mine: 3 x 120 float32" in r.output
    rows = emb.read_rows("mine")
    assert rows["file"] == ["a.png", "b.jpg", "c.png"]
    assert rows["sha256"] == [sha256_file(photos / f) for f in rows["file"]]
    assert all(np.isfinite(rows["mse"])) and all(p > 5 for p in rows["psnr"])
    z, ref = emb.read_store("mine")
    assert ref.shape == (3, 120) and (home / "embeddings" / "mine.zarr").is_dir()
    assert not any((home / "embeddings").glob(".mine*"))  # work folder gone once assembled
    assert [e.name for e in emb.list_embeddings()] == ["mine"]

    out = tmp_path / "mine.npy"
    r = invoke("export", "mine", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert np.array_equal(np.load(out, allow_pickle=False), z)

    data = tmp_path / "near"
    r = CliRunner().invoke(main, ["generate", "--resolution", str(R), "--n", "6", "--shard-size", "6",
                                  "--embeddings", "mine", "--workers", "0", "--quiet", "--out", str(data)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    import zarr

    lat = zarr.open_array(str(data / "latents.zarr"), mode="r")[:]
    assert all(any(np.array_equal(row, e) for e in z) for row in lat)  # z-noise 0: every latent is a stored row


def test_bad_input_gets_one_line_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    r = invoke(*invert_args(empty, "x"))
    assert r.exit_code == 1 and "no image files" in r.output and len(r.output.strip().splitlines()) == 1
    r = invoke(*invert_args(tmp_path / "absent", "x"))
    assert r.exit_code == 1 and "no such folder" in r.output

    broken = tmp_path / "broken"
    write_photos(broken, ["0.png"])
    (broken / "1.png").write_bytes(b"\x89PNG not really")
    r = invoke(*invert_args(broken, "x"))
    assert r.exit_code == 1 and "1.png is unreadable" in r.output and len(r.output.strip().splitlines()) == 1

    small = tmp_path / "small"
    write_photos(small, ["0.png", "1.png"], size=R // 2)
    r = invoke(*invert_args(small, "x"))
    assert r.exit_code == 1 and "smaller than the generator's resolution 16" in r.output and "--upscale" in r.output
    r = invoke(*invert_args(small, "x", "--upscale"))
    assert r.exit_code == 0, r.output
    assert "warning: 2 image(s) smaller than 16 px are upscaled" in r.output

    r = invoke(*invert_args(small, "x", "--upscale"))
    assert r.exit_code == 1 and "already exist" in r.output and "--overwrite" in r.output
    r = invoke(*invert_args(small, "x", "--upscale", "--overwrite", "--steps", "5"))
    assert r.exit_code == 0, r.output
    r = invoke(*invert_args(small, "bad/name"))
    assert r.exit_code == 1 and "must be 1-64 letters" in r.output
    r = invoke(*invert_args(small, "y", "--steps", "0"))
    assert r.exit_code == 1 and "--steps must be a positive integer" in r.output
    with pytest.raises(FactoryError, match="--prior must be one of shell, gaussian"):
        inv.InvertSettings(prior="laplace").check()
    r = invoke("export", "x", "--out", str(tmp_path / "x.txt"))
    assert r.exit_code == 1 and "must end in .npy" in r.output


# --------------------------------------------------------------------------------- resume


def cli_invert(images: Path, name: str, home: Path) -> subprocess.Popen:
    env = {**os.environ, "FACTORY_HOME": str(home), "OMP_NUM_THREADS": "1"}
    args = ["embeddings", *invert_args(images, name)]
    args[args.index("--steps") + 1] = "120"
    return subprocess.Popen([sys.executable, "-m", "factory.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, err
    return out, err


def test_sigkilled_invert_resumes_to_the_uninterrupted_result(tmp_path, home):
    photos = tmp_path / "photos"
    write_photos(photos, [f"{i:02d}.png" for i in range(12)])  # 6 chunks of 2
    finish(cli_invert(photos, "whole", home))

    proc = cli_invert(photos, "killed", home)
    first = home / "embeddings" / ".killed.invert" / "part-000000.json"
    try:
        deadline = time.monotonic() + 120
        while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first.exists(), "the run never committed its first chunk"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        for f in (proc.stdout, proc.stderr):
            f.close()
    assert proc.returncode == -signal.SIGKILL
    assert not emb.stored("killed")
    kept = sorted(p.name for p in first.parent.glob("part-*.json"))
    assert 1 <= len(kept) < 6

    _, err = finish(cli_invert(photos, "killed", home))
    assert f"resumed: {len(kept)} chunk(s) were already done" in err
    assert not first.parent.exists()
    a, _ = emb.read_store("whole")
    b, _ = emb.read_store("killed")
    assert np.array_equal(a, b)  # bit for bit
    assert emb.read_rows("whole")["mse"] == emb.read_rows("killed")["mse"]


def test_an_unfinished_run_with_other_settings_is_refused_not_mixed_in(tmp_path):
    photos = tmp_path / "photos"
    write_photos(photos, ["0.png", "1.png", "2.png"])
    work = inv.work_dir("half")
    work.mkdir(parents=True)
    (work / "job.json").write_text('{"settings": {"steps": 999}}')
    (work / "part-000000.json").write_text('{"sha256": ["x", "y"], "mse": [0, 0]}')
    r = invoke(*invert_args(photos, "half"))
    assert r.exit_code == 1 and "unfinished inversion 'half' with other settings" in r.output
    assert not emb.stored("half")
    r = invoke(*invert_args(photos, "half", "--overwrite"))  # --overwrite starts over
    assert r.exit_code == 0, r.output
    assert "resumed" not in r.output and emb.stored("half") and not work.exists()


def test_images_from_a_url_and_the_progress_bar_shows_images_per_second_when_piped(tmp_path):
    photos = tmp_path / "photos"
    write_photos(photos, ["0.png", "1.png", "2.png"])
    args = invert_args(photos, "url")
    args[args.index("--images") + 1] = f"file://{photos}"
    args.remove("--quiet")
    r = CliRunner().invoke(main, ["embeddings", *args], catch_exceptions=False)  # stderr is not a terminal
    assert r.exit_code == 0, r.output
    assert "invert: 100%" in r.output and "img/s" in r.output and "chunk 2/2" in r.output
    assert emb.read_rows("url")["file"] == ["0.png", "1.png", "2.png"]
