"""Running projection over files: targets in chunks, outputs written atomically, resume by
skipping what is complete, per-input errors that never stop the batch, merged metrics."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import LatentFitError
from .generators.base import Generator
from .images import atomic_write, difference, find_images, grid, load_image, save_png, save_video, to_uint8
from .latents import check_compatible, read_latent_file, write_latent_file
from .objective import require_lpips
from .optimize import Result, project

METRIC_COLUMNS = ["target", "mse", "psnr", "lpips", "dz_norm", "steps", "seconds", "terms"]


@dataclass
class Report:
    done: list[str] = field(default_factory=list)      # stems projected now
    skipped: list[str] = field(default_factory=list)   # complete from an earlier run
    errors: list[str] = field(default_factory=list)    # one line each: "<input>: <reason>"
    metrics: list[dict] = field(default_factory=list)  # rows of metrics.csv (all complete targets)


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / ".write-test", lambda tmp: Path(tmp).write_bytes(b""))
        (out / ".write-test").unlink()
    except OSError as e:
        raise LatentFitError(f"{out}: output folder is not writable ({e.strerror or e})") from None


def is_complete(out: Path, stem: str) -> bool:
    """Outputs are complete when the .npz (written last) reads back."""
    npz = out / f"{stem}.npz"
    if not (npz.is_file() and (out / f"{stem}.png").is_file() and (out / f"{stem}_compare.png").is_file()):
        return False
    try:
        read_latent_file(npz)
        return True
    except LatentFitError:
        return False


def assign_stems(paths: list[Path]) -> tuple[list[tuple[str, Path]], list[str]]:
    """(stem, path) per target; a stem seen twice is an error for the later file."""
    seen: dict[str, Path] = {}
    errors = []
    for p in paths:
        if p.stem in seen:
            errors.append(f"{p}: same name as {seen[p.stem]}; outputs would collide, rename one")
        else:
            seen[p.stem] = p
    return list(seen.items()), errors


def read_init(spec: Path, G: Generator, space: str, stems: list[str]) -> dict[str, np.ndarray]:
    """Start latents: one .npz for every target, or a folder of .npz matched by stem."""
    shape = G.latent_shape(space)
    if spec.is_dir():
        out = {}
        for s in stems:
            f = spec / f"{s}.npz"
            if f.is_file():
                out[s] = check_compatible(f, read_latent_file(f), G.name, shape, space)
        if not out:
            raise LatentFitError(f"{spec}: no <stem>.npz there matches a target")
        return out
    lat = check_compatible(spec, read_latent_file(spec), G.name, shape, space)
    return {s: lat for s in stems}


def write_outputs(out: Path, res: Result, i: int, target: torch.Tensor, G: Generator,
                  seconds: float, save_vid: bool) -> None:
    """PNG, comparison strip, optional video, then the .npz last (it marks completion)."""
    stem = res.names[i]
    proj = to_uint8(res.images[i:i + 1])[0]
    tgt = to_uint8(target[None])[0]
    save_png(proj, out / f"{stem}.png")
    save_png(grid([[tgt, proj, difference(tgt, proj)]]), out / f"{stem}_compare.png")
    if save_vid and res.frames is not None:
        frames = res.frames[:, i].permute(0, 2, 3, 1).numpy()
        save_video(np.concatenate([np.broadcast_to(tgt, frames.shape), frames], axis=2), out / stem)
    metrics = {k: float(v[i]) for k, v in res.metrics.items()}
    metrics |= {"steps": int(res.steps[i]), "seconds": seconds, "terms": "+".join(res.terms)}
    extra = {}
    if res.space in ("w", "w+"):
        w = res.latent[i:i + 1]
        extra["w"] = w[:, None].expand(1, G.num_ws, -1) if res.space == "w" else w
    if res.noise:
        extra |= {f"noise_{j}": nz[i] for j, nz in enumerate(res.noise)}
    write_latent_file(out / f"{stem}.npz", latent=res.latent[i], latent_init=res.latent_init[i],
                      space=res.space, generator=G.name, generator_sha256=G.sha256,
                      loss_history=res.loss_history[i], config=res.config, metrics=metrics, **extra)


def write_metrics(out: Path) -> list[dict]:
    """metrics.csv and metrics.json from every complete target in `out` (this run, earlier runs
    and other ranks alike)."""
    rows = []
    for npz in sorted(out.glob("*.npz")):
        try:
            data = read_latent_file(npz)
        except LatentFitError:
            continue
        m = data.get("metrics")
        if isinstance(m, dict) and "psnr" in m:
            rows.append({"target": npz.stem} | {k: m.get(k) for k in METRIC_COLUMNS[1:]})
    for r in rows:
        r.update({k: None for k, v in r.items() if isinstance(v, float) and math.isnan(v)})
    buf = io.StringIO()
    w = csv.DictWriter(buf, METRIC_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows([{k: ("" if v is None else v) for k, v in r.items()} for r in rows])
    atomic_write(out / "metrics.csv", lambda tmp: Path(tmp).write_text(buf.getvalue()))
    atomic_write(out / "metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=1)))
    return rows


def project_files(G: Generator, specs: list[str], out: Path, *, batch_size: int = 16,
                  init: str | None = None, classes: int | None = None, save_vid: bool = False,
                  background=(255, 255, 255), rank: int = 0, world: int = 1, progress=None,
                  **options) -> Report:
    """Project every image of `specs` into G and write the outputs to `out`.

    Targets are sharded by rank (every world-th), chunked by batch_size, and skipped when
    their outputs are complete. progress: callable(chunk_index, n_chunks, stems) -> callback
    for `project` (or None).
    """
    out = Path(out)
    if "lpips" in str(options.get("loss")):
        require_lpips()
    check_writable(out)
    rep = Report()
    paths, rep.errors = find_images(specs)
    targets, dup_errors = assign_stems(paths)
    rep.errors += dup_errors
    targets = targets[rank::world]
    todo = []
    for stem, p in targets:
        (rep.skipped if is_complete(out, stem) else todo).append((stem, p))
    space = options.get("space") or G.default_space
    inits = read_init(Path(init), G, space, [s for s, _ in todo]) if init else None
    if inits is not None:
        missing = [s for s, _ in todo if s not in inits]
        rep.errors += [f"{p}: no start latent {s}.npz in {init}" for s, p in todo if s in missing]
        todo = [(s, p) for s, p in todo if s not in missing]
    c_vec = None
    if G.c_dim:
        if classes is None or not 0 <= classes < G.c_dim:
            raise LatentFitError(f"generator {G.name!r} is conditional with {G.c_dim} classes: "
                                 f"give --class 0..{G.c_dim - 1}")
        c_vec = torch.nn.functional.one_hot(torch.tensor(classes), G.c_dim).float()

    chunks = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    for ci, chunk in enumerate(chunks):
        stems, images = [], []
        for stem, p in chunk:
            try:
                images.append(load_image(p, G.resolution, background))
                stems.append(stem)
            except LatentFitError as e:
                rep.errors.append(str(e))
        if not stems:
            continue
        batch = torch.stack(images)
        init_t = torch.from_numpy(np.stack([inits[s] for s in stems])) if inits else None
        c = c_vec.expand(len(stems), -1) if c_vec is not None else None
        cb = progress(ci, len(chunks), stems) if progress else None
        res = project(G, batch.to(G.device), stems, init=init_t, c=c, record_frames=save_vid,
                      progress=cb, **options)
        for i, stem in enumerate(stems):
            try:
                write_outputs(out, res, i, batch[i], G, res.seconds / len(stems), save_vid)
                rep.done.append(stem)
            except OSError as e:
                rep.errors.append(f"{out / stem}: could not write outputs ({e.strerror or e})")
    if world == 1:
        rep.metrics = write_metrics(out)
    return rep


def default_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LatentFitError(f"--device {device}: no CUDA device on this machine; use --device cpu")
    return device



