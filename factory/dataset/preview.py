"""`factory preview`: a contact sheet of images with their masks overlaid, plus filter statistics.

Top: up to N samples (accepted ones for a view), each image with its mask as a
red tint and a red contour. Bottom left: histogram of fg ratio, accepted vs
rejected (for a dataset, "accepted" = the paper's default filter, area and
reference histogram). Bottom right: pass rate of each filter. Matplotlib with
the Agg backend; written through fsspec, so OUT may be remote.
"""
from __future__ import annotations

import io
import math

import numpy as np

from factory import format as fmt
from factory.dataset.reader import accepted_flags, load_index, read_samples
from factory.format import FactoryError
from factory.fsio import atomic_write

TINT = np.array([255, 0, 0], np.float32)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45, color: np.ndarray = TINT) -> np.ndarray:
    """uint8 HxWx3 image with a tint of `color` (red) over `mask` (bool HxW) and a solid contour of it."""
    img = image.astype(np.float32)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)
    m = mask.astype(bool)
    out = img.copy()
    out[m] = (1 - alpha) * img[m] + alpha * color
    inner = m.copy()
    inner[1:, :] &= m[:-1, :]
    inner[:-1, :] &= m[1:, :]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    out[m & ~inner] = color
    return out.clip(0, 255).astype(np.uint8)


def _decode(data: bytes, mode: str) -> np.ndarray:
    with fmt.open_image_checked(data, "preview sample") as im:
        return np.asarray(im.convert(mode))


def pick_samples(res: fmt.Resolved, n: int, first_shard_only: bool = False) -> list[tuple[str, np.ndarray]]:
    """(key, overlay) of the first `n` samples (accepted ones for a view): one range read per sample when the
    index has tar offsets, else the few shards they live in are read whole."""
    members = res.manifest.get("members") or {}
    ext_img, ext_mask = members.get("image", fmt.EXT_IMAGE), members.get("mask", fmt.EXT_MASK)
    entries = sorted(res.manifest["shards"], key=lambda s: s["shard"])
    if first_shard_only:
        entries = entries[:1]
    rows: list[int] = []
    for s in entries:
        if len(rows) >= n:
            break
        if res.accepted is None:
            here = range(s["first_row"], s["first_row"] + s["samples"])
        else:
            here = res.accepted[s["shard"]].tolist() if s["shard"] in res.accepted else []
        rows.extend(here[: n - len(rows)])
    out: list[tuple[str, np.ndarray]] = []
    for row, parts in sorted(read_samples(res, rows).items()):
        key = fmt.sample_key(row)
        if ext_img not in parts or ext_mask not in parts:
            raise fmt.FormatError(f"{res.root}: sample {key} lacks {ext_img} or {ext_mask}")
        out.append((key, overlay(_decode(parts[ext_img], "RGB"), _decode(parts[ext_mask], "L") > 127)))
    return out


def contact_sheet(tiles: list[np.ndarray], cols: int | None = None, pad: int = 2) -> np.ndarray:
    """Tiles on a white grid (``cols`` per row, default about square) -> uint8 HxWx3."""
    if not tiles:
        return np.full((32, 32, 3), 255, np.uint8)
    cols = cols or math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    h = max(t.shape[0] for t in tiles)
    w = max(t.shape[1] for t in tiles)
    sheet = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        sheet[y : y + t.shape[0], x : x + t.shape[1]] = t
    return sheet


def _accepted_mask(res: fmt.Resolved, table) -> tuple[np.ndarray, str]:
    if res.accepted is not None:
        return accepted_flags(res.accepted, table.column("row").to_numpy()), "view"
    area = table.column("pass_area").to_numpy(zero_copy_only=False)
    hist = table.column("pass_hist_reference").to_numpy(zero_copy_only=False)
    return area & hist, "area and hist_reference"


def render_preview(res: fmt.Resolved, n: int = 64, *, first_shard_only: bool = False, title: str | None = None,
                   small: bool = False) -> bytes:
    """PNG bytes of the preview figure."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    tiles = [t for _, t in pick_samples(res, n, first_shard_only)]
    table = load_index(res.root, res.manifest,
                       columns=["row", "fg_ratio", "pass_area", "pass_hist_reference", "pass_hist_paper"])
    sheet = contact_sheet(tiles)
    width = 6.0 if small else 10.0
    sheet_h = width * sheet.shape[0] / sheet.shape[1]
    fig = plt.figure(figsize=(width, sheet_h + (2.2 if small else 3.2)), dpi=80 if small else 100)
    gs = fig.add_gridspec(2, 2, height_ratios=[sheet_h, 2.2 if small else 3.2], hspace=0.25, wspace=0.3)
    ax = fig.add_subplot(gs[0, :])
    ax.imshow(sheet, interpolation="nearest")
    ax.set_axis_off()
    what = "accepted samples" if res.accepted is not None else "samples"
    ax.set_title(title or f"{res.view['view_id'] if res.view else res.manifest['dataset_id']}: "
                 f"{len(tiles)} {what}, mask in red", fontsize=8 if small else 10)
    ax_h = fig.add_subplot(gs[1, 0])
    ax_b = fig.add_subplot(gs[1, 1])
    if table is not None and table.num_rows:
        fg = table.column("fg_ratio").to_numpy()
        acc, label = _accepted_mask(res, table)
        bins = np.linspace(0, 1, 41)
        ax_h.hist(fg[acc], bins=bins, color="tab:green", alpha=0.7, label=f"accepted ({label}) {int(acc.sum())}")
        ax_h.hist(fg[~acc], bins=bins, color="tab:gray", alpha=0.6, label=f"rejected {int((~acc).sum())}")
        ax_h.legend(fontsize=6 if small else 8)
        names = ["area", "hist_reference", "hist_paper"]
        rates = [float(table.column(c).to_numpy(zero_copy_only=False).mean())
                 for c in ("pass_area", "pass_hist_reference", "pass_hist_paper")]
        names.append("view" if res.accepted is not None else "area & hist_ref")
        rates.append(float(acc.mean()))
        ax_b.bar(range(len(names)), rates, color=["tab:blue", "tab:orange", "tab:purple", "tab:green"])
        ax_b.set_xticks(range(len(names)), names, rotation=20, fontsize=6 if small else 8)
        ax_b.set_ylim(0, 1)
        for i, r in enumerate(rates):
            ax_b.text(i, min(r + 0.03, 0.95), f"{r:.0%}", ha="center", fontsize=6 if small else 8)
    ax_h.set_xlabel("fg ratio (after CC cleanup)", fontsize=8)
    ax_h.set_ylabel("candidates", fontsize=8)
    ax_b.set_ylabel("pass rate", fontsize=8)
    ax_b.set_title("filter pass rates (all candidates)", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None}, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
    return buf.getvalue()


def write_preview(url: str, out: str, n: int = 64, allow_remote_shards: bool = False) -> dict:
    """Render the preview of dataset/view `url` into `out` (a .png path or URL)."""
    if n <= 0:
        raise FactoryError(f"--n must be positive, got {n}")
    if not out.lower().endswith(".png"):
        raise FactoryError(f"--out {out}: the preview is a PNG; name it *.png")
    res = fmt.open_dataset(url, allow_remote_shards=allow_remote_shards)
    data = render_preview(res, n)
    atomic_write(out, data)
    return {"out": out, "bytes": len(data), "samples_shown": min(n, res.samples)}


def card_preview(root: str, manifest: dict, n: int = 16) -> bytes:
    """Small preview for the dataset card: `n` samples of the first shard (cheap)."""
    res = fmt.Resolved(root, manifest, None, None)
    return render_preview(res, n, first_shard_only=True, small=True)
