"""`latent-fit edit`, `direction` and `interpolate` over files: read latents and images, call
edit.py, write outputs atomically, report per-input errors."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import Config, edit_config
from ..edit import (
    PCA_SAMPLES,
    apply_direction,
    edit,
    interpolate,
    interpolate_noise,
    linear_boundary,
    mean_difference,
    pca_directions,
    render,
    render_path,
)
from ..errors import ArgumentError, LatentFitError
from ..faces import paste_back, read_photo
from ..fields import regular_file
from ..files import atomic_write, input_sha256
from ..generators.base import Generator
from ..generators.tuned import load_delta
from ..images import (
    grid,
    load_mask,
    load_request,
    per_stem,
    save_png,
    save_video,
    stack_masks,
    stem_file,
    to_uint8,
)
from ..outputs import (
    OutputFolder,
    Report,
    Target,
    by_weights,
    claim_outputs,
    read_targets,
    settings_record,
    target_noise,
    tuned_note,
)
from ..photos import Alignment, paste_photos, paste_results, tensor
from ..report import write_report
from ..sweep import EDIT_COLUMNS

EDIT_METRIC_COLUMNS = [
    "target",
    "wr",
    "wr_units",
    "wr_factor",
    "wr_effective",
    *EDIT_COLUMNS,
    "dz_norm",
    "jacobian_norm",
    "id_similarity",
    "steps",
    "seconds",
]
PHOTO_VIDEO_SIDE = 1024  # px: interpolate's <mode>_photo video is at most this long on its longer side


def edit_files(
    G: Generator,
    latent_specs: list[str],
    out: Path,
    config: Config | None = None,
    *,
    request: Path,
    mask: Path | None = None,
    batch_size: int = 16,
    class_index: int | None = None,
    progress=None,
    **changes,
) -> Report:
    """Masked edits of every latent file toward `request` (one image, or a folder of one
    <stem>.<image> per latent) where `mask` (one image or a folder; default: the request's alpha,
    else everywhere) is set. Writes OUT/<stem>.npz / .png / _compare.png (before | request painted
    on before | after) and OUT/metrics.csv; skips latents whose outputs are complete. A latent
    made by `project --tune` is edited through its own tuned weights, which are copied beside its
    output. A latent cut from a whole photo (project --align) also gives the photo back edited:
    OUT/<stem of its largest face>_photo.png, every edited face of that photo pasted in (a missing
    or changed photo is one note; the crops are written). The metrics' id_similarity compares the
    face before and after the edit (empty unless G makes faces). class_index: the class of a
    conditional generator (default: each latent file's own). progress: as for
    runs.project.project_files. config, changes: as for edit.edit."""
    cfg, folder, rep = edit_config(config, **changes), OutputFolder(out).check_writable(), Report()
    targets, space, rep.errors = read_targets(latent_specs, G, cfg.space, class_index)
    kept, clashes = claim_outputs([(t.stem, t.path) for t in targets])
    targets, rep.errors = [t for t in targets if (t.stem, t.path) in kept], rep.errors + clashes
    cfg = cfg.replace(space=space)
    by_stem = {t.stem: t for t in targets}
    G.class_labels([t.class_index for t in targets], space)  # a missing or wrong class fails before any work
    record = settings_record(G, cfg)
    inputs = _edit_inputs(by_stem, request, mask)
    todo, rep.skipped, note = folder.plan([(t.stem, t.stem) for t in targets], record, lambda stem, _: inputs(stem))
    todo, rep.notes = [s for s, _ in todo], [note] if note else []
    requests, errors = per_stem(request, todo, lambda p: load_request(p, G.resolution, G.img_channels))
    masks, mask_errors = per_stem(mask, todo, lambda p: load_mask(p, G.resolution))
    rep.errors += errors + mask_errors
    todo = [by_stem[s] for s in todo if s in requests and s in masks]
    identity, note = Alignment.of(G, "none") if todo else (Alignment(), None)  # id_similarity's template
    rep.notes += [note] if note else []
    for k, n, Gk, chunk in by_weights(G, todo, batch_size, rep.errors):
        cb = progress(k, n, [t.stem for t in chunk]) if progress else None
        _edit_chunk(Gk, folder, rep, cfg, chunk, requests, masks, record, inputs, identity, cb)
    rep.written += paste_photos(folder, _links(targets), set(rep.done), rep.notes)
    rep.metrics = folder.write_metrics(EDIT_METRIC_COLUMNS, record, rep)
    folder.write_file(rep, "index.html", lambda: write_report(folder.path, "edit"))
    rep.summary = _edit_summary(rep, targets)
    return rep


def _edit_summary(rep: Report, targets: list[Target]) -> str:
    """The edit's summary line: counts, the median error in the mask before and after and the
    median identity similarity of the latents edited now."""
    done = [r for r in rep.metrics if r["target"] in rep.done]
    ids = [r["id_similarity"] for r in done if r["id_similarity"] is not None]
    line = f"edited {len(rep.done)} latent(s), skipped {len(rep.skipped)} complete, {len(rep.errors)} failed"
    if done:
        before, after = ([r[k] for r in done] for k in ("mask_mse_before", "mask_mse_after"))
        line += f", median error in the mask {np.median(before):.4g} -> {np.median(after):.4g}"
    if ids:
        line += f", median identity similarity {np.median(ids):.3f}"
    return line + tuned_note(targets, rep.done)


def _edit_chunk(
    G: Generator,
    folder: OutputFolder,
    rep: Report,
    cfg: Config,
    chunk: list[Target],
    requests: dict,
    masks: dict,
    record: dict,
    inputs,
    identity: Alignment,
    progress,
):
    """Edit one chunk of latents that share their weights (G, or G tuned by their tuned file,
    which each output then records beside it) and write their outputs; id_similarity of the
    images before and after (identity.id_similarity: none without a face template)."""
    names = [t.stem for t in chunk]
    req = torch.stack([requests[s][0] for s in names])
    mk = stack_masks([masks[s] if masks[s] is not None else requests[s][1] for s in names])
    c = G.class_labels([t.class_index for t in chunk], cfg.space)
    res = edit(G, _latents(chunk), req, mk, names, config=cfg, c=c, noise=_noise(G, chunk), progress=progress)
    ids = identity.id_similarity(res.before, res.images)
    res.metrics |= {} if ids is None else {"id_similarity": ids}
    req = req.to(res.before)
    painted = req if mk is None else res.before + (req - res.before) * mk.to(req)
    before, shown, after = to_uint8(res.before), to_uint8(painted), to_uint8(res.images)

    def write(i: int, t: Target) -> None:
        sha = None if t.weights is None else folder.copy_tuned(t.weights, t.stem)
        folder.write_projection(
            G,
            res,
            i,
            req[i],
            res.seconds / len(names),
            record | inputs(t.stem),
            [before[i], shown[i], after[i]],
            None if c is None else t.class_index,
            tuned_sha256=sha,
            photo=t.photo,
        )

    for i, t in enumerate(chunk):
        folder.write_target(rep, t.stem, lambda: write(i, t))


def _latents(targets: list[Target]) -> torch.Tensor:
    return torch.from_numpy(np.stack([t.latent for t in targets]))


def _noise(G: Generator, targets: list[Target], repeat: int = 1) -> list[torch.Tensor] | None:
    """The targets' noise maps (outputs.target_noise), each row repeated `repeat` times."""
    maps = target_noise(G, targets)
    return None if maps is None else [torch.from_numpy(m).repeat_interleave(repeat, 0) for m in maps]


def _edit_inputs(targets: dict[str, Target], request: Path, mask: Path | None):
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
        t = targets[stem]
        noise = b"".join(m.tobytes() for m in t.noise or [])
        return {
            "latent_sha256": hashlib.sha256(t.latent.tobytes()).hexdigest(),
            "class_index": t.class_index,
            "noise_sha256": hashlib.sha256(noise).hexdigest() if noise else None,
            "request": own(request, stem),
            "mask": own(mask, stem),
            "tuned": input_sha256(t.weights),
        }

    return inputs


def read_direction(path: Path, shape: tuple[int, ...], component: int = 0) -> torch.Tensor:
    """A direction [*shape] from an .npy of shape [*shape] or [K, *shape] (its row `component`):
    a regular file of plain numbers (no text, structured or complex dtypes), finite. The file is
    mapped, not read: a header that declares more data than the file holds is refused before
    anything is allocated, and only the row used is read."""
    path = regular_file(path, "direction file not found")
    try:
        d = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:  # EOFError: an empty file
        raise LatentFitError(f"{path}: not a .npy direction ({type(e).__name__}: {e})") from None
    if not isinstance(d, np.ndarray):
        raise LatentFitError(f"{path}: not a .npy direction (an .npz archive)")
    if d.dtype.kind not in "fiu":
        raise LatentFitError(f"{path}: not a direction of numbers (dtype {d.dtype.str})")
    if d.shape != shape:
        if d.shape[1:] != shape:
            raise LatentFitError(
                f"{path}: direction of shape {list(d.shape)}; latents of shape {list(shape)} "
                f"need {list(shape)} or [K, {', '.join(map(str, shape))}]"
            )
        if not 0 <= component < d.shape[0]:
            raise ArgumentError("component", component, f"out of range, {path} holds {d.shape[0]} directions")
        d = d[component]
    d = torch.from_numpy(np.array(d, dtype=np.float32))
    if not torch.isfinite(d).all():
        raise LatentFitError(f"{path}: direction holds values that are not finite")
    return d


def direction_record_path(path: Path) -> Path:
    """The record that travels beside a direction file: <name>.npy.json."""
    return Path(f"{path}.json")


def check_direction(path: Path, G: Generator, space: str) -> str | None:
    """A direction made for another generator (sha256, else name) or space is one error line
    naming both. A direction without a record of its own (from another tool, or changed since)
    is used for its shape alone: the warning to give once its shape fits (None: it has one)."""
    rec_path = direction_record_path(path)
    try:
        rec = json.loads(rec_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        rec = None
    except (OSError, ValueError) as e:
        raise LatentFitError(
            f"{rec_path}: not a direction record ({type(e).__name__}); remove it or make the direction again"
        ) from None
    if not isinstance(rec, dict) or rec.get("npy_sha256") != input_sha256(Path(path)):
        why = "has no record" if rec is None else f"does not match its record {rec_path.name}"
        return f"{path} {why}: which generator and space it was made for is unknown, only its shape is checked"
    sha, name = rec.get("generator_sha256"), rec.get("generator")
    same = sha == G.sha256 if sha and G.sha256 else name == G.name
    if not same or rec.get("space") != space:
        raise LatentFitError(
            f"{path}: direction made for generator {name!r} in space {rec.get('space')!r}; "
            f"this run uses {G.name!r} in space {space!r}"
        )
    return None


def direction_edit_files(
    G: Generator,
    latent_specs: list[str],
    out: Path,
    *,
    direction: Path,
    strengths: list[float],
    component: int = 0,
    space: str | None = None,
    class_index: int | None = None,
    batch_size: int = 64,
) -> Report:
    """Move every latent along a direction by each strength, in one batched render per weights (a
    conditional generator's class: class_index, else each latent file's own; a latent made by
    `project --tune` rendered with its own tuned weights). Writes OUT/<stem>_s<strength>.png for
    each strength and OUT/<stem>_strip.png; for latents cut from a whole photo, also the photo
    with its faces moved by each strength pasted back, OUT/<stem of its largest face>_s<strength>_photo.png."""
    folder, rep = OutputFolder(out).check_writable(), Report()
    targets, space, rep.errors = read_targets(latent_specs, G, space, class_index)
    if targets:
        unrecorded = check_direction(Path(direction), G, space)
        d = read_direction(Path(direction), G.latent_shape(space), component)
        if unrecorded:
            warnings.warn(unrecorded, stacklevel=2)
        moved = apply_direction(_latents(targets), d, strengths)
        c = G.class_labels([t.class_index for t in targets], space)
        c = None if c is None else c[:, None].expand(-1, len(strengths), -1)
        rows = _render(G, targets, moved, space, c, rep.errors, batch_size)
        for s, row in rows.items():

            def write(s=s, row=to_uint8(row)):
                for strength, im in zip(strengths, row):
                    save_png(im, folder.path / f"{s}_s{strength:+g}.png")
                save_png(grid([list(row)]), folder.path / f"{s}_strip.png")

            folder.write_target(rep, s, write)
        _moved_photos(folder, rep, [t for t in targets if t.stem in rep.done], rows, strengths)
        folder.write_file(rep, "index.html", lambda: write_report(folder.path, "edit"))
    rep.summary = (
        f"moved {len(rep.done)} latent(s) by {len(strengths)} strength(s), {len(rep.errors)} failed"
        f"{tuned_note(targets, rep.done)}"
    )
    return rep


def _moved_photos(
    folder: OutputFolder, rep: Report, targets: list[Target], rows: dict[str, torch.Tensor], strengths: list[float]
) -> None:
    """For each photo the targets were cut from and each strength: the photo with its faces'
    images at that strength (rows: stem -> [S, C, R, R]) pasted back, <stem>_s<strength>_photo.png.
    A missing or changed photo is one warning for all strengths."""
    links, notes = _links(targets), []
    for j, strength in enumerate(strengths):
        images = {s: rows[s][j] for s in links}
        rep.written += paste_results(folder, links, images, notes, f"_s{strength:+g}")
    rep.notes += list(dict.fromkeys(notes))


def _links(targets: list[Target]) -> dict:
    """stem -> PhotoLink of the targets cut from whole photos."""
    return {t.stem: t.photo for t in targets if t.photo is not None}


def _render(
    G: Generator,
    targets: list[Target],
    latents: torch.Tensor,
    space: str,
    c: torch.Tensor | None,
    errors: list[str],
    batch_size: int,
) -> dict[str, torch.Tensor]:
    """stem -> images [R, C, H, W] of its row of `latents` [N, R, *shape] (c: [N, R, c_dim] or
    None), rendered with its weights and noise maps (outputs.by_weights: one batched render per
    weights)."""
    row, images = {t.stem: i for i, t in enumerate(targets)}, {}
    for _, _, Gk, chunk in by_weights(G, targets, max(1, len(targets)), errors):
        idx = [row[t.stem] for t in chunk]
        cc = None if c is None else c[idx].flatten(0, 1)
        out = render(Gk, latents[idx].flatten(0, 1), space, cc, batch_size, _noise(Gk, chunk, latents.shape[1]))
        images |= dict(zip([t.stem for t in chunk], out.view(len(chunk), latents.shape[1], *out.shape[1:])))
    return images


def _save_direction(path: Path, array: np.ndarray, G: Generator, space: str, made: dict) -> None:
    """The direction .npy, then its record (direction_record_path): the generator's name and
    sha256, the space, the shape, how it was `made`, and the .npy's sha256 (a record left beside
    an .npy that changed since is not taken for its record)."""

    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(path, write)
    rec = {
        "generator": G.name,
        "generator_sha256": G.sha256,
        "space": space,
        "shape": list(array.shape),
        "made": made,
        "npy_sha256": input_sha256(path),
    }
    atomic_write(direction_record_path(path), lambda tmp: Path(tmp).write_text(json.dumps(rec, indent=1)))


def direction_file(
    G: Generator,
    out: Path,
    *,
    positive: list[str] = (),
    negative: list[str] = (),
    method: str = "mean",
    pca: int | None = None,
    samples: int = PCA_SAMPLES,
    space: str | None = None,
    seed: int = 0,
    class_index: int | None = None,
) -> Report:
    """Find a direction and write it to `out` (.npy, its record beside it: _save_direction): from
    latent files labelled positive and negative (method mean: normalized difference of means;
    boundary: linear classifier normal), or the first `pca` principal directions [K, *shape] (of class class_index's images, for a
    conditional generator in z)."""
    out, rep = Path(out), Report(written=[Path(out), direction_record_path(out)])
    if (pca is None) == (not positive and not negative):
        raise LatentFitError("give either positive and negative latents or a number of principal directions")
    if pca is not None:
        space = G.check_space(space or G.default_space)
        c = G.class_vector(class_index, space)
        dirs, std = pca_directions(G, pca, space=space, n=samples, seed=seed, c=None if c is None else c[None])
        _save_direction(
            out,
            dirs.cpu().numpy(),
            G,
            space,
            {"method": "pca", "components": pca, "samples": samples, "seed": seed, "class_index": class_index},
        )
        rep.summary = f"{pca} principal directions in {space} ({samples} samples), prior std along each: " + ", ".join(
            f"{v:.3g}" for v in std.tolist()
        )
        return rep
    pos, space, rep.errors = read_targets(list(positive), G, space, weights=False)
    neg, _, neg_errors = read_targets(list(negative), G, space, weights=False)
    rep.errors += neg_errors
    if not pos or not neg:
        raise LatentFitError(
            f"no readable {'negative' if pos else 'positive'} latents: " + ("; ".join(rep.errors) or "none given")
        )
    methods = {"mean": mean_difference, "boundary": linear_boundary}
    if method not in methods:
        raise ArgumentError("method", method, "choose mean or boundary")
    made = {
        "method": method,
        **{k: {t.stem: input_sha256(t.path) for t in ts} for k, ts in (("positive", pos), ("negative", neg))},
    }
    _save_direction(out, methods[method](_latents(pos), _latents(neg)).numpy(), G, space, made)
    rep.summary = f"{method} direction in {space} from {len(pos)} positive and {len(neg)} negative latents"
    return rep


def interpolate_files(
    G: Generator,
    latent_specs: list[str],
    out: Path,
    *,
    frames: int,
    modes: tuple[str, ...] = ("linear", "spherical"),
    fps: int = 12,
    class_index: int | None = None,
    batch_size: int = 64,
) -> Report:
    """Interpolate along the path through the latent files (in order), every mode and segment in
    one batched render; a conditional generator in z renders one class (class_index, else the
    one the files share). StyleGAN noise maps stored in the files are interpolated by the same
    rule as the latents (edit.interpolate_noise). Latents made by `project --tune` bring their tuned weights: a segment
    with a tuned end blends the ends' weight changes as it blends the latents (edit.render_path).
    A latent whose tuned weights are missing or do not fit G is an error line and left out of the
    path. Writes OUT/<mode>.png (a row per segment) and OUT/<mode>.mp4 (or .gif); when the first
    latent was cut from a whole photo, also OUT/<mode>_photo.mp4 (or .gif): the video's frames
    pasted back into that photo where that face was (_photo_tours)."""
    out, rep = OutputFolder(out).check_writable().path, Report()
    targets, space, rep.errors = read_targets(latent_specs, G, class_index=class_index)
    kept, deltas = [], []
    for t in targets:
        try:
            deltas.append(None if t.weights is None else load_delta(G, t.weights))
            kept.append(t)
        except LatentFitError as e:
            rep.errors.append(str(e))
    if len(kept) < 2:
        raise LatentFitError(
            f"interpolate needs two or more readable latent files, got {len(kept)}"
            + (f" ({'; '.join(rep.errors)})" if rep.errors else "")
        )
    lats = _latents(kept)
    path = torch.stack([interpolate(lats[:-1], lats[1:], frames, m) for m in modes])  # [M, P, F, *s]
    ends = _noise(G, kept)
    noise = (
        None
        if ends is None
        else [
            torch.stack(maps)
            for maps in zip(
                *[interpolate_noise([e[:-1] for e in ends], [e[1:] for e in ends], frames, m) for m in modes]
            )
        ]
    )
    c = G.class_vector(_one_class(G, space, kept), space)
    images = to_uint8(render_path(G, path, deltas, space, c, batch_size, noise).flatten(0, 2))
    images = images.reshape(len(modes), len(kept) - 1, frames, *images.shape[1:])
    tours = {}
    for mode, segs in zip(modes, images):
        save_png(grid([list(seg) for seg in segs]), out / f"{mode}.png")
        tours[mode] = np.concatenate([segs[0]] + [seg[1:] for seg in segs[1:]])  # shared ends once
        rep.written += [out / f"{mode}.png", save_video(tours[mode], out / mode, fps=fps)]
    _photo_tours(kept[0], tours, out, fps, rep)
    rep.summary = "wrote " + ", ".join(str(p) for p in rep.written) + tuned_note(kept, [t.stem for t in kept])
    return rep


def _photo_tours(target: Target, tours: dict[str, np.ndarray], out: Path, fps: int, rep: Report) -> None:
    """OUT/<mode>_photo.mp4 (or .gif) for each mode's frames (uint8 [T, R, R, C]) when `target`
    (the path's first latent) was cut from a whole photo: every frame pasted back into that
    photo where that face was, scaled to at most PHOTO_VIDEO_SIDE px. A missing or changed
    photo is one note."""
    link = target.photo
    if link is None:
        return
    try:
        photo = read_photo(link)
    except LatentFitError as e:
        rep.notes.append(f"warning: {e}")
        return
    h, w = photo.shape[:2]
    scale = min(1.0, PHOTO_VIDEO_SIDE / max(h, w))
    size = (max(2, round(w * scale / 2) * 2), max(2, round(h * scale / 2) * 2))  # even: mp4's chroma
    for mode, tour in tours.items():
        frames = [paste_back(photo, tensor(f[None]), link.transform[None]) for f in tour]
        frames = np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BOX)) for f in frames])
        rep.written.append(save_video(frames, out / f"{mode}_photo", fps=fps))


def _one_class(G: Generator, space: str, targets: list[Target]) -> int | None:
    """The class the latents share where the generator needs one (z of a conditional generator);
    latents of different classes there are an error."""
    classes = [t.class_index for t in targets]
    if len(set(classes)) == 1:
        return classes[0]
    if not G.needs_class(space):
        return None
    shown = ", ".join(f"{t.stem}: {'none' if t.class_index is None else t.class_index}" for t in targets[:4])
    raise LatentFitError(
        f"latent files of different classes ({shown}); give files of one class, "
        "or --class K to render them all in class K"
    )
