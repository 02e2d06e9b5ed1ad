"""`latent-fit project` over files: targets in chunks, outputs written atomically, resume by
skipping what is complete, per-input errors that never stop the batch, merged metrics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..config import PROJECTION, Config
from ..devices import free_memory, is_oom, memory_fit
from ..errors import ArgumentError, LatentFitError
from ..generators.base import Generator
from ..images import assign_stems, difference, find_images, grid, load_image, save_png, save_video, to_uint8
from ..latents import read_init, write_latent_file
from ..objective import require_lpips
from ..optimize import Result, project
from ..outputs import (TUNED_SUFFIX, Report, check_writable, collect_metrics, input_sha256, output_names, plan,
                       remove_stale_temps, settings_record, write_folder_file, write_metrics, write_target)
from ..report import write_report
from ..tuning import TUNE_COLUMNS, Tuning, tuning_bytes
from .tune import tune_projection, write_tuned

METRIC_COLUMNS = ["target", "mse", "psnr", "lpips", "dz_norm", "wr", "wr_units", "wr_factor", "wr_effective",
                  "jacobian_norm", "steps", "sample_steps", "seconds", "terms"]
CPU_CHUNK_BYTES = 256 * 2 ** 20   # batch_size auto on CPU: throughput stops growing long before
                                  # RAM fills, and a smaller chunk loses less work when killed


def auto_batch_size(G: Generator, n_targets: int, config: Config, tuning: Tuning | None = None) -> int:
    """The largest chunk of targets whose projection steps (and with `tuning`, tuning steps)
    fit the device's memory; on CPU a chunk plans for at most CPU_CHUNK_BYTES."""
    budget = CPU_CHUNK_BYTES if G.device.type == "cpu" else free_memory(G.device)
    per, fit = memory_fit(G, config, budget)
    if tuning is not None:
        fit = min(fit, budget // tuning_bytes(G, per // config.starts))
    return max(1, min(n_targets, fit))


def write_outputs(out: Path, res: Result, i: int, target: torch.Tensor, G: Generator, seconds: float,
                  record: dict, panels: list[np.ndarray] | None = None, class_index: int | None = None,
                  tuned_sha256: str | None = None) -> None:
    """PNG, comparison strip (`panels`, default target | result | difference), the video when
    frames were kept, then the .npz last (it marks completion, and holds the `record` of what
    made it, `class_index` when a class was used, and `tuned_sha256`, the sha256 of the
    <stem>.tuned.safetensors the caller wrote before, whose weights render it; without one, a
    tuned file left from an earlier run is removed)."""
    stem = res.names[i]
    proj = to_uint8(res.images[i:i + 1])[0]
    tgt = to_uint8(target[None])[0]
    save_png(proj, out / f"{stem}.png")
    save_png(grid([panels or [tgt, proj, difference(tgt, proj)]]), out / f"{stem}_compare.png")
    if res.frames is not None:
        frames = res.frames[:, i]
        save_video(np.concatenate([np.broadcast_to(tgt, frames.shape), frames], axis=2), out / stem)
    metrics = {k: float(v[i]) for k, v in res.metrics.items()}
    metrics |= {"steps": int(res.steps[i]), "seconds": seconds, "terms": "+".join(res.terms),
                "wr_units": res.config["wr_units"]}
    history = res.loss_history[i]
    if tuned_sha256 is None:
        (out / f"{stem}{TUNED_SUFFIX}").unlink(missing_ok=True)
    write_latent_file(out / f"{stem}.npz", record=record, latent=res.latent[i], latent_init=res.latent_init[i],
                      space=res.space, generator=G.name, generator_sha256=G.sha256,
                      loss_history=history[~np.isnan(history)], config=res.config, metrics=metrics,
                      w=G.file_ws(res.latent[i], res.space), class_index=class_index, tuned_sha256=tuned_sha256,
                      **{f"noise_{j}": nz[i] for j, nz in enumerate(res.noise or [])})


class _Chunks:
    """Projects (and with `tuning`, tunes) chunks of targets and writes their outputs; a chunk
    that runs out of memory is split in halves and retried, and later chunks stay that small."""

    def __init__(self, G, out, cfg, rep, batch_size, classes, progress, records, encoder, tuning):
        self.G, self.out, self.cfg, self.rep, self.classes, self.encoder = G, out, cfg, rep, classes, encoder
        self.tuning = tuning
        self.batch_size, self.progress, self.records, self.n_todo = batch_size, progress, records, len(records)
        self.calls = self.finished = 0

    def run(self, stems: list[str], paths: list[Path], batch: torch.Tensor, init: torch.Tensor | None) -> None:
        c = self.G.class_labels([self.classes[s] for s in stems], self.cfg.space or self.G.default_space)
        left = math.ceil((self.n_todo - self.finished) / self.batch_size)
        cb = self.progress(self.calls, self.calls + left, stems) if self.progress else None
        self.calls += 1
        try:
            res = project(self.G, batch.to(self.G.device), stems, config=self.cfg, init=init, c=c,
                          encoder=self.encoder, progress=cb)
            tres = None
            if self.tuning is not None:   # progress counts on after the projection's steps
                res, tres = tune_projection(self.G, res, batch, c, self.tuning, self.cfg,
                                            cb and (lambda step, loss: cb(self.cfg.steps + step, loss)))
        except RuntimeError as e:
            if not is_oom(e):
                raise
            res = None   # retry outside the handler, so the failed attempt's tensors are freed
        if res is None:
            return self._split(stems, paths, batch, init)
        for i, stem in enumerate(stems):
            k = None if c is None else self.classes[stem]
            write_target(self.rep, self.out, stem, lambda: self._write(res, tres, i, batch[i], k))
        self.finished += len(stems)

    def _write(self, res: Result, tres, i: int, target: torch.Tensor, class_index: int | None) -> None:
        """Target i's outputs: its tuned weights first (when tuned), then write_outputs."""
        sha = None if tres is None else write_tuned(self.out, tres, i, self.G)
        write_outputs(self.out, res, i, target, self.G, res.seconds / len(res.names), self.records[res.names[i]],
                      class_index=class_index, tuned_sha256=sha)

    def _split(self, stems, paths, batch, init) -> None:
        if self.G.device.type == "cuda":
            torch.cuda.empty_cache()
        if len(stems) == 1:
            self.rep.errors.append(f"{paths[0]}: out of memory on {self.G.device} even alone; "
                                   "use fewer starts or a device with more memory")
            self.finished += 1
            return
        h = len(stems) // 2
        self.batch_size = min(self.batch_size, h)
        for part in (slice(0, h), slice(h, None)):
            self.run(stems[part], paths[part], batch[part], None if init is None else init[part])


def project_files(G: Generator, specs: list[str], out: Path, config: Config = PROJECTION, *,
                  batch_size: int | str = 16, init: str | Path | None = None, class_index: int | None = None,
                  encoder=None, tuning: Tuning | None = None, rank: int = 0, world: int = 1, progress=None,
                  **changes) -> Report:
    """Project every image of `specs` into G and write the outputs to `out`.

    Targets are sharded by rank (every world-th), skipped when their outputs are complete and
    were made with the same generator, target file and settings (else redone, and rep.notes says
    why), and streamed in chunks of batch_size ("auto": the largest that fits the device). Killed at any
    moment, a rerun finishes the job: outputs appear atomically, the .npz last, and the temp files
    of a killed write are removed. Under a torchrun process group, rank 0 merges the metrics once
    every rank is done; other sharded runs leave that to write_metrics(out, METRIC_COLUMNS).
    init: a start .npz for every target or a folder of <stem>.npz. class_index: the class of a
    conditional generator (default: each init file's own). encoder: a learned start for targets
    without init (see optimize.project). tuning: also tune G around each latent (runs.tune; images
    and metrics are then the tuned G's). changes: Config fields. progress: callable(chunk_index,
    n_chunks, stems) -> callback for `project` (or None; tuning's steps count on past config.steps).
    """
    cfg, out, rep = config.replace(**changes), Path(out), Report()
    if "lpips" in cfg.loss:
        require_lpips()
    check_writable(out)
    paths, rep.errors = find_images(specs)
    targets, dup_errors = assign_stems(paths)
    rep.errors += dup_errors
    targets = targets[rank::world]
    writes_metrics = world == 1 or rank == 0
    remove_stale_temps(out, {n for s, _ in targets for n in output_names(s)}
                       | ({"metrics.csv", "metrics.json"} if writes_metrics else set()))
    space = cfg.space or G.default_space
    init = Path(init) if init else None
    record = settings_record(G, cfg, class_index=class_index, init=init,
                             encoder=None if encoder is None or init else encoder.sha256, **Tuning.record(tuning))
    columns = METRIC_COLUMNS + (TUNE_COLUMNS if tuning else [])

    def inputs(p: Path) -> dict:
        own = {"target_sha256": input_sha256(p)}
        return own | ({"init": input_sha256(init / f"{p.stem}.npz")} if init and init.is_dir() else {})
    todo, rep.skipped, note = plan(out, targets, record, inputs)
    rep.notes += [note] if note else []
    inits, classes, init_errors = read_init(init, G, space, [s for s, _ in todo], class_index) if init \
        else (None, {}, [])
    rep.errors += init_errors
    if inits is not None:
        todo = [(s, p) for s, p in todo if s in inits]
    if batch_size == "auto":
        batch_size = auto_batch_size(G, len(todo), cfg.replace(starts=1) if inits else cfg, tuning)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ArgumentError("batch_size", batch_size, "give a whole number >= 1 or auto")
    classes = {s: classes.get(s, class_index) for s, _ in todo}
    G.class_labels(list(classes.values()), space)   # a missing or wrong class fails before any work
    chunks = _Chunks(G, out, cfg, rep, batch_size, classes, progress, {s: record | inputs(p) for s, p in todo},
                     None if init else encoder, tuning)
    try:
        _stream(chunks, todo, inits)
    except KeyboardInterrupt:
        rep.interrupted = True
    record = {k: v for k, v in record.items() if k != "init"} if init and init.is_dir() else record
    if world == 1:
        rep.metrics = write_metrics(out, columns, record, rep)
    elif distributed.active() and not rep.interrupted:
        distributed.barrier()
        rep.metrics = (write_metrics(out, columns, record, rep) if rank == 0
                       else collect_metrics(out, columns, record))
    if world == 1 or (rank == 0 and distributed.active()):
        write_folder_file(rep, out, "index.html", lambda: write_report(out, "project"))
    rep.summary = _summary(rep)
    return rep


def _stream(chunks: _Chunks, todo: list[tuple[str, Path]], inits: dict | None) -> None:
    """Load and project `todo` chunk by chunk: only one chunk of images is in memory at a time."""
    G, start = chunks.G, 0
    while start < len(todo):
        chunk = todo[start:start + chunks.batch_size]
        start += len(chunk)
        stems, paths, images = [], [], []
        for stem, p in chunk:
            try:
                images.append(load_image(p, G.resolution, channels=G.img_channels))
                stems.append(stem)
                paths.append(p)
            except LatentFitError as e:
                chunks.rep.errors.append(str(e))
        chunks.finished += len(chunk) - len(stems)
        if stems:
            chunks.run(stems, paths, torch.stack(images),
                       torch.from_numpy(np.stack([inits[s] for s in stems])) if inits else None)


def _summary(rep: Report) -> str:
    rows = [r for r in rep.metrics if r["target"] in set(rep.done)]
    med = f", median PSNR {np.median([r['psnr'] for r in rows]):.1f} dB" if rows else ""
    if rows and rows[0].get("psnr_pivot") is not None:
        med += (f" tuned (pivot {np.median([r['psnr_pivot'] for r in rows]):.1f} dB, locality "
                f"{np.median([r['locality_psnr'] for r in rows]):.1f} dB)")
    return (f"projected {len(rep.done)} target(s), skipped {len(rep.skipped)} complete, "
            f"{len(rep.errors)} failed{med}")
