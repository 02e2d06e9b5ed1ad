"""`latent-fit sweep --tune-reg` over files: every target projected once, then tuned at every
tune_reg in one batched run; sweep.csv, the fidelity/locality plot, the image grid and the
suggested tune_reg."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import Config
from ..errors import LatentFitError
from ..generators.base import Generator
from ..images import save_png, to_uint8
from ..outputs import Report, atomic_write, check_writable, write_csv, write_folder_file
from ..report import write_report
from ..sweep import LOCALITY_FLOOR_DB, TUNE_SWEEP_COLUMNS, TuneSweepResult, check_wrs, suggest_tune_reg, tune_sweep
from ..tuning import Tuning
from .sweep import GRID_CELL, _labelled_grid, _load_targets, trade_off_figure


def tune_sweep_figure(sw: TuneSweepResult, best: int) -> np.ndarray:
    """PSNR against locality_psnr and against ||Δθ||, per tune_reg (trade_off_figure), with the
    median pivot PSNR and the locality floor marked."""
    axes_x = [("locality_psnr", "locality PSNR (dB): other images of the tuned G against the original's"),
              ("dtheta_norm", "||Δθ||  (what tune_reg penalizes)")]

    def decorate(ax, key):
        ax.axhline(np.nanmedian(sw.metrics["psnr_pivot"]), color="grey", lw=1, ls=":", label="median pivot PSNR")
        if key == "locality_psnr":
            ax.axvline(LOCALITY_FLOOR_DB, color="crimson", lw=1, ls=":", label=f"locality {LOCALITY_FLOOR_DB:g} dB")
    return trade_off_figure(sw.metrics, sw.names, sw.tune_regs, "tune_reg", best, axes_x,
                            "tune_reg sweep: fidelity against locality (labels: tune_reg)",
                            "PSNR (dB) of the tuned reconstruction", decorate)


def _grid(G: Generator, sw: TuneSweepResult, targets: torch.Tensor) -> np.ndarray:
    """A row per target: the target, its pivot, then its tuned image at every tune_reg."""
    size = min(G.resolution, GRID_CELL)

    def cells(x):
        return to_uint8(F.interpolate(x.float(), size=size, mode="area"))
    tuned = cells(sw.tuned.images).reshape(len(sw.names), len(sw.tune_regs), size, size, -1)
    tg, piv = cells(targets), cells(sw.pivot.images)
    rows = [[tg[t], piv[t], *tuned[t]] for t in range(len(sw.names))]
    return _labelled_grid(rows, ["target", "pivot"] + [f"reg {r:g}" for r in sw.tune_regs])


def tune_sweep_files(G: Generator, specs: list[str], out: Path, tune_regs: list[float], config: Config, *,
                     tuning: Tuning | None = None, class_index: int | None = None, encoder=None,
                     progress=None) -> Report:
    """Project every target image once (config; encoder: its start E(x)) and tune G around each
    pivot at every tune_reg in one batched run (tuning: the other tuning settings). Writes
    OUT/sweep.csv (TUNE_SWEEP_COLUMNS), OUT/sweep.png, OUT/grid.png and OUT/suggestion.json
    (the suggested tune_reg and why, sweep.suggest_tune_reg); the summary names it too.
    progress: as for runs.project.project_files (one batch; tuning's steps count on past config.steps)."""
    out, rep = Path(out), Report()
    regs = check_wrs(tune_regs, "tune_reg")
    check_writable(out)
    space = config.space or G.default_space
    stems, targets, _, _, c = _load_targets(G, specs, None, None, space, class_index, rep)
    if not stems:
        rep.errors = rep.errors or ["no target could be read"]
        return rep
    targets = torch.stack(targets)
    cb = progress(0, 1, stems) if progress else None
    sw = tune_sweep(G, targets, regs, stems, config=config, tuning=tuning, c=c, encoder=encoder, progress=cb)
    best, reason = suggest_tune_reg(sw)
    write_csv(out / "sweep.csv", TUNE_SWEEP_COLUMNS, sw.rows())
    save_png(tune_sweep_figure(sw, best), out / "sweep.png")
    save_png(_grid(G, sw, targets), out / "grid.png")
    suggestion = {"tune_reg": float(regs[best]), "reason": reason, "locality_floor_db": LOCALITY_FLOOR_DB}
    atomic_write(out / "suggestion.json", lambda tmp: Path(tmp).write_text(json.dumps(suggestion, indent=1)))
    write_folder_file(rep, out, "index.html", lambda: write_report(out, "sweep", note=f"suggested {reason}"))
    rep.done = stems
    rep.written = [out / n for n in ("sweep.csv", "sweep.png", "grid.png", "suggestion.json")]
    rep.summary = (f"tuned {len(stems)} target(s) x {len(regs)} tune_reg in one run of {len(stems) * len(regs)} "
                   f"samples around one pivot each; suggested {reason}")
    return rep


def check_exclusive(wrs: list[float] | None) -> float | None:
    """The pivot's w_r of a tune_reg sweep: --wr may give one value there, not a grid."""
    if wrs is not None and len(wrs) > 1:
        raise LatentFitError("--wr and --tune-reg cannot both be grids: a sweep varies one weight; give --wr "
                             "one value (the pivot's w_r) with --tune-reg")
    return None if wrs is None else wrs[0]
