"""Running projection over files: targets in chunks, outputs written atomically, resume by
skipping what is complete, per-input errors that never stop the batch, merged metrics."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .devices import is_oom, memory_fit
from .errors import LatentFitError
from .generators.base import Generator
from .images import atomic_write, difference, find_images, grid, load_image, save_png, save_video, to_uint8
from .latents import check_compatible, read_latent_file, write_latent_file
from .objective import require_lpips
from .optimize import Result, project

METRIC_COLUMNS = ["target", "mse", "psnr", "lpips", "dz_norm", "steps", "seconds", "terms"]
CPU_CHUNK_BYTES = 256 * 2 ** 20   # --batch-size auto on CPU: throughput stops growing long before
                                  # RAM fills, and a smaller chunk loses less work when killed
# atomic_write's temp files: .<name>.<random>.tmp<suffix>
_TEMP = re.compile(r"^\.(?P<name>.+)\.[^.]+\.tmp(\.[^.]+)?$")


@dataclass
class Report:
    done: list[str] = field(default_factory=list)      # stems projected now
    skipped: list[str] = field(default_factory=list)   # complete from an earlier run
    errors: list[str] = field(default_factory=list)    # one line each: "<input>: <reason>"
    metrics: list[dict] = field(default_factory=list)  # rows of metrics.csv (all complete targets)


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):   # nameless or unique: safe beside other ranks
            pass
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


def output_names(stem: str) -> list[str]:
    """The files a target's outputs may have in the output folder."""
    return [f"{stem}.npz", f"{stem}.png", f"{stem}_compare.png", f"{stem}.mp4", f"{stem}.gif"]


def remove_stale_temps(out: Path, names: set[str]) -> None:
    """Delete temp files a killed run left behind while writing one of `names` (only those:
    other ranks may be writing theirs right now)."""
    for p in out.iterdir():
        m = _TEMP.match(p.name)
        if m and m["name"] in names:
            p.unlink(missing_ok=True)


def auto_batch_size(G: Generator, n_targets: int, **options) -> int:
    """The largest chunk of targets whose projection steps (with `options`) fit the device's
    memory; on CPU a chunk plans for at most CPU_CHUNK_BYTES."""
    budget = CPU_CHUNK_BYTES if G.device.type == "cpu" else None
    return max(1, min(n_targets, memory_fit(G, budget, **options)[1]))


def class_vector(G: Generator, classes: int | None, space: str) -> torch.Tensor | None:
    """The one-hot label [c_dim] of --class for a conditional generator; None if unconditional,
    or if no class is given in w / w+ (those latents already carry the class)."""
    if not G.c_dim or (classes is None and space != "z"):
        return None
    if classes is None or not 0 <= classes < G.c_dim:
        raise LatentFitError(f"generator {G.name!r} is conditional with {G.c_dim} classes: "
                             f"give --class 0..{G.c_dim - 1}")
    return torch.nn.functional.one_hot(torch.tensor(classes), G.c_dim).float()


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


def read_init(spec: Path, G: Generator, space: str, targets: list[tuple[str, Path]]
              ) -> tuple[dict[str, np.ndarray], list[str]]:
    """(start latents by stem, error lines): one .npz for every target, or a folder of .npz
    matched by stem, where a target whose file is missing or unreadable gets an error line."""
    shape = G.latent_shape(space)
    if not spec.is_dir():
        lat = check_compatible(spec, read_latent_file(spec), G.name, shape, space, G.sha256)
        return {s: lat for s, _ in targets}, []
    if targets and not any((spec / f"{s}.npz").exists() for s, _ in targets):
        raise LatentFitError(f"{spec}: no <stem>.npz there matches a target")
    out, errors = {}, []
    for s, p in targets:
        f = spec / f"{s}.npz"
        try:
            if not (f.exists() or f.is_symlink()):
                raise LatentFitError(f"{p}: no start latent {s}.npz in {spec}")
            out[s] = check_compatible(f, read_latent_file(f), G.name, shape, space, G.sha256)
        except LatentFitError as e:
            errors.append(str(e))
    return out, errors


def write_outputs(out: Path, res: Result, i: int, target: torch.Tensor, G: Generator,
                  seconds: float, save_vid: bool, panels: list[np.ndarray] | None = None) -> None:
    """PNG, comparison strip (`panels`, default target | result | difference), optional video,
    then the .npz last (it marks completion)."""
    stem = res.names[i]
    proj = to_uint8(res.images[i:i + 1])[0]
    tgt = to_uint8(target[None])[0]
    save_png(proj, out / f"{stem}.png")
    save_png(grid([panels or [tgt, proj, difference(tgt, proj)]]), out / f"{stem}_compare.png")
    if save_vid and res.frames is not None:
        frames = res.frames[:, i]
        save_video(np.concatenate([np.broadcast_to(tgt, frames.shape), frames], axis=2), out / stem)
    metrics = {k: float(v[i]) for k, v in res.metrics.items()}
    metrics |= {"steps": int(res.steps[i]), "seconds": seconds, "terms": "+".join(res.terms)}
    extra = {}
    if res.space in ("w", "w+"):
        w = res.latent[i:i + 1]
        extra["w"] = w[:, None].expand(1, G.num_ws, -1) if res.space == "w" else w
    if res.noise:
        extra |= {f"noise_{j}": nz[i] for j, nz in enumerate(res.noise)}
    history = res.loss_history[i]
    write_latent_file(out / f"{stem}.npz", latent=res.latent[i], latent_init=res.latent_init[i],
                      space=res.space, generator=G.name, generator_sha256=G.sha256,
                      loss_history=history[~np.isnan(history)], config=res.config, metrics=metrics,
                      **extra)


def collect_metrics(out: Path, columns: list[str] = METRIC_COLUMNS) -> list[dict]:
    """Metric rows (`columns`, the first the target) of every complete target in `out`."""
    rows = []
    for npz in sorted(out.glob("*.npz")):
        try:
            data = read_latent_file(npz)
        except LatentFitError:
            continue
        m = data.get("metrics")
        if isinstance(m, dict) and "psnr" in m:
            rows.append({"target": npz.stem} | {k: m.get(k) for k in columns[1:]})
    for r in rows:
        r.update({k: None for k, v in r.items() if isinstance(v, float) and math.isnan(v)})
    return rows


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    """A CSV of `columns` (other keys ignored) written atomically; None and NaN as empty cells."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, columns, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows([{k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v)
                  for k, v in r.items()} for r in rows])
    atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue(), encoding="utf-8",
                                                        errors="surrogateescape"))   # names as their files


def write_metrics(out: Path, columns: list[str] = METRIC_COLUMNS) -> list[dict]:
    """metrics.csv and metrics.json (`columns`, the first the target) from every complete target
    in `out` (this run, earlier runs and other ranks alike)."""
    rows = collect_metrics(out, columns)
    write_csv(out / "metrics.csv", columns, rows)
    atomic_write(out / "metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=1)))
    return rows


def project_files(G: Generator, specs: list[str], out: Path, *, batch_size: int | str = 16,
                  init: str | None = None, classes: int | None = None, save_vid: bool = False,
                  background=(255, 255, 255), rank: int = 0, world: int = 1, progress=None,
                  **options) -> Report:
    """Project every image of `specs` into G and write the outputs to `out`.

    Targets are sharded by rank (every world-th), skipped when their outputs are complete, and
    streamed in chunks of batch_size ("auto": the largest that fits the device); a chunk that
    runs out of memory is split in halves and retried, and later chunks stay that small. Killed
    at any moment, a rerun finishes the job: outputs appear atomically, the .npz last, and the
    temp files of a killed write are removed. Under a torchrun process group, rank 0 merges
    the metrics once every rank is done; other sharded runs leave that to write_metrics(out).
    progress: callable(chunk_index, n_chunks, stems) -> callback for `project` (or None).
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
    writes_metrics = world == 1 or rank == 0
    remove_stale_temps(out, {n for s, _ in targets for n in output_names(s)}
                       | ({"metrics.csv", "metrics.json"} if writes_metrics else set()))
    todo = []
    for stem, p in targets:
        (rep.skipped if is_complete(out, stem) else todo).append((stem, p))
    space = options.get("space") or G.default_space
    inits = None
    if init:
        inits, init_errors = read_init(Path(init), G, space, todo)
        rep.errors += init_errors
        todo = [(s, p) for s, p in todo if s in inits]
    c_vec = class_vector(G, classes, space)

    if batch_size == "auto":
        batch_size = auto_batch_size(G, len(todo), **options | ({"starts": 1} if inits else {}))
    if not isinstance(batch_size, int) or batch_size < 1:
        raise LatentFitError(f"batch size {batch_size!r}: give a whole number >= 1 or auto")
    paths_of = dict(todo)
    calls = finished = 0

    def run(stems: list[str], batch: torch.Tensor, init_t: torch.Tensor | None) -> None:
        """Project one chunk and write its outputs; out of memory, split it and retry."""
        nonlocal batch_size, calls, finished
        c = c_vec.expand(len(stems), -1) if c_vec is not None else None
        cb = progress(calls, calls + math.ceil((len(todo) - finished) / batch_size), stems) \
            if progress else None
        calls += 1
        try:
            res = project(G, batch.to(G.device), stems, init=init_t, c=c, record_frames=save_vid,
                          progress=cb, **options)
        except RuntimeError as e:
            if not is_oom(e):
                raise
            res = None   # retry outside the handler, so the failed attempt's tensors are freed
        if res is None:
            if G.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(stems) == 1:
                rep.errors.append(f"{paths_of[stems[0]]}: out of memory on {G.device} even alone; "
                                  "use fewer --starts or a device with more memory")
                finished += 1
                return
            h = len(stems) // 2
            batch_size = min(batch_size, h)
            for part in (slice(0, h), slice(h, None)):
                run(stems[part], batch[part], None if init_t is None else init_t[part])
            return
        for i, stem in enumerate(stems):
            try:
                write_outputs(out, res, i, batch[i], G, res.seconds / len(stems), save_vid)
                rep.done.append(stem)
            except OSError as e:
                rep.errors.append(f"{out / stem}: could not write outputs ({e.strerror or e})")
        finished += len(stems)

    start = 0
    while start < len(todo):   # stream: only one chunk of images is in memory at a time
        chunk = todo[start:start + batch_size]
        start += len(chunk)
        stems, images = [], []
        for stem, p in chunk:
            try:
                images.append(load_image(p, G.resolution, background))
                stems.append(stem)
            except LatentFitError as e:
                rep.errors.append(str(e))
        finished += len(chunk) - len(stems)
        if stems:
            run(stems, torch.stack(images),
                torch.from_numpy(np.stack([inits[s] for s in stems])) if inits else None)
    if world == 1:
        rep.metrics = write_metrics(out)
    elif distributed.active():
        distributed.barrier()
        rep.metrics = write_metrics(out) if rank == 0 else collect_metrics(out)
    return rep


def default_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LatentFitError(f"--device {device}: no CUDA device on this machine; use --device cpu")
    return device



