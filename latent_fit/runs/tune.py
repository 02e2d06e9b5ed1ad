"""Tuned weights on the file side: tune a chunk's projections and write <stem>.tuned.safetensors,
find the tuned file that belongs to a latent file, and pick each target's weights for the
commands that read latent files (edit, interpolate, sweep --init)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..config import Config
from ..errors import LatentFitError
from ..generators.base import Generator
from ..images import assign_stems, find_files
from ..latents import read_latent_file
from ..optimize import Result
from ..sweep import SweepResult, concat_sweeps, sweep
from ..outputs import TUNED_SUFFIX, atomic_write, file_sha256, input_sha256
from ..tuning import TuneResult, Tuning, apply_tuned, load_delta, render_blended, save_tuned, tune, with_tuning


def tune_projection(G: Generator, res: Result, targets: torch.Tensor, c: torch.Tensor | None, tuning: Tuning,
                    cfg: Config, progress=None) -> tuple[Result, TuneResult]:
    """Tune G around every pivot of `res` (its latents and noise maps; loss, LPIPS weight, seed
    and exact from cfg): (res as the tuned generators render it, the tuning). Its seconds
    include the tuning's."""
    tres = tune(G, res.latent, targets.to(G.device), res.names, space=res.space, c=c, noise=res.noise,
                loss=cfg.loss, lpips_weight=cfg.lpips_weight, seed=cfg.seed, exact=cfg.exact, progress=progress,
                **tuning.kwargs())
    tuned = with_tuning(res, tres)
    tuned.seconds += tres.seconds
    return tuned, tres


def write_tuned(out: Path, tres: TuneResult, i: int, G: Generator) -> str:
    """Write target i's OUT/<stem>.tuned.safetensors (Δθ in fp16, atomically); its sha256,
    which the target's .npz records (written after it: the .npz marks completion)."""
    path = Path(out) / f"{tres.names[i]}{TUNED_SUFFIX}"
    save_tuned(path, {k: d[i] for k, d in tres.delta.items()}, G, tres.settings,
               {k: float(v[i]) for k, v in tres.metrics.items()})
    return file_sha256(path)


def copy_tuned(src: Path, out: Path, stem: str) -> str:
    """Put the tuned file `src` beside an output's .npz as OUT/<stem>.tuned.safetensors
    (atomically; nothing to do when it is already there); its sha256."""
    dst = Path(out) / f"{stem}{TUNED_SUFFIX}"
    if not (dst.exists() and dst.samefile(src)):
        atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))
    return file_sha256(dst)


def tuned_beside(specs: list[str], stems: list[str]) -> tuple[dict[str, Path], dict[str, str]]:
    """(stem -> tuned weights file, stem -> error line) for the latent files of `specs` named `stems`.

    A latent file is tuned when its .npz records `tuned_sha256`; then <stem>.tuned.safetensors
    beside it must still have that sha256, else that latent is an error line. A tuned file beside
    a latent file that records none (made without --tune, e.g. a later rerun) is ignored."""
    paths = dict(assign_stems(find_files(specs, {".npz"}, "latent files")[0])[0])
    tuned, errors = {}, {}
    for s in stems:
        npz = paths.get(s)
        if npz is None:
            continue
        sha = read_latent_file(npz).get("tuned_sha256")
        if sha is None:
            continue
        f = npz.parent / f"{npz.stem}{TUNED_SUFFIX}"
        if input_sha256(f) != sha:
            errors[s] = (f"{f}: the tuned weights {npz.name} was made with are "
                         f"{'changed' if f.exists() else 'missing'}; rerun project --tune for it")
        else:
            tuned[s] = f
    return tuned, errors


def weight_chunks(stems: list[str], tuned: dict[str, Path], batch_size: int) -> list[tuple[Path | None, list[str]]]:
    """Chunks of at most batch_size stems that share their weights (None: G's own; else a tuned
    file), in the order the weights first appear."""
    groups: dict[Path | None, list[str]] = {}
    for s in stems:
        groups.setdefault(tuned.get(s), []).append(s)
    return [(w, names[i:i + batch_size]) for w, names in groups.items() for i in range(0, len(names), batch_size)]


def generator_for(G: Generator, weights: Path | None, errors: list[str]) -> Generator | None:
    """G itself (weights None), or G with the tuned file's Δθ; None (and an error line naming
    the file) when the file does not fit G, e.g. tuned from another generator."""
    if weights is None:
        return G
    try:
        return apply_tuned(G, weights)
    except LatentFitError as e:
        errors.append(str(e))
        return None


def tuned_note(n: int) -> str:
    """The summary's mention of tuned weights."""
    return f", used tuned weights for {n} target(s)" if n else ""


def render_each(G: Generator, stems: list[str], latents: torch.Tensor, space: str, c: torch.Tensor | None,
                tuned: dict[str, Path], errors: list[str], batch_size: int = 64) -> dict[str, torch.Tensor]:
    """stem -> images [R, C, H, W] of its latents (latents [N, R, *shape], c [N, R, c_dim] or None)
    rendered with its weights: G for untuned stems (one batched render), each tuned stem with its
    own file; a file that does not fit G is an error line and its stem is left out."""
    from ..edit import render
    row, images = {s: i for i, s in enumerate(stems)}, {}
    for weights, names in weight_chunks(stems, tuned, max(1, len(stems))):
        Gk = generator_for(G, weights, errors)
        if Gk is None:
            continue
        idx = [row[s] for s in names]
        cc = None if c is None else c[idx].flatten(0, 1)
        out = render(Gk, latents[idx].flatten(0, 1), space, cc, batch_size=batch_size)
        images |= dict(zip(names, out.view(len(names), latents.shape[1], *out.shape[1:])))
    return images


def path_deltas(G: Generator, stems: list[str], tuned: dict[str, Path], errors: list[str]) -> dict[str, dict]:
    """stem -> Δθ of its tuned file, for the tuned stems whose file fits G (else an error line)."""
    deltas = {}
    for s in stems:
        if s in tuned:
            try:
                deltas[s] = load_delta(G, tuned[s])
            except LatentFitError as e:
                errors.append(str(e))
    return deltas


def render_path(G: Generator, path: torch.Tensor, stems: list[str], deltas: dict[str, dict], space: str,
                c: torch.Tensor | None, batch_size: int = 64) -> torch.Tensor:
    """Images [M, P, F, C, H, W] of an interpolation path [M, P, F, *shape] through the latents of
    `stems` (segment p from stems[p] to stems[p + 1]); c: one label [c_dim] or None. Without tuned
    ends, one batched render; a segment with a tuned end blends the ends' weight changes along
    with the latents (tuning.render_blended), so every end is its own tuned reconstruction."""
    from ..edit import render
    m, p, f = path.shape[:3]
    if not deltas:
        cc = None if c is None else c.expand(m * p * f, -1)
        return render(G, path.flatten(0, 2), space, cc, batch_size=batch_size).unflatten(0, (m, p, f))
    t = torch.linspace(0, 1, f)
    cc = None if c is None else c.expand(f, -1)

    def segment(i: int, j: int) -> torch.Tensor:
        a, b = deltas.get(stems[j]), deltas.get(stems[j + 1])
        if a is None and b is None:
            return render(G, path[i, j], space, cc, batch_size=batch_size)
        return render_blended(G, a, b, t, path[i, j], space, cc)
    return torch.stack([segment(i, j) for i in range(m) for j in range(p)]).unflatten(0, (m, p))


def init_tuned(init: Path, stems: list[str]) -> tuple[dict[str, Path], dict[str, str]]:
    """tuned_beside for `--init`: a folder of <stem>.npz, or one latent file for every stem (its
    tuned weights, if any, then serve them all; their errors concern every stem and raise)."""
    init = Path(init)
    if init.is_dir():
        return tuned_beside([str(init)], stems)
    one, bad = tuned_beside([str(init)], [init.stem])
    if bad:
        raise LatentFitError(bad[init.stem])
    return ({s: one[init.stem] for s in stems} if one else {}), {}


def sweep_by_weights(G: Generator, stems: list[str], targets: torch.Tensor, wrs, tuned: dict[str, Path],
                     errors: list[str], *, init=None, mask=None, c=None, progress=None,
                     **kwargs) -> SweepResult | None:
    """sweep.sweep of every target through its own weights (one batched sweep per weights: G's, or
    a tuned file's; init, mask, c: per target rows or None), merged in the order of `stems`; None
    when no weights fit G."""
    row, parts = {s: i for i, s in enumerate(stems)}, []
    chunks = weight_chunks(stems, tuned, max(1, len(stems)))
    for k, (weights, names) in enumerate(chunks):
        Gk = generator_for(G, weights, errors)
        if Gk is None:
            continue
        idx = [row[s] for s in names]

        def rows(x):
            return None if x is None else x[idx]
        parts.append(sweep(Gk, targets[idx], wrs, names, init=rows(init), mask=rows(mask), c=rows(c),
                           progress=progress(k, len(chunks), names) if progress else None, **kwargs))
    done = {n for p in parts for n in p.names}
    return concat_sweeps(parts, [s for s in stems if s in done]) if parts else None
