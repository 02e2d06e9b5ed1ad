"""`latent-fit edit`, `direction` and `interpolate` over files: read latents and images, call
edit.py, write outputs atomically, report per-input errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from ..config import EDIT, Config
from ..edit import (PCA_SAMPLES, apply_direction, edit, interpolate, linear_boundary, mean_difference,
                    pca_directions)
from ..errors import ArgumentError, LatentFitError
from ..fields import regular_file
from ..generators.base import Generator
from ..images import grid, load_mask, load_request, per_stem, save_png, save_video, stack_masks, stem_file, to_uint8
from ..latents import read_latents
from ..outputs import (Report, atomic_write, check_writable, input_sha256, plan, settings_record, write_folder_file,
                       write_metrics, write_target)
from ..report import write_report
from ..sweep import EDIT_COLUMNS
from .project import write_outputs
from .tune import (copy_tuned, generator_for, path_deltas, render_each, render_path, tuned_beside, tuned_note,
                   weight_chunks)

EDIT_METRIC_COLUMNS = ["target", "wr", "wr_units", "wr_factor", "wr_effective", *EDIT_COLUMNS, "dz_norm",
                       "jacobian_norm", "steps", "seconds"]


def edit_files(G: Generator, latent_specs: list[str], out: Path, config: Config = EDIT, *, request: Path,
               mask: Path | None = None, batch_size: int = 16, class_index: int | None = None,
               progress=None, **changes) -> Report:
    """Masked edits of every latent file toward `request` (one image, or a folder of one
    <stem>.<image> per latent) where `mask` (one image or a folder; default: the request's alpha,
    else everywhere) is set. Writes OUT/<stem>.npz / .png / _compare.png (before | request painted
    on before | after) and OUT/metrics.csv; skips latents whose outputs are complete. A latent
    made by `project --tune` is edited through its own tuned weights (runs.tune.tuned_beside),
    which are copied beside its output. class_index: the class of a conditional generator
    (default: each latent file's own). progress: as for runs.project.project_files. changes: Config fields."""
    cfg, out, rep = config.replace(**changes), Path(out), Report()
    check_writable(out)
    stems, lats, space, rep.errors, classes = read_latents(latent_specs, G, cfg.space, class_index)
    cfg = cfg.replace(space=space)
    row, cls = {s: i for i, s in enumerate(stems)}, dict(zip(stems, classes))
    G.class_labels(classes, space)   # a missing or wrong class fails before any work
    tuned, tuned_errors = tuned_beside(latent_specs, stems)
    record = settings_record(G, cfg)
    inputs = _edit_inputs(lats, row, request, mask, cls, tuned)
    todo, rep.skipped, note = plan(out, [(s, s) for s in stems], record, inputs)
    todo, rep.notes = [s for s, _ in todo], [note] if note else []
    requests, errors = per_stem(request, todo, lambda p: load_request(p, G.resolution, G.img_channels))
    masks, mask_errors = per_stem(mask, todo, lambda p: load_mask(p, G.resolution))
    rep.errors += errors + mask_errors + list(tuned_errors.values())
    todo = [s for s in todo if s in requests and s in masks and s not in tuned_errors]
    chunks = weight_chunks(todo, tuned, batch_size)
    for k, (weights, names) in enumerate(chunks):
        Gk = generator_for(G, weights, rep.errors)
        if Gk is None:
            continue
        cb = progress(k, len(chunks), names) if progress else None
        _edit_chunk(Gk, out, rep, cfg, names, lats[[row[s] for s in names]], requests, masks, cls, weights,
                    record, inputs, cb)
    rep.metrics = write_metrics(out, EDIT_METRIC_COLUMNS, record, rep)
    write_folder_file(rep, out, "index.html", lambda: write_report(out, "edit"))
    done = [r for r in rep.metrics if r["target"] in rep.done]
    med = (f", median error in the mask {np.median([r['mask_mse_before'] for r in done]):.4g} -> "
           f"{np.median([r['mask_mse_after'] for r in done]):.4g}") if done else ""
    rep.summary = (f"edited {len(rep.done)} latent(s), skipped {len(rep.skipped)} complete, "
                   f"{len(rep.errors)} failed{med}{tuned_note(len(set(tuned) & set(rep.done)))}")
    return rep


def _edit_chunk(G: Generator, out: Path, rep: Report, cfg: Config, names: list[str], lats: torch.Tensor,
                requests: dict, masks: dict, classes: dict, weights: Path | None, record: dict, inputs, progress):
    """Edit one chunk of latents that share their weights (G, or G tuned by the file `weights`,
    which each output's .npz then records beside it) and write their outputs."""
    req = torch.stack([requests[s][0] for s in names])
    mk = stack_masks([masks[s] if masks[s] is not None else requests[s][1] for s in names])
    c = G.class_labels([classes[s] for s in names], cfg.space)
    res = edit(G, lats, req, mk, names, config=cfg, c=c, progress=progress)
    req = req.to(res.before)
    painted = req if mk is None else res.before + (req - res.before) * mk.to(req)
    before, shown, after = to_uint8(res.before), to_uint8(painted), to_uint8(res.images)

    def write(i: int, s: str) -> None:
        sha = None if weights is None else copy_tuned(weights, out, s)
        write_outputs(out, res, i, req[i], G, res.seconds / len(names), record | inputs(s),
                      [before[i], shown[i], after[i]], None if c is None else classes[s], tuned_sha256=sha)
    for i, s in enumerate(names):
        write_target(rep, out, s, lambda: write(i, s))


def _edit_inputs(lats: torch.Tensor | None, row: dict, request: Path, mask: Path | None, classes: dict,
                 tuned: dict):
    """stem -> what of a masked edit's inputs is that latent's own: its values, its class, its
    request and mask files and its tuned weights (by sha256)."""
    def own(spec: Path | None, stem: str) -> str | None:
        if spec is None or not Path(spec).is_dir():
            return input_sha256(spec and Path(spec))
        try:
            return input_sha256(stem_file(Path(spec), stem))
        except LatentFitError:
            return None

    def inputs(stem: str) -> dict:
        latent = hashlib.sha256(lats[row[stem]].numpy().tobytes()).hexdigest()
        return {"latent_sha256": latent, "class_index": classes[stem], "request": own(request, stem),
                "mask": own(mask, stem), "tuned": input_sha256(tuned.get(stem))}
    return inputs


def read_direction(path: Path, shape: tuple[int, ...], component: int = 0) -> torch.Tensor:
    """A direction [*shape] from an .npy of shape [*shape] or [K, *shape] (its row `component`):
    a regular file of plain numbers (no text, structured or complex dtypes), finite. The file is
    mapped, not read: a header that declares more data than the file holds is refused before
    anything is allocated, and only the row used is read."""
    path = regular_file(path, "direction file not found")
    try:
        d = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:   # EOFError: an empty file
        raise LatentFitError(f"{path}: not a .npy direction ({type(e).__name__}: {e})") from None
    if not isinstance(d, np.ndarray):
        raise LatentFitError(f"{path}: not a .npy direction (an .npz archive)")
    if d.dtype.kind not in "fiu":
        raise LatentFitError(f"{path}: not a direction of numbers (dtype {d.dtype.str})")
    if d.shape != shape:
        if d.shape[1:] != shape:
            raise LatentFitError(f"{path}: direction of shape {list(d.shape)}; latents of shape {list(shape)} "
                                 f"need {list(shape)} or [K, {', '.join(map(str, shape))}]")
        if not 0 <= component < d.shape[0]:
            raise ArgumentError("component", component, f"out of range, {path} holds {d.shape[0]} directions")
        d = d[component]
    d = torch.from_numpy(np.array(d, dtype=np.float32))
    if not torch.isfinite(d).all():
        raise LatentFitError(f"{path}: direction holds values that are not finite")
    return d


def direction_edit_files(G: Generator, latent_specs: list[str], out: Path, *, direction: Path,
                         strengths: list[float], component: int = 0, space: str | None = None,
                         class_index: int | None = None, batch_size: int = 64) -> Report:
    """Move every latent along a direction by each strength, in one batched render (a conditional
    generator's class: class_index, else each latent file's own; a latent made by `project --tune`
    rendered with its own tuned weights). Writes OUT/<stem>_s<strength>.png for each strength and
    OUT/<stem>_strip.png."""
    out, rep = Path(out), Report()
    check_writable(out)
    stems, lats, space, rep.errors, classes = read_latents(latent_specs, G, space, class_index)
    tuned, bad = tuned_beside(latent_specs, stems)
    rep.errors += list(bad.values())
    if lats is not None:
        d = read_direction(Path(direction), G.latent_shape(space), component)
        moved = apply_direction(lats, d, strengths)
        c = G.class_labels(classes, space)
        c = None if c is None else c[:, None].expand(-1, len(strengths), -1)
        keep = [i for i, s in enumerate(stems) if s not in bad]
        images = render_each(G, [stems[i] for i in keep], moved[keep], space, None if c is None else c[keep],
                             tuned, rep.errors, batch_size)
        for s, row in images.items():
            def write(s=s, row=to_uint8(row)):
                for strength, im in zip(strengths, row):
                    save_png(im, out / f"{s}_s{strength:+g}.png")
                save_png(grid([list(row)]), out / f"{s}_strip.png")
            write_target(rep, out, s, write)
        write_folder_file(rep, out, "index.html", lambda: write_report(out, "edit"))
    rep.summary = (f"moved {len(rep.done)} latent(s) by {len(strengths)} strength(s), {len(rep.errors)} failed"
                   f"{tuned_note(len(set(tuned) & set(rep.done)))}")
    return rep


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, array)
    atomic_write(path, write)


def direction_file(G: Generator, out: Path, *, positive: list[str] = (), negative: list[str] = (),
                   method: str = "mean", pca: int | None = None, samples: int = PCA_SAMPLES,
                   space: str | None = None, seed: int = 0, class_index: int | None = None) -> Report:
    """Find a direction and write it to `out` (.npy): from latent files labelled positive and
    negative (method mean: normalized difference of means; boundary: linear classifier normal),
    or the first `pca` principal directions [K, *shape] (of class class_index's images, for a
    conditional generator in z)."""
    out, rep = Path(out), Report(written=[Path(out)])
    if (pca is None) == (not positive and not negative):
        raise LatentFitError("give either positive and negative latents or a number of principal directions")
    if pca is not None:
        space = G.check_space(space or G.default_space)
        c = G.class_vector(class_index, space)
        dirs, std = pca_directions(G, pca, space=space, n=samples, seed=seed, c=None if c is None else c[None])
        _save_npy(out, dirs.cpu().numpy())
        rep.summary = (f"{pca} principal directions in {space} ({samples} samples), prior std along each: "
                       + ", ".join(f"{v:.3g}" for v in std.tolist()))
        return rep
    pos_stems, pos, space, rep.errors, _ = read_latents(list(positive), G, space)
    neg_stems, neg, _, neg_errors, _ = read_latents(list(negative), G, space)
    rep.errors += neg_errors
    if pos is None or neg is None:
        raise LatentFitError(f"no readable {'positive' if pos is None else 'negative'} latents: "
                             + ("; ".join(rep.errors) or "none given"))
    methods = {"mean": mean_difference, "boundary": linear_boundary}
    if method not in methods:
        raise ArgumentError("method", method, "choose mean or boundary")
    _save_npy(out, methods[method](pos, neg).numpy())
    rep.summary = (f"{method} direction in {space} from {len(pos_stems)} positive and {len(neg_stems)} "
                   "negative latents")
    return rep


def interpolate_files(G: Generator, latent_specs: list[str], out: Path, *, frames: int,
                      modes: tuple[str, ...] = ("linear", "spherical"), fps: int = 12,
                      class_index: int | None = None, batch_size: int = 64) -> Report:
    """Interpolate along the path through the latent files (in order), every mode and segment in
    one batched render; a conditional generator in z renders one class (class_index, else the
    one the files share). Latents made by `project --tune` bring their tuned weights: a segment
    with a tuned end blends the ends' weight changes as it blends the latents (runs.tune.render_path).
    A latent whose tuned weights are missing or do not fit G is an error line and left out of the
    path. Writes OUT/<mode>.png (a row per segment) and OUT/<mode>.mp4 (or .gif)."""
    out, rep = Path(out), Report()
    check_writable(out)
    stems, lats, space, rep.errors, classes = read_latents(latent_specs, G, class_index=class_index)
    tuned, bad = tuned_beside(latent_specs, stems)
    rep.errors += list(bad.values())
    deltas = path_deltas(G, stems, tuned, rep.errors)
    keep = [i for i, s in enumerate(stems) if s not in bad and (s not in tuned or s in deltas)]
    stems, classes = [stems[i] for i in keep], [classes[i] for i in keep]
    lats = lats[keep] if lats is not None and keep else None
    if lats is None or len(stems) < 2:
        raise LatentFitError(f"interpolate needs two or more readable latent files, got {len(stems)}"
                             + (f" ({'; '.join(rep.errors)})" if rep.errors else ""))
    path = torch.stack([interpolate(lats[:-1], lats[1:], frames, m) for m in modes])   # [M, P, F, *s]
    c = G.class_vector(_one_class(G, space, stems, classes), space)
    images = to_uint8(render_path(G, path, stems, deltas, space, c, batch_size).flatten(0, 2))
    images = images.reshape(len(modes), len(stems) - 1, frames, *images.shape[1:])
    for mode, segs in zip(modes, images):
        save_png(grid([list(seg) for seg in segs]), out / f"{mode}.png")
        tour = np.concatenate([segs[0]] + [seg[1:] for seg in segs[1:]])   # shared ends once
        rep.written += [out / f"{mode}.png", save_video(tour, out / mode, fps=fps)]
    rep.summary = "wrote " + ", ".join(str(p) for p in rep.written) + tuned_note(len(deltas))
    return rep


def _one_class(G: Generator, space: str, stems: list[str], classes: list[int | None]) -> int | None:
    """The class the latents share where the generator needs one (z of a conditional generator);
    latents of different classes there are an error."""
    if len(set(classes)) == 1:
        return classes[0]
    if not G.needs_class(space):
        return None
    shown = ", ".join(f"{s}: {'none' if k is None else k}" for s, k in list(zip(stems, classes))[:4])
    raise LatentFitError(f"latent files of different classes ({shown}); give files of one class, "
                         "or --class K to render them all in class K")
