"""Helpers of benchmarks/real_gan.sh (docs/real-gan.md): checks, figures and held-out exports.

Only public entry points are used (factory.generators.load_generator, factory.format); nothing
here changes how the factory or the trainers compute anything.

    python benchmarks/real_gan_tools.py same-dirs A.npy B.npy              # are two direction files the same?
    python benchmarks/real_gan_tools.py direction-stats W FOUND.npy OUT.json DIR.npy...   # fg of +h / -h, cosines
    python benchmarks/real_gan_tools.py strips W DIRS.npy OUT.png [--top 8] [--scores scores.json] [--json J]
    python benchmarks/real_gan_tools.py export DATASET|VIEW OUTDIR [--n 300]   # images/ + masks/ (folder kind)
    python benchmarks/real_gan_tools.py prior TRAIN_FOLDER HELD_FOLDER OUT.json  # IoU of a constant mask
    python benchmarks/real_gan_tools.py unet-figure HELD_FOLDER PRED_FOLDER OUT.png [--n 12]
    python benchmarks/real_gan_tools.py shrink IN.png OUT.png [--max-side 1000] [--colors 256]
    python benchmarks/real_gan_tools.py seeds OUT SEED...      # the per-seed table: OUT/seeds.json, OUT/seeds.md
    python benchmarks/real_gan_tools.py bands RUN HELD_FOLDER OUT.json [--png P]  # position-locked bands, 64 vs 128 px
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _gen(weights):
    from factory.generators import load_generator

    return load_generator("dcgan", weights=weights, device="cpu")


def same_dirs(a) -> None:
    x, y = np.load(a.a), np.load(a.b)
    d = float(np.abs(x - y).max())
    print(json.dumps({"a": a.a, "b": a.b, "max_abs_difference": d, "identical_to_1e-5": d < 1e-5}))


def direction_stats(a) -> None:
    """Per direction file: luminance fg ratio of +h and -h (256 latents, seed 123, r = 5) and cosines."""
    import torch

    from factory.masks import luminance_mask

    g = _gen(a.weights)
    found = np.load(a.found)
    found = found / np.linalg.norm(found, axis=1, keepdims=True)
    z = torch.randn(a.n, g.dim_z, generator=torch.Generator().manual_seed(a.seed))
    x = g(z)
    hs = {p: np.load(p).astype(np.float32) for p in a.directions}
    res = {}
    for p, h in hs.items():
        t = torch.from_numpy(h)
        res[p] = {"fg_plus": float(luminance_mask(x, g(z + a.r * t[None])).float().mean()),
                  "fg_minus": float(luminance_mask(x, g(z - a.r * t[None])).float().mean()),
                  "max_abs_cos_to_discovered": float(np.abs(found @ h).max()),
                  "argmax_abs_cos_to_discovered": int(np.abs(found @ h).argmax()),
                  "cos_to": {q: float(h @ hq) for q, hq in hs.items() if q != p}}
    out = {"latents": a.n, "seed": a.seed, "r": a.r, "directions": res}
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out))


def _tile(arr):  # [3,H,W] in [-1,1] -> PIL image
    from PIL import Image

    u8 = ((np.clip(arr, -1, 1) + 1) * 127.5 + 0.5).astype(np.uint8).transpose(1, 2, 0)
    return Image.fromarray(u8)


def strips(a) -> None:
    """Rows: directions (largest mean image change first); columns: n latents x shifts."""
    import torch
    from PIL import Image, ImageDraw

    g = _gen(a.weights)
    D = np.load(a.dirs).astype(np.float32)
    D = D / np.linalg.norm(D, axis=1, keepdims=True)
    z = torch.randn(a.n, g.dim_z, generator=torch.Generator().manual_seed(a.seed))
    shifts = [float(s) for s in a.shifts.split(",")]
    x0 = g(z)
    change = []
    for d in D:
        y = g(z + a.measure_shift * torch.from_numpy(d)[None])
        change.append(float((y - x0).square().sum(1).mean()))
    change = np.array(change)
    sel = None
    if a.scores:
        s = json.loads(Path(a.scores).read_text())
        rows = s.get("rows") or s.get("candidates") or []
        sel = next((r["index"] for r in rows if r.get("selected")), None)
    order = list(np.argsort(-change)[: a.top])
    if sel is not None and sel not in order:
        order[-1] = sel
    R, lab = g.resolution, 150
    W = lab + len(shifts) * a.n * R + (a.n - 1) * 6
    sheet = Image.new("RGB", (W, 18 + len(order) * (R + 4)), "white")
    dr = ImageDraw.Draw(sheet)
    for j, s in enumerate(shifts * a.n):
        dr.text((lab + j * R + (j // len(shifts)) * 6 + 4, 3), f"{s:+g}", fill="black")
    for i, k in enumerate(order):
        y0 = 18 + i * (R + 4)
        tag = f"dir {k}" + ("  (selected)" if k == sel else "")
        dr.text((4, y0 + 18), tag, fill="red" if k == sel else "black")
        dr.text((4, y0 + 34), f"change {change[k]:.2f}", fill="black")
        for li in range(a.n):
            ys = g(z[li:li + 1].repeat(len(shifts), 1) + torch.tensor(shifts)[:, None] * torch.from_numpy(D[k])[None])
            for j in range(len(shifts)):
                sheet.paste(_tile(ys[j].numpy()), (lab + (li * len(shifts) + j) * R + li * 6, y0))
    sheet = sheet.resize((sheet.width * a.zoom, sheet.height * a.zoom), Image.NEAREST)
    sheet.save(a.out, optimize=True)
    info = {"order": [int(k) for k in order], "mean_squared_change_at_shift": a.measure_shift,
            "change": {int(k): round(float(change[k]), 4) for k in order},
            "change_all_min_median_max": [float(change.min()), float(np.median(change)), float(change.max())],
            "selected": sel, "shifts": shifts, "latents": a.n, "seed": a.seed}
    if a.json:
        Path(a.json).write_text(json.dumps(info, indent=2))
    print(json.dumps(info))


def export(a) -> None:
    """Accepted samples of a dataset/view as OUT/images/KEY.png + OUT/masks/KEY.png (trainers' folder kind)."""
    from factory import format as fmt

    r = fmt.open_dataset(a.dataset)
    out = Path(a.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    ext = fmt.image_member(r.manifest)
    n = 0
    for shard, url in r.shard_urls():
        ok = None if r.accepted is None else r.accepted.get(shard, set())
        members = dict(fmt.safe_tar_members(fmt.read_bytes(url), url))
        keys = sorted({fmt.split_member(m)[0] for m in members})
        for key in keys:
            if ok is not None and fmt.key_row(key) not in ok:
                continue
            (out / "images" / f"{key}.{ext.split('.')[-1]}").write_bytes(members[f"{key}.{ext}"])
            (out / "masks" / f"{key}.png").write_bytes(members[f"{key}.mask.png"])
            n += 1
            if n >= a.n:
                print(json.dumps({"exported": n, "out": str(out)}))
                return
    print(json.dumps({"exported": n, "out": str(out)}))


def _masks(folder: Path) -> dict[str, np.ndarray]:
    from PIL import Image

    return {p.stem: np.asarray(Image.open(p).convert("L")) >= 128 for p in sorted((folder / "masks").glob("*.png"))}


def prior(a) -> None:
    """IoU on the held-out masks of one constant mask: the training masks' per-pixel mean >= 0.5."""
    tr, he = _masks(Path(a.train)), _masks(Path(a.held))
    mean = np.mean(np.stack(list(tr.values())).astype(np.float32), axis=0)
    const = mean >= 0.5
    ious = []
    for m in he.values():
        u = (m | const).sum()
        ious.append(1.0 if u == 0 else float((m & const).sum() / u))
    res = {"train_masks": len(tr), "held_out_masks": len(he), "constant_mask_fg_ratio": float(const.mean()),
           "constant_mask_IoU_mean": float(np.mean(ious)),
           "held_out_fg_ratio_mean": float(np.mean([m.mean() for m in he.values()]))}
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res))


def unet_figure(a) -> None:
    """Columns per sample: image | GAN mask | U-Net probability | U-Net mask (p >= 0.5)."""
    from PIL import Image, ImageDraw

    held, pred = Path(a.held), Path(a.pred)
    stems = sorted(p.stem for p in (held / "masks").glob("*.png"))[: a.n]
    imgs = {p.stem: p for p in (held / "images").iterdir()}
    R = None
    tiles = []
    for s in stems:
        im = Image.open(imgs[s]).convert("RGB")
        R = im.width
        gm = Image.open(held / "masks" / f"{s}.png").convert("L")
        pr = Image.open(pred / f"{s}.png").convert("L")
        pm = pr.point(lambda v: 255 if v >= 128 else 0)
        tiles.append([im, gm.convert("RGB"), pr.convert("RGB"), pm.convert("RGB")])
    cols = a.cols
    rows = (len(tiles) + cols - 1) // cols
    cw = 4 * R + 8
    sheet = Image.new("RGB", (cols * cw, 16 + rows * (R + 4)), "white")
    dr = ImageDraw.Draw(sheet)
    for c in range(cols):
        for j, t in enumerate(["image", "GAN mask", "U-Net p", "U-Net>=.5"]):
            dr.text((c * cw + j * R + 2, 2), t, fill="black")
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        for j, im in enumerate(t):
            sheet.paste(im, (c * cw + j * R, 16 + r * (R + 4)))
    sheet = sheet.resize((sheet.width * a.zoom, sheet.height * a.zoom), Image.NEAREST)
    sheet.save(a.out, optimize=True)
    print(json.dumps({"samples": len(tiles), "out": a.out, "bytes": os.path.getsize(a.out)}))


def shrink(a) -> None:
    from PIL import Image

    im = Image.open(a.inp).convert("RGB")
    f = min(1.0, a.max_side / max(im.size))
    if f < 1:
        im = im.resize((int(im.width * f), int(im.height * f)), Image.LANCZOS)
    if a.colors:
        im = im.quantize(colors=a.colors, method=Image.MEDIANCUT, dither=Image.NONE)
    im.save(a.out, optimize=True)
    print(json.dumps({"in": a.inp, "out": a.out, "size": im.size, "bytes": os.path.getsize(a.out)}))


def _find(obj, key):
    """The first value of ``key`` in a nested JSON object (depth first), else None."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        obj = list(obj.values())
    if isinstance(obj, list):
        for v in obj:
            r = _find(v, key)
            if r is not None:
                return r
    return None


def _mask_shape(weights, h_sel, h_ref, n=128, seed=123, r=5.0) -> dict:
    """What the paper selection's masks look like: their mean's left/right and top/bottom imbalance, and their
    IoU with the refined direction's (face) masks on the same latents."""
    import torch

    from factory.masks import luminance_mask

    g = _gen(weights)
    z = torch.randn(n, g.dim_z, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        x = g(z)
        ms = luminance_mask(x, g(z + r * torch.from_numpy(h_sel)[None])).numpy().astype(bool)
        mr = luminance_mask(x, g(z + r * torch.from_numpy(h_ref)[None])).numpy().astype(bool)
    ms, mr = ms.reshape(n, *ms.shape[-2:]), mr.reshape(n, *mr.shape[-2:])
    mean = ms.mean(0)
    w, hgt = mean.shape[1] // 2, mean.shape[0] // 2
    iou = [float((a & b).sum() / max(1, (a | b).sum())) for a, b in zip(ms, mr)]
    return {"fg": float(ms.mean()), "left_minus_right": float(mean[:, :w].mean() - mean[:, w:].mean()),
            "top_minus_bottom": float(mean[:hgt].mean() - mean[hgt:].mean()),
            "iou_with_refined_masks": float(np.mean(iou))}


def _times(folder: Path) -> float:
    f = folder / "times.tsv"
    return sum(float(line.split("\t")[1]) for line in f.read_text().splitlines() if "\t" in line) if f.is_file() else 0.0


def seeds(a) -> None:
    """One row per discovery seed: the paper's selection (which candidate, what its masks look like, the U-Net's
    IoU against the constant mask's) and the refined arm; mean and spread over seeds."""
    import importlib.util

    out = Path(a.out)
    spec = importlib.util.find_spec("gan_face_generate")
    weights = os.path.join(os.path.dirname(spec.origin), "weights.tar")
    rows = []
    for sd in a.seeds:
        d = out / f"seed-{sd}"
        rd = lambda name, d=d: json.loads((d / name).read_text())  # noqa: E731
        sc, rf, fd = rd("score/scores.json"), rd("score-refined/scores.json"), rd("discover/found.json")
        sel = sc["rows"][sc["selected"]]
        row = {"seed": sd, "discover_accuracy": fd["validation"]["accuracy"], "run": fd.get("run"),
               "selected": sc["selected"], "distance": sel["distance"], "loss_relative": sel["loss_relative"],
               "flipped": sc["flipped"],
               "masks": _mask_shape(weights, np.load(d / "score/direction.npy"), np.load(d / "score-refined/direction.npy")),
               "refined_from": rf["refined"]["chosen_start"] if rf.get("refined") else None,
               "seconds": _times(d)}
        for arm, sfx in (("paper", ""), ("refined", "-refined")):
            row[arm] = {"iou_native": _find(rd(f"eval-held{sfx}-64.json"), "IoU"),
                        "iou_protocol": _find(rd(f"eval-held{sfx}.json"), "IoU"),
                        "iou_constant": rd(f"prior{sfx}.json")["constant_mask_IoU_mean"]}
            row[arm]["gain_over_constant"] = row[arm]["iou_native"] - row[arm]["iou_constant"]
        rows.append(row)

    def stat(get):
        v = np.array([get(r) for r in rows], float)
        return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                "min": float(v.min()), "max": float(v.max())}

    summary = {arm: {k: stat(lambda r, arm=arm, k=k: r[arm][k])
                     for k in ("iou_native", "iou_protocol", "iou_constant", "gain_over_constant")}
               for arm in ("paper", "refined")}
    res = {"seeds": a.seeds, "rows": rows, "summary": summary}
    (out / "seeds.json").write_text(json.dumps(res, indent=2))
    lines = ["| seed | discover acc | selected | distance | masks: left-right / IoU with face masks | paper: U-Net IoU (64 px) "
             "| constant mask | refined: U-Net IoU (64 px) | constant mask | wall s |", "|" + "---|" * 10]
    for r in rows:
        m = r["masks"]
        lines.append(f"| {r['seed']} | {r['discover_accuracy']:.2f} | {r['selected']} | {r['distance']:.2f} "
                     f"| {m['left_minus_right']:+.2f} / {m['iou_with_refined_masks']:.2f} "
                     f"| {r['paper']['iou_native']:.3f} | {r['paper']['iou_constant']:.3f} "
                     f"| {r['refined']['iou_native']:.3f} | {r['refined']['iou_constant']:.3f} | {r['seconds']:.0f} |")
    lines += ["", "| arm | measure | mean | sd | min | max |", "|---|---|---|---|---|---|"]
    for arm in ("paper", "refined"):
        for k, v in summary[arm].items():
            lines.append(f"| {arm} | {k} | {v['mean']:.3f} | {v['sd']:.3f} | {v['min']:.3f} | {v['max']:.3f} |")
    (out / "seeds.md").write_text("\n".join(lines) + "\n")
    selected_figure(out, a.seeds, out / "seeds-selected.png")
    print("\n".join(lines))


STRIP_HEAD, STRIP_ROW, STRIP_LABEL = 18, 66, 150  # strips.png: header height, row height, label column width


def selected_figure(out: Path, seeds: list[int], png: Path) -> None:
    """The paper selection's direction of every seed, one row each: the first row of each seed's strips.png
    (the selected candidate; two latents at shifts -6..+6), relabelled with the seed."""
    from PIL import Image, ImageDraw

    ims = [Image.open(out / f"seed-{sd}" / "strips.png").convert("RGB") for sd in seeds]
    w = ims[0].size[0]
    fig = Image.new("RGB", (w, STRIP_HEAD + STRIP_ROW * len(ims)), "white")
    fig.paste(ims[0].crop((0, 0, w, STRIP_HEAD)), (0, 0))
    draw = ImageDraw.Draw(fig)
    for i, (sd, im) in enumerate(zip(seeds, ims)):
        y = STRIP_HEAD + i * STRIP_ROW
        fig.paste(im.crop((0, STRIP_HEAD, w, STRIP_HEAD + STRIP_ROW)), (0, y))
        info = json.loads((out / f"seed-{sd}" / "strips.json").read_text())
        draw.rectangle((0, y, STRIP_LABEL - 2, y + STRIP_ROW - 1), fill="white")
        draw.text((4, y + 18), f"seed {sd}: dir {info['selected']}", fill=(200, 0, 0))
        draw.text((4, y + 34), f"change {info['change'][str(info['selected'])]:.2f}", fill="black")
    fig.save(png)


def _band_profile(P):
    """Column profile of ``P [N,64,64]`` (rows 16..47), minus its 9-px moving average: (shared, per-image) RMS
    and the profile averaged over images (what sits at the same columns in every image)."""
    c = P[:, 16:48].mean(1)
    k = np.ones(9) / 9
    hp = np.stack([x - np.convolve(np.pad(x, 4, mode="edge"), k, "valid") for x in c])[:, 6:58]
    shared, per = float(np.sqrt((hp.mean(0) ** 2).mean())), float(np.sqrt((hp ** 2).mean(1)).mean())
    return {"shared_rms": round(shared, 4), "per_image_rms": round(per, 4),
            "shared_over_per_image": round(shared / per, 3)}, hp.mean(0)


def bands(a) -> None:
    """Where the vertical bands of a 64-px U-Net's maps at the 128-px protocol come from: the maps at 64 and at
    128 (PIL and torch resize), faces shifted 8 px (do the bands follow them?), constant images (the prior)."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from trainers.eval.evaluate import image_to_input, predict_batch
    from trainers.model.checkpoint import open_model

    net, dev = open_model(a.model, "cpu").eval(), torch.device("cpu")
    held = Path(a.held)
    gts = _masks(held)
    files = {p.stem: p for p in (held / "images").iterdir()}
    imgs = [Image.open(files[s]).convert("RGB") for s in sorted(gts)]
    gt = [gts[s] for s in sorted(gts)]
    R = imgs[0].width

    def native(im):
        return torch.from_numpy(np.asarray(im, np.float32).copy()).permute(2, 0, 1) / 127.5 - 1

    def run(xs):
        return np.stack([p for i in range(0, len(xs), 32)
                         for p in predict_batch(net, torch.stack(xs[i:i + 32]), [(R, R)] * len(xs[i:i + 32]), dev)])

    def iou(P):
        return round(float(np.mean([((p >= .5) & g).sum() / max(1, ((p >= .5) | g).sum()) for p, g in zip(P, gt)])), 4)

    def shifted(im, s=8):
        x = np.asarray(im)
        return Image.fromarray(np.concatenate([np.repeat(x[:, :1], s, 1), x[:, :-s]], 1))

    P64, P128 = run([native(im) for im in imgs]), run([image_to_input(im) for im in imgs])
    P128t = run([F.interpolate(native(im)[None], size=(2 * R, 2 * R), mode="bilinear", align_corners=False)[0]
                 for im in imgs])
    res = {"model": a.model, "images": len(imgs), "mean_GAN_mask_fg": round(float(np.mean(gt)), 3)}
    for name, P in (("native_64", P64), ("protocol_128_PIL_resize", P128), ("at_128_torch_resize", P128t)):
        res[name] = {"IoU_vs_GAN_masks": iou(P), "fg": round(float((P >= .5).mean()), 3), **_band_profile(P)[0]}
    prof, prof_s = _band_profile(P128)[1], _band_profile(run([image_to_input(shifted(im)) for im in imgs]))[1]
    res["faces_shifted_8px_right_at_128"] = {
        "corr_with_unshifted_bands_same_columns": round(float(np.corrcoef(prof, prof_s)[0, 1]), 3),
        "corr_with_unshifted_bands_moved_8_columns": round(float(np.corrcoef(prof[:-8], prof_s[8:])[0, 1]), 3)}
    grey = Image.new("RGB", (R, R), (128, 128, 128))
    c64, c128 = run([native(grey)])[0], run([image_to_input(grey)])[0]
    for name, p in (("constant_grey_64", c64), ("constant_grey_128", c128)):
        res[name] = {"fg": round(float((p >= .5).mean()), 3),
                     "middle_row_every_4th_px": [round(float(t), 2) for t in p[R // 2, ::4]]}
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res))
    if a.png:
        from PIL import ImageDraw

        tiles = [("mean p, 64 px", P64.mean(0)), ("mean p, 128 px", P128.mean(0)),
                 ("grey image, 64", c64), ("grey image, 128", c128)]
        z = 3
        sheet = Image.new("L", (len(tiles) * (R * z + 8), R * z + 16), 255)
        dr = ImageDraw.Draw(sheet)
        for i, (label, p) in enumerate(tiles):
            im = Image.fromarray((np.clip(p, 0, 1) * 255).astype(np.uint8)).resize((R * z, R * z), Image.NEAREST)
            sheet.paste(im, (i * (R * z + 8), 16))
            dr.text((i * (R * z + 8) + 2, 2), label, fill=0)
        sheet.save(a.png, optimize=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp = p.add_subparsers(dest="cmd", required=True)
    c = sp.add_parser("same-dirs"); c.add_argument("a"); c.add_argument("b"); c.set_defaults(f=same_dirs)
    c = sp.add_parser("direction-stats"); c.add_argument("weights"); c.add_argument("found"); c.add_argument("out")
    c.add_argument("directions", nargs="+"); c.add_argument("--n", type=int, default=256)
    c.add_argument("--seed", type=int, default=123); c.add_argument("--r", type=float, default=5.0)
    c.set_defaults(f=direction_stats)
    c = sp.add_parser("strips"); c.add_argument("weights"); c.add_argument("dirs"); c.add_argument("out")
    c.add_argument("--top", type=int, default=8); c.add_argument("--n", type=int, default=2)
    c.add_argument("--shifts", default="-6,-3,0,3,6"); c.add_argument("--measure-shift", type=float, default=6.0)
    c.add_argument("--seed", type=int, default=0); c.add_argument("--zoom", type=int, default=1)
    c.add_argument("--scores"); c.add_argument("--json"); c.set_defaults(f=strips)
    c = sp.add_parser("export"); c.add_argument("dataset"); c.add_argument("out")
    c.add_argument("--n", type=int, default=300); c.set_defaults(f=export)
    c = sp.add_parser("prior"); c.add_argument("train"); c.add_argument("held"); c.add_argument("out")
    c.set_defaults(f=prior)
    c = sp.add_parser("unet-figure"); c.add_argument("held"); c.add_argument("pred"); c.add_argument("out")
    c.add_argument("--n", type=int, default=12); c.add_argument("--cols", type=int, default=2)
    c.add_argument("--zoom", type=int, default=2); c.set_defaults(f=unet_figure)
    c = sp.add_parser("shrink"); c.add_argument("inp"); c.add_argument("out")
    c.add_argument("--max-side", type=int, default=1000); c.add_argument("--colors", type=int, default=0)
    c.set_defaults(f=shrink)
    c = sp.add_parser("bands"); c.add_argument("model"); c.add_argument("held"); c.add_argument("out")
    c.add_argument("--png"); c.set_defaults(f=bands)
    c = sp.add_parser("seeds"); c.add_argument("out"); c.add_argument("seeds", nargs="+", type=int)
    c.set_defaults(f=seeds)
    a = p.parse_args()
    a.f(a)


if __name__ == "__main__":
    main()
