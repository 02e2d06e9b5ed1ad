"""The file side of edit, direction, interpolate and sweep (what jobs.py is for project): read
latents and images, call edit.py / sweep.py, write outputs atomically, report per-input errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .edit import (PCA_SAMPLES, apply_direction, edit, interpolate, linear_boundary, mean_difference,
                   pca_directions, render)
from .errors import LatentFitError
from .generators.base import Generator
from .images import (IMAGE_SUFFIXES, atomic_write, find_files, find_images, grid, load_image, load_mask,
                     save_png, save_video, to_uint8)
from .jobs import (Report, assign_stems, check_writable, class_vector, is_complete, read_init, write_csv,
                   write_metrics, write_outputs)
from .latents import check_compatible, read_latent_file
from .sweep import COLUMNS, EDIT_COLUMNS, SweepResult, check_wrs, suggest_wr, sweep

EDIT_METRIC_COLUMNS = ["target", "wr", *EDIT_COLUMNS, "dz_norm", "steps", "seconds"]
GRID_CELL = 256   # grid.png cells are at most this many pixels


def read_latents(specs: list[str], G: Generator, space: str | None = None
                 ) -> tuple[list[str], torch.Tensor | None, str, list[str]]:
    """(stems, latents [N, *shape] or None, space, errors) of the latent files in `specs`
    (files, folders, globs) that fit G; space: the first file's unless given."""
    paths, errors = find_files(specs, {".npz"}, "latent files")
    items, dup_errors = assign_stems(paths)
    errors += dup_errors
    stems, lats = [], []
    for stem, p in items:
        try:
            data = read_latent_file(p)
            if space is None:
                space = data["space"] if data["space"] in G.spaces else G.default_space
            lats.append(check_compatible(p, data, G.name, G.latent_shape(space), space, G.sha256))
            stems.append(stem)
        except LatentFitError as e:
            errors.append(str(e))
    space = space or G.default_space
    return stems, torch.from_numpy(np.stack(lats)) if lats else None, space, errors


def load_request(path: Path, resolution: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A request image [3, R, R] and its alpha channel as a mask [1, R, R] (None when opaque).
    The alpha is recovered from two composites (on black and on white) so that it gets exactly
    the crop and resize of the colours; colours are un-premultiplied."""
    on_black = load_image(path, resolution, (0, 0, 0))
    on_white = load_image(path, resolution, (255, 255, 255))
    alpha = (1 - (on_white - on_black).mean(0, keepdim=True) / 2).clamp(0, 1)
    if bool((alpha > 0.999).all()):
        return on_black, None
    return ((on_black + 1) / alpha.clamp_min(1 / 255) - 1).clamp(-1, 1), alpha


def _stem_file(folder: Path, stem: str, suffixes: set[str]) -> Path:
    """folder/<stem>.<suffix> for one of the suffixes."""
    for p in sorted(folder.glob(f"{stem}.*")):
        if p.suffix.lower() in suffixes and p.stem == stem:
            return p
    raise LatentFitError(f"{folder}: no {stem}.* image for latent {stem}")


def _per_stem(spec: Path | None, stems: list[str], load) -> tuple[dict, list[str]]:
    """{stem: load(path)} for one file shared by all stems (its errors raise: they concern every
    input) or a folder of <stem>.<image> files (errors per stem)."""
    if spec is None:
        return {s: None for s in stems}, []
    spec = Path(spec)
    if not spec.is_dir():
        if not spec.exists():
            raise LatentFitError(f"{spec}: file not found")
        shared = load(spec)
        return {s: shared for s in stems}, []
    out, errors = {}, []
    for s in stems:
        try:
            out[s] = load(_stem_file(spec, s, IMAGE_SUFFIXES))
        except LatentFitError as e:
            errors.append(str(e))
    return out, errors


def _stack_masks(masks: list[torch.Tensor | None]) -> torch.Tensor | None:
    """[N, 1, H, W] with ones where a mask is None; None if all are."""
    given = [m for m in masks if m is not None]
    if not given:
        return None
    return torch.stack([torch.ones_like(given[0]) if m is None else m for m in masks])


def edit_files(G: Generator, latent_specs: list[str], out: Path, *, request: Path,
               mask: Path | None = None, batch_size: int = 16, classes: int | None = None, progress=None,
               **options) -> Report:
    """Masked edits of every latent file toward `request` (one image, or a folder of one
    <stem>.<image> per latent) where `mask` (one image or a folder; default: the request's alpha,
    else everywhere) is set. Writes OUT/<stem>.npz / .png / _compare.png (before | request painted
    on before | after) and OUT/metrics.csv; skips latents whose outputs are complete.
    progress: as for jobs.project_files. options: of edit.edit."""
    out = Path(out)
    check_writable(out)
    rep = Report()
    stems, lats, space, rep.errors = read_latents(latent_specs, G, options.pop("space", None))
    todo = [s for s in stems if not is_complete(out, s)]
    rep.skipped = [s for s in stems if s not in todo]
    requests, errors = _per_stem(request, todo, lambda p: load_request(p, G.resolution))
    masks, mask_errors = _per_stem(mask, todo, lambda p: load_mask(p, G.resolution))
    rep.errors += errors + mask_errors
    todo = [s for s in todo if s in requests and s in masks]
    c_vec = class_vector(G, classes, space)
    row = {s: i for i, s in enumerate(stems)}
    for ci in range(0, len(todo), batch_size):
        names = todo[ci:ci + batch_size]
        req = torch.stack([requests[s][0] for s in names])
        mk = _stack_masks([masks[s] if masks[s] is not None else requests[s][1] for s in names])
        cb = progress(ci // batch_size, -(-len(todo) // batch_size), names) if progress else None
        c = None if c_vec is None else c_vec.expand(len(names), -1)
        res = edit(G, lats[[row[s] for s in names]], req, mk, names, c=c, space=space, progress=cb, **options)
        req = req.to(res.before)
        painted = req if mk is None else res.before + (req - res.before) * mk.to(req)
        before, shown, after = to_uint8(res.before), to_uint8(painted), to_uint8(res.images)
        for i, s in enumerate(names):
            try:
                write_outputs(out, res, i, req[i], G, res.seconds / len(names), False,
                              panels=[before[i], shown[i], after[i]])
                rep.done.append(s)
            except OSError as e:
                rep.errors.append(f"{out / s}: could not write outputs ({e.strerror or e})")
    rep.metrics = write_metrics(out, EDIT_METRIC_COLUMNS)
    return rep


def read_direction(path: Path, shape: tuple[int, ...], component: int = 0) -> torch.Tensor:
    """A direction [*shape] from an .npy of shape [*shape] or [K, *shape] (its row `component`)."""
    try:
        d = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise LatentFitError(f"{path}: direction file not found") from None
    except (OSError, ValueError) as e:
        raise LatentFitError(f"{path}: not a .npy direction ({e})") from None
    if d.shape == shape:
        return torch.from_numpy(d.astype(np.float32))
    if d.shape[1:] != shape:
        raise LatentFitError(f"{path}: direction of shape {list(d.shape)}; latents of shape {list(shape)} "
                             f"need {list(shape)} or [K, {', '.join(map(str, shape))}]")
    if not 0 <= component < d.shape[0]:
        raise LatentFitError(f"{path}: --component {component} out of range, the file holds {d.shape[0]}")
    return torch.from_numpy(d[component].astype(np.float32))


def direction_edit_files(G: Generator, latent_specs: list[str], out: Path, *, direction: Path,
                         strengths: list[float], component: int = 0, space: str | None = None,
                         batch_size: int = 64) -> Report:
    """Move every latent along a direction by each strength, in one batched render. Writes
    OUT/<stem>_s<strength>.png for each strength and OUT/<stem>_strip.png."""
    out = Path(out)
    check_writable(out)
    rep = Report()
    stems, lats, space, rep.errors = read_latents(latent_specs, G, space)
    if lats is None:
        return rep
    d = read_direction(Path(direction), G.latent_shape(space), component)
    moved = apply_direction(lats, d, strengths)
    images = to_uint8(render(G, moved.flatten(0, 1), space, batch_size=batch_size))
    images = images.reshape(len(stems), len(strengths), *images.shape[1:])
    for s, row in zip(stems, images):
        try:
            for strength, im in zip(strengths, row):
                save_png(im, out / f"{s}_s{strength:+g}.png")
            save_png(grid([list(row)]), out / f"{s}_strip.png")
            rep.done.append(s)
        except OSError as e:
            rep.errors.append(f"{out / s}: could not write outputs ({e.strerror or e})")
    return rep


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, array)
    atomic_write(path, write)


def direction_file(G: Generator, out: Path, *, positive: list[str] = (), negative: list[str] = (),
                   method: str = "mean", pca: int | None = None, samples: int = PCA_SAMPLES,
                   space: str | None = None, seed: int = 0) -> tuple[list[str], str]:
    """Find a direction and write it to `out` (.npy): from latent files labelled positive and
    negative (method mean: normalized difference of means; boundary: linear classifier normal),
    or the first `pca` principal directions [K, *shape]. Returns (per-input errors, summary)."""
    out = Path(out)
    if (pca is None) == (not positive and not negative):
        raise LatentFitError("give either --positive and --negative latents or --pca K")
    if pca is not None:
        space = G.check_space(space or G.default_space)
        dirs, std = pca_directions(G, pca, space=space, n=samples, seed=seed)
        _save_npy(out, dirs.cpu().numpy())
        return [], (f"{pca} principal directions in {space} ({samples} samples), prior std along each: "
                    + ", ".join(f"{v:.3g}" for v in std.tolist()))
    pos_stems, pos, space, errors = read_latents(list(positive), G, space)
    neg_stems, neg, _, neg_errors = read_latents(list(negative), G, space)
    errors += neg_errors
    if pos is None or neg is None:
        raise LatentFitError(f"no readable {'positive' if pos is None else 'negative'} latents: "
                             + ("; ".join(errors) or "none given"))
    if method == "mean":
        d = mean_difference(pos, neg)
    elif method == "boundary":
        d = linear_boundary(pos, neg)
    else:
        raise LatentFitError(f"--method {method!r}: choose mean or boundary")
    _save_npy(out, d.numpy())
    return errors, f"{method} direction in {space} from {len(pos_stems)} positive and {len(neg_stems)} negative latents"


def interpolate_files(G: Generator, latent_specs: list[str], out: Path, *, frames: int,
                      modes: tuple[str, ...] = ("linear", "spherical"), fps: int = 12,
                      batch_size: int = 64) -> tuple[list[Path], list[str]]:
    """Interpolate along the path through the latent files (in order), every mode and segment in
    one batched render. Writes OUT/<mode>.png (a row per segment) and OUT/<mode>.mp4 (or .gif).
    Returns (paths written, per-input errors)."""
    out = Path(out)
    check_writable(out)
    stems, lats, space, errors = read_latents(latent_specs, G)
    if lats is None or len(stems) < 2:
        raise LatentFitError(f"interpolate needs two or more readable latent files, got {len(stems)}"
                             + (f" ({'; '.join(errors)})" if errors else ""))
    path = torch.stack([interpolate(lats[:-1], lats[1:], frames, m) for m in modes])   # [M, P, F, *s]
    images = to_uint8(render(G, path.flatten(0, 2), space, batch_size=batch_size))
    images = images.reshape(len(modes), len(stems) - 1, frames, *images.shape[1:])
    written = []
    for mode, segs in zip(modes, images):
        save_png(grid([list(seg) for seg in segs]), out / f"{mode}.png")
        tour = np.concatenate([segs[0]] + [seg[1:] for seg in segs[1:]])   # shared ends once
        written += [out / f"{mode}.png", save_video(tour, out / mode, fps=fps)]
    return written, errors


# --- sweeps ------------------------------------------------------------------------------------

def _labelled_grid(rows: list[list[np.ndarray]], labels: list[str], pad: int = 2) -> np.ndarray:
    """grid() with a header row of column labels."""
    from PIL import Image, ImageDraw
    body = grid(rows, pad)
    w = rows[0][0].shape[1]
    head = Image.new("RGB", (body.shape[1], 14), (255, 255, 255))
    draw = ImageDraw.Draw(head)
    for j, text in enumerate(labels):
        draw.text((j * (w + pad) + 2, 1), text, fill=(0, 0, 0))
    return np.concatenate([np.asarray(head), body])


def sweep_figure(sw: SweepResult, best: int) -> np.ndarray:
    """PSNR against each realism measure: a thin curve per target, the median in black with a
    labelled point per w_r, the suggested w_r starred. [H, W, 3] uint8."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    axes_x = [("dz_norm", "||Δz||  (what w_r penalizes)"), ("prior_nll", "prior NLL (nats)"),
              ("realism", "| ||u|| − √d |  (0 = prior's typical radius)")]
    fig = Figure(figsize=(15, 4.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    y = sw.metrics["psnr"]
    for ax, (key, label) in zip(fig.subplots(1, 3), axes_x):
        x = sw.metrics[key]
        for t, name in enumerate(sw.names):
            ax.plot(x[t], y[t], "o-", lw=1, ms=3, alpha=0.6, label=name if len(sw.names) <= 10 else None)
        mx, my = np.nanmedian(x, 0), np.nanmedian(y, 0)
        ax.plot(mx, my, "k--", lw=1.5, marker="s", ms=4, label="median")
        for j, wr in enumerate(sw.wrs):
            ax.annotate(f"{wr:g}", (mx[j], my[j]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.plot(mx[best], my[best], "*", ms=16, color="crimson", label=f"suggested w_r={sw.wrs[best]:g}")
        ax.set_xlabel(label)
        ax.set_ylabel("PSNR (dB)")
        ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle("w_r sweep: fidelity against realism (labels: w_r)")
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def sweep_files(G: Generator, specs: list[str], out: Path, wrs: list[float], *, init: Path | None = None,
                mask: Path | None = None, classes: int | None = None, progress=None,
                background=(255, 255, 255), **options) -> tuple[SweepResult | None, list[str], str]:
    """Sweep w_r over every target image (with init: an edit sweep from those latents, the
    targets' alpha or `mask` limiting the request) in one batched run. Writes OUT/sweep.csv,
    OUT/sweep.png and OUT/grid.png. progress: as for jobs.project_files (one batch).
    Returns (sweep or None, per-input errors, suggestion)."""
    out = Path(out)
    wrs = check_wrs(wrs)
    check_writable(out)
    paths, errors = find_images(specs)
    items, dup_errors = assign_stems(paths)
    errors += dup_errors
    space = options.get("space") or G.default_space
    inits = None
    if init:
        inits, init_errors = read_init(Path(init), G, space, items)
        errors += init_errors
        items = [(s, p) for s, p in items if s in inits]
    shared_mask = load_mask(mask, G.resolution) if mask else None
    stems, targets, masks = [], [], []
    for s, p in items:
        try:
            rgb, alpha = load_request(p, G.resolution) if init else (load_image(p, G.resolution, background), None)
        except LatentFitError as e:
            errors.append(str(e))
            continue
        stems.append(s)
        targets.append(rgb)
        masks.append(shared_mask if shared_mask is not None else alpha)
    if not stems:
        return None, errors, ""
    mk = _stack_masks(masks)
    init_t = torch.from_numpy(np.stack([inits[s] for s in stems])) if inits else None
    cb = progress(0, 1, stems) if progress else None
    c_vec = class_vector(G, classes, space)
    c = None if c_vec is None else c_vec.expand(len(stems), -1)
    sw = sweep(G, torch.stack(targets), wrs, stems, init=init_t, mask=mk, c=c, progress=cb, **options)
    best, reason = suggest_wr(sw)
    extra = [k for k in EDIT_COLUMNS if k in sw.metrics]
    write_csv(out / "sweep.csv", COLUMNS + extra, sw.rows())
    save_png(sweep_figure(sw, best), out / "sweep.png")
    size = min(G.resolution, GRID_CELL)
    imgs = to_uint8(F.interpolate(sw.result.images, size=size, mode="area"))
    imgs = imgs.reshape(len(stems), len(sw.wrs), size, size, 3)
    tg = to_uint8(F.interpolate(torch.stack(targets), size=size, mode="area"))
    rows = [[tg[t], *imgs[t]] for t in range(len(stems))]
    save_png(_labelled_grid(rows, ["target"] + [f"wr {w:g}" for w in sw.wrs]), out / "grid.png")
    return sw, errors, reason
