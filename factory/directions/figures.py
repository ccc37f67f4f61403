"""The paper's figures of a scoring run: Figure 1 (loss vs operator distance of every candidate) and
Figure 2 (images, shifted images, the operators' restoration and the operators mask)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from factory.directions.common import seed_of
from factory.fsio import atomic_write
from factory.masks import apply_operators, operator_mask


def _savefig(fig, path: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(Path(path), buf.getvalue())


def figure1(path: Path, rows: list[dict], keep_best: float, loss_kind: str = "relative") -> None:
    """Paper Figure 1: restoration loss vs operator distance; the kept fraction, the selected one, names."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    loss = np.array([r["loss_relative" if loss_kind == "relative" else "loss"] for r in rows])
    dist = np.array([r["distance"] for r in rows])
    kept = np.array([r["kept"] for r in rows])
    sel = next(r["index"] for r in rows if r["selected"])
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(loss[~kept], dist[~kept], s=14, c="0.7", label="not kept (high loss)")
    ax.scatter(loss[kept], dist[kept], s=14, c="tab:blue", label=f"kept (best {keep_best:.0%} by loss)")
    ax.scatter([loss[sel]], [dist[sel]], s=90, facecolors="none", edgecolors="red", linewidths=2, label="selected")
    for r, lx in zip(rows, loss):
        if r["name"]:
            ax.annotate(r["name"], (lx, r["distance"]), fontsize=8, xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel(f"{loss_kind} restoration loss (held out)")
    ax.set_ylabel("operator distance  mean ||A1 c - A2 c||")
    ax.set_title(f"{len(rows)} candidate directions")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    _savefig(fig, path)


@torch.no_grad()
def figure2(path: Path, gen, h: torch.Tensor, ops: torch.Tensor, *, scale: float, n: int = 4, seed: int = 0) -> None:
    """Paper Figure 2: per latent, G(z), G(z + s h), the operators' restoration of it, and the operators mask."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    g = torch.Generator().manual_seed(seed_of(seed, 4))
    z = torch.randn(n, h.shape[0], generator=g).to(gen.device)
    x, y = gen(z).float(), gen(z + scale * h[None]).float()
    pred = apply_operators(ops, x)  # [2,B,3,H,W]
    err = (pred - y[None]).square().sum(dim=2)
    best = err.argmin(dim=0)  # [B,H,W]
    approx = torch.where(best[:, None].bool(), pred[1], pred[0])
    mask = operator_mask(x, y, ops)
    to_img = lambda t: ((t.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy()  # noqa: E731
    cols = ["G(z)", f"G(z + {scale:g} h)", "operators' restoration", "operators mask"]
    fig, axes = plt.subplots(n, 4, figsize=(8, 2 * n), squeeze=False)
    for i in range(n):
        ims = [to_img(x[i]), to_img(y[i]), to_img(approx[i]), mask[i].cpu().numpy()]
        for j, im in enumerate(ims):
            ax = axes[i, j]
            ax.imshow(im, cmap="gray" if j == 3 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=9)
    fig.tight_layout()
    _savefig(fig, path)
