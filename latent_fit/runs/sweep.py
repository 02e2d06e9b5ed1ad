"""`latent-fit sweep` over files: every target at every w_r in one batched run, then sweep.csv,
the fidelity/realism plot and the image grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import Config
from ..errors import LatentFitError
from ..generators.base import Generator
from ..images import (assign_stems, find_images, grid, load_image, load_mask, load_request, save_png,
                      stack_masks, to_uint8)
from ..latents import read_init
from ..outputs import Report, check_writable, write_csv, write_folder_file
from ..report import write_report
from ..sweep import COLUMNS, EDIT_COLUMNS, SweepResult, check_wrs, suggest_wr
from .tune import init_tuned, sweep_by_weights, tuned_note

GRID_CELL = 256   # grid.png cells are at most this many pixels


def _labelled_grid(rows: list[list[np.ndarray]], labels: list[str], pad: int = 2) -> np.ndarray:
    """grid() with a header row of column labels (black on white, so RGB or gray alike)."""
    from PIL import Image, ImageDraw
    body = grid(rows, pad)
    w = rows[0][0].shape[1]
    head = Image.new("RGB", (body.shape[1], 14), (255, 255, 255))
    draw = ImageDraw.Draw(head)
    for j, text in enumerate(labels):
        draw.text((j * (w + pad) + 2, 1), text, fill=(0, 0, 0))
    return np.concatenate([np.asarray(head)[..., :body.shape[2]], body])   # gray: one of R, G, B


def trade_off_figure(metrics: dict[str, np.ndarray], names: list[str], values: np.ndarray, weight: str,
                     best: int, axes_x: list[tuple[str, str]], title: str, ylabel: str = "PSNR (dB)",
                     decorate=None) -> np.ndarray:
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
    axes_x = [("dz_norm", "||Δz||  (what w_r penalizes)"), ("prior_nll", "prior NLL (nats)"),
              ("realism", "| ||u|| − √d |  (0 = prior's typical radius)")]
    return trade_off_figure(sw.metrics, sw.names, sw.wrs, "w_r", best, axes_x,
                            f"w_r sweep: fidelity against realism (labels: w_r, {sw.result.config['wr_units']} units)")


def _load_targets(G: Generator, specs: list[str], init: Path | None, mask: Path | None, space: str,
                  class_index: int | None, rep: Report):
    """(stems, targets [T, C, H, W], masks [T, 1, H, W] or None, starts [T, *shape] or None,
    labels [T, c_dim] or None: class_index, else each init file's class)."""
    paths, rep.errors = find_images(specs)
    items, dup_errors = assign_stems(paths)
    rep.errors += dup_errors
    inits, classes, init_errors = read_init(Path(init), G, space, [s for s, _ in items], class_index) if init \
        else (None, {}, [])
    rep.errors += init_errors
    if inits is not None:
        items = [(s, p) for s, p in items if s in inits]
    shared_mask = load_mask(mask, G.resolution) if mask else None
    stems, targets, masks = [], [], []
    for s, p in items:
        try:
            rgb, alpha = load_request(p, G.resolution, G.img_channels) if init else \
                (load_image(p, G.resolution, channels=G.img_channels), None)
        except LatentFitError as e:
            rep.errors.append(str(e))
            continue
        stems.append(s)
        targets.append(rgb)
        masks.append(shared_mask if shared_mask is not None else alpha)
    starts = torch.from_numpy(np.stack([inits[s] for s in stems])) if inits and stems else None
    labels = G.class_labels([classes.get(s, class_index) for s in stems], space)
    return stems, targets, stack_masks(masks), starts, labels


def sweep_files(G: Generator, specs: list[str], out: Path, wrs: list[float] | None, config: Config | None = None, *,
                init: Path | None = None, mask: Path | None = None, class_index: int | None = None,
                encoder=None, progress=None, **changes) -> Report:
    """Sweep w_r over every target image (with init: an edit sweep from those latents, the
    targets' alpha or `mask` limiting the request; a conditional generator's class: class_index,
    else each init file's own) in one batched run. Writes OUT/sweep.csv,
    OUT/sweep.png and OUT/grid.png; the summary names the suggested w_r. progress: as for
    runs.project.project_files (one batch per weights). encoder: every w_r of a target starts from E(x)
    (without init). Init latents made by `project --tune` are edited through their own tuned
    weights (runs.tune). config: see sweep.sweep; changes: Config fields."""
    out, rep = Path(out), Report()
    wrs = None if wrs is None else check_wrs(wrs)   # None: the default grid of the units
    check_writable(out)
    space = changes.get("space") or (config.space if config else None) or G.default_space
    stems, targets, mk, starts, c = _load_targets(G, specs, init, mask, space, class_index, rep)
    if not stems:
        rep.errors = rep.errors or ["no target could be read"]
        return rep
    tuned, bad = init_tuned(init, stems) if init else ({}, {})
    rep.errors += list(bad.values())
    sw = sweep_by_weights(G, stems, torch.stack(targets), wrs, {s: p for s, p in tuned.items() if s not in bad},
                          rep.errors, init=starts, mask=mk, c=c, progress=progress, config=config, encoder=encoder,
                          **changes) if len(bad) < len(stems) else None
    if sw is None:
        return rep
    targets = [targets[stems.index(s)] for s in sw.names]
    best, reason = suggest_wr(sw)
    write_csv(out / "sweep.csv", COLUMNS + [k for k in EDIT_COLUMNS if k in sw.metrics], sw.rows())
    save_png(sweep_figure(sw, best), out / "sweep.png")
    save_png(_sweep_grid(G, sw, targets), out / "grid.png")
    write_folder_file(rep, out, "index.html", lambda: write_report(out, "sweep", note=f"suggested {reason}"))
    rep.done, rep.written = sw.names, [out / "sweep.csv", out / "sweep.png", out / "grid.png"]
    rep.summary = (f"swept {len(sw.names)} target(s) x {len(sw.wrs)} w_r in one run of "
                   f"{len(sw.names) * len(sw.wrs)} samples; suggested {reason}"
                   f"{tuned_note(len(set(tuned) & set(sw.names)))}")
    return rep


def _sweep_grid(G: Generator, sw: SweepResult, targets: list[torch.Tensor]) -> np.ndarray:
    """A row per target: the target, then its image at every w_r."""
    size = min(G.resolution, GRID_CELL)
    imgs = to_uint8(F.interpolate(sw.result.images, size=size, mode="area"))
    imgs = imgs.reshape(len(sw.names), len(sw.wrs), *imgs.shape[1:])
    tg = to_uint8(F.interpolate(torch.stack(targets), size=size, mode="area"))
    rows = [[tg[t], *imgs[t]] for t in range(len(sw.names))]
    return _labelled_grid(rows, ["target"] + [f"wr {w:g}" for w in sw.wrs])
