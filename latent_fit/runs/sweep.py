"""`latent-fit sweep` over files: every target at every w_r (or, with --tune-reg, tuned at every
tune_reg around one pivot) in one batched run, then sweep.csv, the trade-off plot and the grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..config import Config, Tuning, check_weights
from ..errors import LatentFitError
from ..figures import sweep_figure, sweep_grid, tune_sweep_figure, tune_sweep_grid
from ..files import assign_stems, atomic_write
from ..generators.base import Generator
from ..images import find_images, load_mask, load_request, save_png, stack_masks
from ..outputs import OutputFolder, Report, Target, by_weights, read_starts, target_noise, tuned_note, write_csv
from ..photos import Alignment, Crops, paste_results
from ..report import write_report
from ..sweep import (
    COLUMNS,
    EDIT_COLUMNS,
    FACE_COLUMNS,
    LOCALITY_FLOOR_DB,
    TUNE_RANK_COLUMNS,
    TUNE_SWEEP_COLUMNS,
    SweepResult,
    concat_sweeps,
    rank_rows,
    suggest_tune_rank,
    suggest_tune_reg,
    suggest_wr,
    sweep,
    tune_sweep,
)
from ..tuning import resolved


def _load_targets(
    G: Generator,
    specs: list[str],
    init: Path | None,
    mask: Path | None,
    space: str,
    class_index: int | None,
    rep: Report,
    alignment: Alignment,
):
    """(stems, targets [T, C, H, W], masks [T, 1, H, W] or None, starts: stem -> Target (with
    init) or None, labels [T, c_dim] or None: class_index, else each init file's class). Without
    init, photos become one target per face (alignment.cut)."""
    paths, rep.errors = find_images(specs)
    items, dup_errors = assign_stems(paths)
    rep.errors += dup_errors
    items, links = (items, {}) if init else alignment.cut(items, rep.errors, rep.notes)
    crops = Crops(links, G.resolution, G.img_channels)
    starts, init_errors = read_starts(Path(init), G, space, [s for s, _ in items], class_index) if init else (None, [])
    rep.errors += init_errors
    if starts is not None:
        items = [(s, p) for s, p in items if s in starts]
    shared_mask = load_mask(mask, G.resolution) if mask else None
    stems, targets, masks = [], [], []
    for s, p in items:
        try:
            rgb, alpha = load_request(p, G.resolution, G.img_channels) if init else (crops.load(s, p), None)
        except LatentFitError as e:
            rep.errors.append(str(e))
            continue
        stems.append(s)
        targets.append(rgb)
        masks.append(shared_mask if shared_mask is not None else alpha)
    labels = G.class_labels([starts[s].class_index if starts else class_index for s in stems], space)
    return stems, targets, stack_masks(masks), starts, labels


def _open(
    G: Generator,
    specs: list[str],
    out: Path,
    init,
    mask,
    class_index,
    config: Config | None,
    changes: dict,
    photos: dict,
) -> tuple[OutputFolder, Report, tuple, Alignment]:
    """The output folder (checked writable), the Report, _load_targets' tuple in the space of the
    run (one error line when no target could be read) and the run's Alignment (photos: its
    align, template and max_faces)."""
    folder, rep = OutputFolder(out).check_writable(), Report()
    alignment, note = Alignment.of(G, **photos)
    rep.notes += [note] if note else []
    space = changes.get("space") or (config.space if config else None) or G.default_space
    loaded = _load_targets(G, specs, init, mask, space, class_index, rep, alignment)
    if not loaded[0]:
        rep.errors = rep.errors or ["no target could be read"]
    return folder, rep, loaded, alignment


def _sweep_by_weights(
    G: Generator,
    stems: list[str],
    targets: torch.Tensor,
    wrs,
    inits: dict[str, Target] | None,
    errors: list[str],
    *,
    mask=None,
    c=None,
    progress=None,
    **kwargs,
) -> SweepResult | None:
    """sweep.sweep of every target (from its start, with init), through the weights of its start
    (one batched sweep per weights: G's, or a tuned file's; and with its noise maps; mask, c: per
    target rows or None),
    merged in the order of `stems`; None when no weights fit G."""
    if inits is None:
        return sweep(
            G, targets, wrs, stems, mask=mask, c=c, progress=progress(0, 1, stems) if progress else None, **kwargs
        )
    row, parts = {s: i for i, s in enumerate(stems)}, []
    for k, n, Gk, chunk in by_weights(G, [inits[s] for s in stems], max(1, len(stems)), errors):
        idx = [row[t.stem] for t in chunk]

        def pick(x):
            return None if x is None else x[idx]

        names, noise = [t.stem for t in chunk], target_noise(Gk, chunk)
        parts.append(
            sweep(
                Gk,
                targets[idx],
                wrs,
                names,
                init=torch.from_numpy(np.stack([t.latent for t in chunk])),
                noise=None if noise is None else [torch.from_numpy(m) for m in noise],
                mask=pick(mask),
                c=pick(c),
                progress=progress(k, n, names) if progress else None,
                **kwargs,
            )
        )
    done = {s for p in parts for s in p.names}
    return concat_sweeps(parts, [s for s in stems if s in done]) if parts else None


def sweep_files(
    G: Generator,
    specs: list[str],
    out: Path,
    wrs: list[float] | None,
    config: Config | None = None,
    *,
    init: Path | None = None,
    mask: Path | None = None,
    class_index: int | None = None,
    encoder=None,
    align: str = "auto",
    template: Path | None = None,
    max_faces: int | None = None,
    progress=None,
    **changes,
) -> Report:
    """Sweep w_r over every target image (with init: an edit sweep from those latents, the
    targets' alpha or `mask` limiting the request; a conditional generator's class: class_index,
    else each init file's own) in one batched run. Writes OUT/sweep.csv, OUT/sweep.png and
    OUT/grid.png; the summary names the suggested w_r. progress: as for
    runs.project.project_files (one batch per weights). encoder: every w_r of a target starts from
    E(x) (without init). Init latents made by `project --tune` are edited through their own tuned
    weights. align, template, max_faces: photos are swept one target per face (photos.Alignment.of;
    with a face template the rows get id_similarity, and an init latent cut from a photo gives
    OUT/<stem>_photo.png, the photo with its result at the suggested w_r pasted back). config: see
    sweep.sweep; changes: Config fields."""
    wrs = None if wrs is None else check_weights(wrs)  # None: the default grid of the units
    photos = dict(align=align, template=template, max_faces=max_faces)
    folder, rep, (stems, targets, mk, starts, c), alignment = _open(
        G, specs, out, init, mask, class_index, config, changes, photos
    )
    if not stems:
        return rep
    sw = _sweep_by_weights(
        G,
        stems,
        torch.stack(targets),
        wrs,
        starts,
        rep.errors,
        mask=mk,
        c=c,
        progress=progress,
        config=config,
        encoder=encoder,
        **changes,
    )
    if sw is None:
        return rep
    reason = _write_sweep(G, folder, rep, sw, [targets[stems.index(s)] for s in sw.names], starts, alignment)
    rep.summary = (
        f"swept {len(sw.names)} target(s) x {len(sw.wrs)} w_r in one run of "
        f"{len(sw.names) * len(sw.wrs)} samples; suggested {reason}"
        f"{tuned_note(list((starts or {}).values()), sw.names)}"
    )
    return rep


def _write_sweep(G, folder: OutputFolder, rep: Report, sw: SweepResult, targets: list, starts, alignment) -> str:
    """sweep.csv (with id_similarity when the generator has a face template), sweep.png, grid.png,
    index.html and, for init latents cut from photos, each photo with the result at the suggested
    w_r pasted back; the suggestion's reason."""
    ids = alignment.id_similarity(torch.stack(targets).repeat_interleave(len(sw.wrs), 0), sw.result.images)
    sw.metrics |= {} if ids is None else {"id_similarity": ids.reshape(len(sw.names), -1)}
    best, reason = suggest_wr(sw)
    extra = [k for k in EDIT_COLUMNS + FACE_COLUMNS if k in sw.metrics]
    write_csv(folder.path / "sweep.csv", COLUMNS + extra, sw.rows())
    save_png(sweep_figure(sw, best), folder.path / "sweep.png")
    save_png(sweep_grid(G.resolution, sw, targets), folder.path / "grid.png")
    folder.write_file(rep, "index.html", lambda: write_report(folder.path, "sweep", note=f"suggested {reason}"))
    rep.done, rep.written = sw.names, [folder.path / n for n in ("sweep.csv", "sweep.png", "grid.png")]
    if starts:
        links = {s: starts[s].photo for s in sw.names if starts[s].photo is not None}
        images = sw.result.images.reshape(len(sw.names), len(sw.wrs), *sw.result.images.shape[1:])[:, best]
        rep.written += paste_results(folder, links, dict(zip(sw.names, images)), rep.notes)
    return reason


def tune_sweep_files(
    G: Generator,
    specs: list[str],
    out: Path,
    tune_regs: list[float],
    config: Config | None = None,
    *,
    tuning: Tuning | None = None,
    class_index: int | None = None,
    encoder=None,
    align: str = "auto",
    template: Path | None = None,
    max_faces: int | None = None,
    progress=None,
    tune_ranks: list | None = None,
    **changes,
) -> Report:
    """Project every target image once (config; encoder: its start E(x)) and tune G around each
    pivot at every tune_reg in one batched run per tune_rank (tune_ranks, default tuning's one;
    tuning: the other tuning settings). Writes OUT/ranks.csv (TUNE_RANK_COLUMNS: fidelity,
    locality, file size and time per rank and tune_reg), and for the suggested rank
    (sweep.suggest_tune_rank) OUT/sweep.csv (TUNE_SWEEP_COLUMNS), OUT/sweep.png, OUT/grid.png and
    OUT/suggestion.json (the suggested tune_reg, tune_rank and why, sweep.suggest_tune_reg); the
    summary names them too.
    progress: as for runs.project.project_files (one batch; tuning's steps count on past config.steps).
    align, template, max_faces: as for sweep_files. config, changes: as for sweep.tune_sweep."""
    regs = check_weights(tune_regs, "tune_reg")
    photos = dict(align=align, template=template, max_faces=max_faces)
    folder, rep, (stems, targets, _, _, c), _ = _open(G, specs, out, None, None, class_index, config, changes, photos)
    if not stems:
        return rep
    targets = torch.stack(targets)
    cb = progress(0, 1, stems) if progress else None
    tuning = tuning or Tuning()
    sweeps = []
    for rank in tune_ranks or [resolved(G, tuning).tune_rank]:  # each rank's defaults: tune_sweep's
        pivot = sweeps[0].pivot if sweeps else None
        t = tuning.replace(tune_rank=rank)
        kw = dict(config=config, tuning=t, c=c, encoder=encoder, progress=cb, pivot=pivot)
        sweeps.append(tune_sweep(G, targets, regs, stems, **kw, **changes))
    pick, rank_reason = suggest_tune_rank(sweeps)
    sw = sweeps[pick]
    best, reason = suggest_tune_reg(sw)
    write_csv(folder.path / "ranks.csv", TUNE_RANK_COLUMNS, rank_rows(sweeps))
    write_csv(folder.path / "sweep.csv", TUNE_SWEEP_COLUMNS, sw.rows())
    save_png(tune_sweep_figure(sw, best), folder.path / "sweep.png")
    save_png(tune_sweep_grid(G.resolution, sw, targets), folder.path / "grid.png")
    suggestion = {"tune_reg": float(regs[best]), "reason": reason, "locality_floor_db": LOCALITY_FLOOR_DB}
    suggestion |= {"tune_rank": sw.tuned.settings["tune_rank"], "rank_reason": rank_reason}
    atomic_write(folder.path / "suggestion.json", lambda tmp: Path(tmp).write_text(json.dumps(suggestion, indent=1)))
    folder.write_file(rep, "index.html", lambda: write_report(folder.path, "sweep", note=f"suggested {reason}"))
    rep.done = stems
    rep.written = [folder.path / n for n in ("sweep.csv", "ranks.csv", "sweep.png", "grid.png", "suggestion.json")]
    rep.summary = (
        f"tuned {len(stems)} target(s) x {len(regs)} tune_reg in one run of {len(stems) * len(regs)} "
        f"samples around one pivot each; suggested {reason}"
    )
    if len(sweeps) > 1:
        rep.summary += f"; {len(sweeps)} tune_rank: suggested {rank_reason}"
    return rep
