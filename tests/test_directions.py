"""`factory directions` (random / discover / score) and the operators mask rule, on the shapes world at 64 px."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from helpers import one_line_error, run
from PIL import Image

from factory.cli import main
from factory.directions.common import random_directions
from factory.directions.operators import (
    evaluate_operators,
    fit_operators,
    lstsq_operators,
)
from factory.directions.refine import RefineConfig, refine_direction, refine_objective
from factory.directions.score import mask_iou, select
from factory.generators import load_generator
from factory.masks import apply_operators


@pytest.fixture(scope="module")
def world():
    return load_generator("shapes", resolution=64)


@pytest.fixture(scope="module")
def candidates(tmp_path_factory, world):
    """The world's 6 named directions shuffled among 20 random unit directions."""
    root = tmp_path_factory.mktemp("cand")
    named = world.named_directions()
    rand = random_directions(20, world.dim_z, seed=3)
    allv = np.concatenate([np.stack(list(named.values())), rand]).astype(np.float32)
    perm = np.random.default_rng(5).permutation(len(allv))
    np.save(root / "cand.npy", allv[perm])
    bg = int(np.nonzero(perm == 0)[0][0])
    return root / "cand.npy", bg


@pytest.fixture(scope="module")
def scored(tmp_path_factory, candidates):
    path, bg = candidates
    out = tmp_path_factory.mktemp("score") / "s"
    res = run(["directions", "score", "--generator", "shapes", "--resolution", "64", "--candidates", str(path),
               "--steps", "10", "--batch", "2", "--eval-n", "8", "--seed", "1", "--quiet", "--out", str(out)])
    return out, bg, res.output


def test_score_selects_background(scored, world):
    out, bg, output = scored
    assert "(background)" in output
    for name in ("scores.parquet", "scores.json", "operators.npy", "operators_selected.npy", "direction.npy",
                 "figure1.png", "figure2.png"):
        assert (out / name).is_file(), name
    table = pq.read_table(out / "scores.parquet").to_pylist()
    assert len(table) == 26
    assert [r["index"] for r in table] == list(range(26))
    sel = [r for r in table if r["selected"]]
    assert len(sel) == 1 and sel[0]["index"] == bg and sel[0]["name"] == "background"
    names = {r["name"] for r in table if r["name"]}
    assert names == {"background", "brightness", "color", "shift_x", "shift_y", "zoom"}
    summary = json.loads((out / "scores.json").read_text())
    assert summary["selected"] == bg and summary["flipped"] is False
    assert np.load(out / "operators.npy").shape == (26, 2, 3, 4)
    assert np.load(out / "operators_selected.npy").shape == (2, 3, 4)
    h = np.load(out / "direction.npy")
    assert h.shape == (120,) and h.dtype == np.float32
    assert float(h @ world.named_directions()["background"]) > 0.9999
    for fig in ("figure1.png", "figure2.png"):
        with Image.open(out / fig) as im:
            im.verify()
        with Image.open(out / fig) as im:
            assert im.size[0] > 200 and im.size[1] > 200


class _ToyWorld:
    """Images whose shift along e_0 applies a known affine colour map on each half of the image."""

    dim_z, resolution = 8, 8

    def __init__(self, A1, A2):
        self.device = torch.device("cpu")
        g = torch.Generator().manual_seed(0)
        self.Q = torch.randn(self.dim_z - 1, 3 * 8 * 8, generator=g) / 3
        self.A = torch.stack([A1, A2])
        self.region = (torch.arange(8)[None, :] < 4).expand(8, 8)  # left half: A1, right half: A2

    def __call__(self, z):
        base = torch.tanh(z[:, 1:] @ self.Q).view(-1, 3, 8, 8) * 0.6
        moved = apply_operators(self.A, base)  # [2,B,3,8,8]
        shifted = torch.where(self.region, moved[0], moved[1])
        return torch.where((z[:, 0] > 2.5)[:, None, None, None], shifted, base)


def test_fit_recovers_known_affine_maps():
    A1 = torch.tensor([[0.8, 0.1, 0.0, 0.3], [0.0, 0.9, 0.1, 0.25], [0.1, 0.0, 0.7, 0.35]])
    A2 = torch.tensor([[1.1, 0.0, -0.1, -0.3], [0.05, 1.0, 0.0, -0.35], [0.0, 0.1, 1.2, -0.2]])
    G = _ToyWorld(A1, A2)
    h = torch.zeros(1, 8)
    h[0, 0] = 1.0
    truth = torch.stack([A1, A2])
    for warm, steps in ((True, 20), (False, 250)):  # warm start + Adam, and Adam alone (eq. 3 from near-identity)
        ops = fit_operators(G, h, scale=5.0, steps=steps, batch=8, lr=0.02, seed=0, warm_start=warm)[0]
        err = min((ops - truth).abs().max(), (ops.flip(0) - truth).abs().max())
        assert float(err) < 0.03, (warm, ops)
    # the closed form alone on the true lighter/darker split
    z = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    z[:, 0] = 0
    ops = lstsq_operators(G(z), G(z + 5 * h)[None])[0]
    assert float((ops - truth).abs().max()) < 0.03  # ridge shrinks towards identity a little
    # loss and distance on held-out latents: zero loss, distance = mean ||(A1 - A2) c||
    loss, rel, dist = evaluate_operators(G, h, truth[None], scale=5.0, n=16, batch=8)
    assert loss[0] < 1e-3 and rel[0] < 1e-3 and dist[0] > 0.3


def test_select_rule():
    loss = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    dist = np.array([1.0, 0.5, 3.0, 9.0, 0.1])
    assert select(loss, dist, 0.6) == 2  # among the 3 best losses, the largest distance
    assert select(loss, dist, 1.0) == 3
    assert select(loss, dist, 0.01) == 0


def test_random_command(tmp_path):
    out = tmp_path / "r.npy"
    res = run(["directions", "random", "--n", "7", "--dim", "120", "--seed", "4", "--out", str(out)])
    assert "7 unit directions" in res.output
    a = np.load(out)
    assert a.shape == (7, 120) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-6)
    run(["directions", "random", "--n", "7", "--dim", "120", "--seed", "4", "--out", str(tmp_path / "r2.npy")])
    assert np.array_equal(a, np.load(tmp_path / "r2.npy"))
    one_line_error(CliRunner().invoke(main, ["directions", "random", "--n", "0", "--out", str(out)]), "--n must be")


def test_discover_writes_unit_directions_and_resumes(tmp_path):
    base = ["directions", "discover", "--generator", "shapes", "--resolution", "64", "--n-directions", "4",
            "--batch", "4", "--checkpoint-every", "2", "--quiet"]
    a = tmp_path / "a" / "found.npy"
    run(base + ["--steps", "6", "--out", str(a)])
    dirs = np.load(a)
    assert dirs.shape == (4, 120) and dirs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1, atol=1e-5)
    meta = json.loads(a.with_suffix(".json").read_text())
    assert meta["shape"] == [4, 120] and meta["steps"] == 6 and 0 <= meta["validation"]["accuracy"] <= 1
    ck = a.parent / "found.ckpt"
    assert (ck / "checkpoint.safetensors").is_file() and json.loads((ck / "checkpoint.json").read_text())["step"] == 6
    # interrupted after 3 steps, then resumed to 6: the same bytes as the uninterrupted run
    b = tmp_path / "b" / "found.npy"
    run(base + ["--steps", "3", "--out", str(b)])
    res = run(base + ["--steps", "6", "--out", str(b)])
    assert "resuming from" in res.output and "at step 3" in res.output
    assert b.read_bytes() == a.read_bytes()
    # a checkpoint of another training config is refused
    one_line_error(CliRunner().invoke(main, [*base[:7], "3", *base[8:], "--steps", "6", "--out", str(b)]),
                   "another training config")


def test_discover_ortho_deformator_gives_orthonormal_directions(tmp_path):
    base = ["directions", "discover", "--generator", "shapes", "--resolution", "16", "--batch", "4", "--quiet",
            "--deformator", "ortho", "--axes-init", "--diff-input"]
    a = tmp_path / "o.npy"
    run(base + ["--n-directions", "120", "--steps", "3", "--out", str(a)])
    dirs = np.load(a).astype(np.float64)
    assert dirs.shape == (120, 120)
    np.testing.assert_allclose(dirs @ dirs.T, np.eye(120), atol=1e-4)
    meta = json.loads(a.with_suffix(".json").read_text())
    assert meta["config"]["deformator"] == "ortho" and meta["config"]["rec_diff"] is True
    one_line_error(CliRunner().invoke(main, base + ["--n-directions", "121", "--steps", "1", "--out", str(tmp_path / "x.npy")]),
                   "at most dim_z")


def test_operators_rule_through_generate(scored, tmp_path):
    out, _, _ = scored
    ds = tmp_path / "ops"
    run(["generate", "--generator", "shapes", "--resolution", "64", "--n", "48", "--shard-size", "48",
         "--workers", "0", "--quiet", "--direction", str(out / "direction.npy"), "--mask-rule", "operators",
         "--operators", str(out / "operators_selected.npy"), "--out", str(ds)])
    man = json.loads((ds / "manifest.json").read_text())
    assert man["spec"]["mask_rule"] == "operators"
    ops = np.load(out / "operators_selected.npy")
    assert np.allclose(np.array(man["spec"]["operators"]["values"], np.float32), ops)
    index = pq.read_table(ds / man["shards"][0]["index"]).to_pydict()
    assert np.mean(index["true_iou"]) > 0.6
    # without --operators, or --operators with another rule: one-line errors
    base = ["generate", "--generator", "shapes", "--resolution", "64", "--n", "8", "--workers", "0", "--quiet"]
    one_line_error(CliRunner().invoke(main, base + ["--mask-rule", "operators", "--out", str(tmp_path / "x")]),
                   "needs --operators")
    one_line_error(CliRunner().invoke(main, base + ["--operators", str(out / "operators_selected.npy"),
                                                    "--out", str(tmp_path / "y")]), "--mask-rule operators")
    one_line_error(CliRunner().invoke(main, base + ["--mask-rule", "operators", "--operators",
                                                    str(out / "operators.npy"), "--out", str(tmp_path / "z")]),
                   "operators_selected.npy")


def test_operator_mask_matches_luminance_on_true_operators(world):
    """On the background direction, eq. 5 with fitted operators agrees with the luminance rule on most pixels."""
    from factory.masks import make_masks

    h = torch.as_tensor(world.named_directions()["background"])
    z = torch.randn(8, 120, generator=torch.Generator().manual_seed(2))
    x, y = world(z), world(z + 5 * h)
    ops = lstsq_operators(x, y[None])[0]
    lum = make_masks(x, y, rule="luminance")[0]
    opm = make_masks(x, y, rule="operators", operators=ops)[0]
    assert float((lum == opm).float().mean()) > 0.9


@pytest.mark.parametrize("case", ["width", "object", "missing", "empty", "names"])
def test_score_bad_input(case, tmp_path, candidates):
    f = tmp_path / "c.npy"
    extra = []
    if case == "width":
        np.save(f, np.ones((3, 100), np.float32))
        frag = "width 100, the generator's dim_z is 120"
    elif case == "object":
        np.save(f, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
        frag = "not a plain numeric .npy array"
    elif case == "missing":
        f = tmp_path / "nope.npy"
        frag = "candidates file not found"
    elif case == "empty":
        np.save(f, np.zeros((0, 120), np.float32))
        frag = "K = 0"
    else:
        f = candidates[0]
        (tmp_path / "n.json").write_text(json.dumps(["a", "b"]))
        extra = ["--names", str(tmp_path / "n.json")]
        frag = "2 names for 26 candidates"
    res = CliRunner().invoke(main, ["directions", "score", "--resolution", "64", "--candidates", str(f), "--steps", "1",
                                    "--quiet", "--out", str(tmp_path / "o"), *extra])
    one_line_error(res, frag)


# ----------------------------------------------------------------- refine (score --refine-steps)

def _objective(G, h, seed=11):
    z = torch.randn(16, G.dim_z, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return float(refine_objective(G, torch.as_tensor(h / np.linalg.norm(h), dtype=torch.float32), z)[0])


def test_refine_objective_prefers_background_to_its_mixtures():
    G = load_generator("shapes", resolution=32)
    nd = G.named_directions()
    bg = nd["background"]
    axis = G.coordinate_direction
    j_bg = _objective(G, bg)
    # geometry mixed in (growth, zoom, rotation, contrast), global colour, and random directions all score lower
    for name, h in [("size", 0.85 * bg + 0.53 * axis("size")), ("zoom", 0.85 * bg + 0.53 * nd["zoom"]),
                    ("angle", 0.85 * bg + 0.53 * axis("angle")), ("contrast", 0.85 * bg + 0.53 * axis("contrast")),
                    ("brightness", nd["brightness"]), ("random", random_directions(1, 120, seed=4)[0])]:
        assert _objective(G, h) < j_bg - 0.2, name


def test_refine_finds_background_from_a_random_start(torch_one_thread):
    """Gradient ascent on the criterion from a random unit direction reaches a direction whose luminance
    masks are as good as the true background direction's (the criterion of docs/directions.md (b3))."""
    G = load_generator("shapes", resolution=32)
    G64 = load_generator("shapes", resolution=64)
    bg = G.named_directions()["background"]
    h0 = torch.as_tensor(np.random.default_rng(0).standard_normal(120), dtype=torch.float32)
    assert abs(float(h0 @ torch.as_tensor(bg))) / float(h0.norm()) < 0.2
    h = refine_direction(G, h0, RefineConfig(steps=300), seed=0).numpy()
    assert abs(np.linalg.norm(h) - 1) < 1e-5
    h = h * np.sign(h @ bg)
    assert float(h @ bg) > 0.9
    iou = mask_iou(G64, h, n=64)["clean"]
    iou_true = mask_iou(G64, bg, n=64)["clean"]
    assert iou > 0.9 * iou_true, (iou, iou_true)


def test_score_refine_writes_report(candidates, tmp_path, world):
    path, bg = candidates
    out = tmp_path / "s"
    res = run(["directions", "score", "--generator", "shapes", "--resolution", "64", "--candidates", str(path),
               "--steps", "10", "--batch", "2", "--eval-n", "8", "--seed", "1", "--refine-steps", "20",
               "--refine-top", "2", "--refine-batch", "4", "--quiet", "--out", str(out)])
    assert "refined from candidate" in res.output
    s = json.loads((out / "scores.json").read_text())
    r = s["refined"]
    assert s["selected"] == bg and [x["start"] for x in r["runs"]][0] == bg and len(r["runs"]) == 2
    chosen = next(x for x in r["runs"] if x["start"] == r["chosen_start"])
    assert chosen["after"]["objective"] == max(x["after"]["objective"] for x in r["runs"])
    h = np.load(out / "direction.npy")
    assert abs(np.linalg.norm(h) - 1) < 1e-5 and float(h @ world.named_directions()["background"]) > 0.9
    assert np.load(out / "operators_selected.npy").shape == (2, 3, 4)


@pytest.mark.parametrize("flag,value,frag", [("--refine-steps", "-1", "--refine-steps"), ("--refine-top", "0", "--refine-top"),
                                             ("--refine-lr", "0", "--refine-lr")])
def test_score_refine_bad_input(flag, value, frag, candidates, tmp_path):
    res = CliRunner().invoke(main, ["directions", "score", "--resolution", "64", "--candidates", str(candidates[0]),
                                    "--steps", "1", "--quiet", "--out", str(tmp_path / "o"), flag, value])
    one_line_error(res, frag)


def _without_wall_times(obj):
    if isinstance(obj, dict):
        return {k: _without_wall_times(v) for k, v in obj.items() if not k.startswith("seconds")}
    return [_without_wall_times(v) for v in obj] if isinstance(obj, list) else obj


def _tiny_discover_and_score(root, threads: int) -> dict[str, str]:
    """A tiny discover + score run in a child process whose torch starts with ``threads`` CPU threads; the sha256
    of every file it writes (the JSON files without their wall times)."""
    import hashlib
    import os
    import subprocess
    import sys

    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([repo, *filter(None, [os.environ.get("PYTHONPATH")])])}
    code = ("import sys, torch; from factory.cli import main; "
            "assert torch.get_num_threads() == int(sys.argv[1]); main(sys.argv[2:])")
    base = ["--generator", "shapes", "--resolution", "32", "--quiet"]
    root.mkdir()
    for args in (["directions", "discover", *base, "--n-directions", "6", "--batch", "6", "--steps", "8",
                  "--deformator", "ortho", "--diff-input", "--out", "found.npy"],
                 ["directions", "score", *base, "--candidates", "found.npy", "--steps", "6", "--batch", "2",
                  "--eval-n", "4", "--refine-steps", "3", "--refine-top", "1", "--refine-batch", "2",
                  "--out", "score"]):  # relative paths: the two runs' JSON files name the same paths
        res = subprocess.run([sys.executable, "-c", code, str(threads), *args], env=env, cwd=root,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
    hashes = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.suffix == ".png":
            continue
        data = p.read_bytes()
        if p.suffix == ".json":
            data = json.dumps(_without_wall_times(json.loads(data)), sort_keys=True).encode()
        hashes[str(p.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return hashes


def test_discover_and_score_are_bit_identical_whatever_the_thread_count(tmp_path):
    one, two = _tiny_discover_and_score(tmp_path / "t1", 1), _tiny_discover_and_score(tmp_path / "t2", 2)
    assert {"found.npy", "found.json", "score/direction.npy", "score/scores.parquet", "score/scores.json"} <= set(one)
    assert one == two
    for f in ("found.json", "score/scores.json"):
        run_rec = json.loads((tmp_path / "t2" / f).read_text())["run"]
        assert run_rec == {"torch": torch.__version__, "threads": 1, "device": "cpu"}, run_rec
    assert torch.get_num_threads() >= 1


def test_pinned_threads_restores_the_count_and_refuses_nonsense():
    from factory.device import pinned_threads
    from factory.format import FactoryError

    before = torch.get_num_threads()
    with pinned_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(FactoryError, match="--threads must be"):
        with pinned_threads(0):
            pass
