"""The pictures of a sweep: the fidelity trade-off figure and the grids of images (uint8 arrays)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .images import grid, to_uint8
from .sweep import LOCALITY_FLOOR_DB, SweepResult, TuneSweepResult

GRID_CELL = 256  # grid.png cells are at most this many pixels


def labelled_grid(rows: list[list[np.ndarray]], labels: list[str], pad: int = 2) -> np.ndarray:
    """grid() with a header row of column labels (black on white, so RGB or gray alike)."""
    from PIL import Image, ImageDraw

    body = grid(rows, pad)
    w = rows[0][0].shape[1]
    head = Image.new("RGB", (body.shape[1], 14), (255, 255, 255))
    draw = ImageDraw.Draw(head)
    for j, text in enumerate(labels):
        draw.text((j * (w + pad) + 2, 1), text, fill=(0, 0, 0))
    return np.concatenate([np.asarray(head)[..., : body.shape[2]], body])  # gray: one of R, G, B


def trade_off_figure(
    metrics: dict[str, np.ndarray],
    names: list[str],
    values: np.ndarray,
    weight: str,
    best: int,
    axes_x: list[tuple[str, str]],
    title: str,
    ylabel: str = "PSNR (dB)",
    decorate=None,
) -> np.ndarray:
    """PSNR ([T, W] metrics["psnr"]) against each (metric, axis label) of axes_x: a thin curve per
    target, the median in black with a point per value of the swept `weight` labelled with it,
    the suggested one starred. decorate(ax, metric): extra lines of a panel. [H, W, 3] uint8."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * len(axes_x), 4.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    y = metrics["psnr"]
    for ax, (key, label) in zip(np.atleast_1d(fig.subplots(1, len(axes_x))), axes_x):
        x = metrics[key]
        for t, name in enumerate(names):
            ax.plot(x[t], y[t], "o-", lw=1, ms=3, alpha=0.6, label=name if len(names) <= 10 else None)
        mx, my = np.nanmedian(x, 0), np.nanmedian(y, 0)
        ax.plot(mx, my, "k--", lw=1.5, marker="s", ms=4, label="median")
        for j, v in enumerate(values):
            ax.annotate(f"{v:g}", (mx[j], my[j]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.plot(mx[best], my[best], "*", ms=16, color="crimson", label=f"suggested {weight}={values[best]:g}")
        if decorate is not None:
            decorate(ax, key)
        ax.set_xlabel(label)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def sweep_figure(sw: SweepResult, best: int) -> np.ndarray:
    """PSNR against each realism measure, per w_r (trade_off_figure)."""
    axes_x = [
        ("dz_norm", "||Δz||  (what w_r penalizes)"),
        ("prior_nll", "prior NLL (nats)"),
        ("realism", "| ||u|| − √d |  (0 = prior's typical radius)"),
    ]
    if "id_similarity" in sw.metrics:
        axes_x.append(("id_similarity", "identity similarity to the target (cosine of face descriptors)"))
    return trade_off_figure(
        sw.metrics,
        sw.names,
        sw.wrs,
        "w_r",
        best,
        axes_x,
        f"w_r sweep: fidelity against realism (labels: w_r, {sw.result.config['wr_units']} units)",
    )


def tune_sweep_figure(sw: TuneSweepResult, best: int) -> np.ndarray:
    """PSNR against locality_psnr and against ||Δθ||, per tune_reg (trade_off_figure), with the
    median pivot PSNR and the locality floor marked."""
    axes_x = [
        ("locality_psnr", "locality PSNR (dB): other images of the tuned G against the original's"),
        ("dtheta_norm", "||Δθ||  (what tune_reg penalizes)"),
    ]

    def decorate(ax, key):
        ax.axhline(np.nanmedian(sw.metrics["psnr_pivot"]), color="grey", lw=1, ls=":", label="median pivot PSNR")
        if key == "locality_psnr":
            ax.axvline(LOCALITY_FLOOR_DB, color="crimson", lw=1, ls=":", label=f"locality {LOCALITY_FLOOR_DB:g} dB")

    return trade_off_figure(
        sw.metrics,
        sw.names,
        sw.tune_regs,
        "tune_reg",
        best,
        axes_x,
        "tune_reg sweep: fidelity against locality (labels: tune_reg)",
        "PSNR (dB) of the tuned reconstruction",
        decorate,
    )


def sweep_grid(resolution: int, sw: SweepResult, targets: list[torch.Tensor]) -> np.ndarray:
    """A row per target: the target, then its image at every w_r."""
    size = min(resolution, GRID_CELL)
    imgs = to_uint8(F.interpolate(sw.result.images, size=size, mode="area"))
    imgs = imgs.reshape(len(sw.names), len(sw.wrs), *imgs.shape[1:])
    tg = to_uint8(F.interpolate(torch.stack(targets), size=size, mode="area"))
    rows = [[tg[t], *imgs[t]] for t in range(len(sw.names))]
    return labelled_grid(rows, ["target"] + [f"wr {w:g}" for w in sw.wrs])


def tune_sweep_grid(resolution: int, sw: TuneSweepResult, targets: torch.Tensor) -> np.ndarray:
    """A row per target: the target, its pivot, then its tuned image at every tune_reg."""
    size = min(resolution, GRID_CELL)

    def cells(x):
        return to_uint8(F.interpolate(x.float(), size=size, mode="area"))

    tuned = cells(sw.tuned.images).reshape(len(sw.names), len(sw.tune_regs), size, size, -1)
    tg, piv = cells(targets), cells(sw.pivot.images)
    rows = [[tg[t], piv[t], *tuned[t]] for t in range(len(sw.names))]
    return labelled_grid(rows, ["target", "pivot"] + [f"reg {r:g}" for r in sw.tune_regs])
