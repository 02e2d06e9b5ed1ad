"""`latent-fit project` over files: targets in chunks, outputs written atomically, resume by
skipping what is complete, per-input errors that never stop the batch, merged metrics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..config import Config, Tuning, projection_config
from ..devices import free_memory, is_oom, memory_fit
from ..errors import ArgumentError, LatentFitError
from ..files import assign_stems, input_sha256
from ..generators.base import Generator
from ..images import find_images, to_uint8
from ..objective import require_lpips
from ..optimize import Result, project
from ..outputs import OutputFolder, Report, claim_outputs, read_starts, settings_record, target_noise
from ..photos import Alignment, Crops, paste_photos
from ..report import write_report
from ..tuning import TUNE_COLUMNS, resolved, tune_projection, tuning_bytes

METRIC_COLUMNS = [
    "target",
    "mse",
    "psnr",
    "lpips",
    "dz_norm",
    "wr",
    "wr_units",
    "wr_factor",
    "wr_effective",
    "jacobian_norm",
    "id_similarity",
    "steps",
    "sample_steps",
    "seconds",
    "terms",
    "photo",
    "photo_face",
]
CPU_CHUNK_BYTES = 256 * 2**20  # batch_size auto on CPU: throughput stops growing long before
# RAM fills, and a smaller chunk loses less work when killed


def auto_batch_size(G: Generator, n_targets: int, config: Config, tuning: Tuning | None = None) -> int:
    """The largest chunk of targets whose projection steps (and with `tuning`, tuning steps)
    fit the device's memory; on CPU a chunk plans for at most CPU_CHUNK_BYTES."""
    budget = CPU_CHUNK_BYTES if G.device.type == "cpu" else free_memory(G.device)
    per, fit = memory_fit(G, config, budget)
    if tuning is not None:
        fit = min(fit, budget // tuning_bytes(G, per // config.starts, resolved(G, tuning).tune_rank))
    return max(1, min(n_targets, fit))


class _Chunks:
    """Projects (and with `tuning`, tunes) chunks of targets and writes their outputs; a chunk
    that runs out of memory is split in halves and retried, and later chunks stay that small."""

    def __init__(self, G, folder, cfg, rep, batch_size, classes, progress, records, encoder, tuning, alignment, links):
        self.G, self.folder, self.cfg, self.rep, self.classes, self.encoder = G, folder, cfg, rep, classes, encoder
        self.tuning, self.alignment, self.crops = tuning, alignment, Crops(links, G.resolution, G.img_channels)
        self.batch_size, self.progress, self.records, self.n_todo = batch_size, progress, records, len(records)
        self.calls = self.finished = 0

    def run(
        self,
        stems: list[str],
        paths: list[Path],
        batch: torch.Tensor,
        init: torch.Tensor | None,
        noise: list[torch.Tensor] | None = None,
    ) -> None:
        c = self.G.class_labels([self.classes[s] for s in stems], self.cfg.space or self.G.default_space)
        left = math.ceil((self.n_todo - self.finished) / self.batch_size)
        cb = self.progress(self.calls, self.calls + left, stems) if self.progress else None
        self.calls += 1
        try:
            res = project(
                self.G,
                batch.to(self.G.device),
                stems,
                config=self.cfg,
                init=init,
                c=c,
                noise=noise,
                encoder=self.encoder,
                progress=cb,
            )
            tres, ids = None, self.alignment.id_similarity(batch, res.images)
            if self.tuning is not None:  # progress counts on after the projection's steps
                pivot_ids = ids
                res, tres = tune_projection(
                    self.G,
                    res,
                    batch,
                    c,
                    self.tuning,
                    self.cfg,
                    cb and (lambda step, loss: cb(self.cfg.steps + step, loss)),
                )
                ids = self.alignment.id_similarity(batch, res.images)
                res.metrics |= {} if ids is None else {"id_similarity_pivot": pivot_ids}
            res.metrics |= {} if ids is None else {"id_similarity": ids}
        except RuntimeError as e:
            if not is_oom(e):
                raise
            res = None  # retry outside the handler, so the failed attempt's tensors are freed
        if res is None:
            return self._split(stems, paths, batch, init, noise)
        for i, stem in enumerate(stems):
            k = None if c is None else self.classes[stem]
            self.folder.write_target(self.rep, stem, lambda: self._write(res, tres, i, batch[i], k))
        self.finished += len(stems)

    def _write(self, res: Result, tres, i: int, target: torch.Tensor, class_index: int | None) -> None:
        """Target i's outputs: its tuned weights first (when tuned), its crop when cut from a
        photo, then the rest."""
        photo = self.crops.links.get(res.names[i])
        self.folder.write_aligned(res.names[i], None if photo is None else to_uint8(target[None])[0])
        sha = None if tres is None else self.folder.write_tuned(self.G, tres, i)
        self.folder.write_projection(
            self.G,
            res,
            i,
            target,
            res.seconds / len(res.names),
            self.records[res.names[i]],
            class_index=class_index,
            tuned_sha256=sha,
            photo=photo,
        )

    def _split(self, stems, paths, batch, init, noise) -> None:
        if self.G.device.type == "cuda":
            torch.cuda.empty_cache()
        if len(stems) == 1:
            self.rep.errors.append(
                f"{paths[0]}: out of memory on {self.G.device} even alone; "
                "use fewer starts or a device with more memory"
            )
            self.finished += 1
            return
        h = len(stems) // 2
        self.batch_size = min(self.batch_size, h)
        for part in (slice(0, h), slice(h, None)):
            self.run(
                stems[part],
                paths[part],
                batch[part],
                None if init is None else init[part],
                None if noise is None else [m[part] for m in noise],
            )


def project_files(
    G: Generator,
    specs: list[str],
    out: Path,
    config: Config | None = None,
    *,
    batch_size: int | str = 16,
    init: str | Path | None = None,
    class_index: int | None = None,
    encoder=None,
    tuning: Tuning | None = None,
    align: str = "auto",
    template: str | Path | None = None,
    max_faces: int | None = None,
    rank: int = 0,
    world: int = 1,
    progress=None,
    **changes,
) -> Report:
    """Project every image of `specs` into G and write the outputs to `out`.

    Targets are sharded by rank (every world-th), skipped when complete and made with the same
    generator, target file and settings (else redone; rep.notes says why), and streamed in chunks
    of batch_size ("auto": the largest that fits); a rerun finishes a killed job. Under torchrun,
    rank 0 merges the metrics once every rank is done (else OutputFolder(out).write_metrics).
    init: a start .npz for every target or a folder of <stem>.npz (with its noise maps).
    class_index: a conditional generator's class (default: each init file's). encoder: a learned
    start. tuning: also tune G around each latent (the images and metrics are the tuned G's).
    align, template, max_faces: photos become one target per face (photos.Alignment.of), and come
    back as <stem>_photo.png. changes: Config fields. progress: callable(chunk_index, n_chunks,
    stems) -> callback for `project` (tuning's steps count on past config.steps)."""
    cfg = projection_config(config, encoded=encoder is not None and not init, **changes)
    folder, rep = OutputFolder(out), Report()
    if "lpips" in cfg.loss:
        require_lpips()
    alignment, note = Alignment.of(G, align, template, max_faces)
    rep.notes += [note] if note else []
    targets, links = _targets(folder.check_writable(), specs, rank, world, rep, alignment)
    space, init = cfg.space or G.default_space, Path(init) if init else None
    record = _record(G, cfg, class_index, init, encoder, tuning, alignment)
    inputs = _inputs(init)
    todo, rep.skipped, note = folder.plan(targets, record, inputs)
    rep.notes += [note] if note else []
    todo, starts = _with_starts(todo, init, G, space, class_index, rep)
    batch_size = _batch_size(batch_size, G, len(todo), cfg.replace(starts=1) if starts else cfg, tuning)
    classes = {s: starts[s].class_index if starts else class_index for s, _ in todo}
    G.class_labels(list(classes.values()), space)  # a missing or wrong class fails before any work
    records = {s: record | inputs(s, p) for s, p in todo}
    encoder = None if init else encoder
    chunks = _Chunks(G, folder, cfg, rep, batch_size, classes, progress, records, encoder, tuning, alignment, links)
    try:
        _stream(chunks, todo, starts)
    except KeyboardInterrupt:
        rep.interrupted = True
    rep.written += paste_photos(folder, links, set(rep.done), rep.notes)
    record = {k: v for k, v in record.items() if k != "init"} if init and init.is_dir() else record
    columns = METRIC_COLUMNS + (TUNE_COLUMNS + ["id_similarity_pivot"] if tuning else [])
    _tables(folder, rep, columns, record, rank, world)
    rep.summary = _summary(rep)
    return rep


def _record(G, cfg: Config, class_index, init: Path | None, encoder, tuning: Tuning | None, alignment) -> dict:
    """What makes every target of the run (outputs.settings_record)."""
    encoded = None if encoder is None or init else encoder.sha256
    return settings_record(
        G,
        cfg,
        class_index=class_index,
        init=init,
        encoder=encoded,
        **Tuning.record(None if tuning is None else resolved(G, tuning)),  # the values tune() will use
        **alignment.record(),
    )


def _inputs(init: Path | None):
    """(stem, image) -> what of a target's record is its own: its image's sha256, and with a
    folder of starts its start's (<stem>.npz: a face cut from a photo has its own)."""

    def inputs(stem: str, p: Path) -> dict:
        own = {"target_sha256": input_sha256(p)}
        return own | ({"init": input_sha256(init / f"{stem}.npz")} if init and init.is_dir() else {})

    return inputs


def _with_starts(todo: list, init: Path | None, G: Generator, space: str, class_index: int | None, rep: Report):
    """(todo, stem -> its --init start Target, or None without init): targets whose start cannot
    be read are left out, each an error line."""
    if init is None:
        return todo, None
    starts, errors = read_starts(init, G, space, [s for s, _ in todo], class_index, weights=False)
    rep.errors += errors
    return [(s, p) for s, p in todo if s in starts], starts


def _batch_size(batch_size: int | str, G: Generator, n: int, config: Config, tuning: Tuning | None) -> int:
    """batch_size as given, or with "auto" the largest chunk of n targets that fits (auto_batch_size)."""
    if batch_size == "auto":
        return auto_batch_size(G, n, config, tuning)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ArgumentError("batch_size", batch_size, "give a whole number >= 1 or auto")
    return batch_size


def _targets(folder: OutputFolder, specs: list[str], rank: int, world: int, rep: Report, alignment: Alignment):
    """(this rank's (stem, image) targets, each with outputs of its own; stem -> PhotoLink of the
    faces cut from photos); the temp files a killed run left while writing them (and the tables,
    on the rank that writes them) are removed."""
    paths, rep.errors = find_images(specs)
    targets, dup_errors = assign_stems(paths)
    targets, clash_errors = claim_outputs(targets)
    rep.errors += dup_errors + clash_errors
    targets, links = alignment.cut(targets[rank::world], rep.errors, rep.notes)
    targets, clash_errors = claim_outputs(targets)
    rep.errors += clash_errors
    folder.remove_stale_temps([s for s, _ in targets], tables=world == 1 or rank == 0)
    return targets, links


def _tables(folder: OutputFolder, rep: Report, columns: list[str], record: dict, rank: int, world: int) -> None:
    """The metrics tables and index.html: by a lone run, or under a process group by rank 0
    once every rank is done (other ranks read the merged rows)."""
    if world == 1:
        rep.metrics = folder.write_metrics(columns, record, rep)
    elif distributed.active() and not rep.interrupted:
        distributed.barrier()
        rep.metrics = (
            folder.write_metrics(columns, record, rep) if rank == 0 else folder.collect_metrics(columns, record)
        )
    if world == 1 or (rank == 0 and distributed.active()):
        folder.write_file(rep, "index.html", lambda: write_report(folder.path, "project"))


def _stream(chunks: _Chunks, todo: list[tuple[str, Path]], starts: dict | None) -> None:
    """Load and project `todo` chunk by chunk: only one chunk of images is in memory at a time."""
    G, start = chunks.G, 0
    while start < len(todo):
        chunk = todo[start : start + chunks.batch_size]
        start += len(chunk)
        stems, paths, images = [], [], []
        for stem, p in chunk:
            try:
                images.append(chunks.crops.load(stem, p))
                stems.append(stem)
                paths.append(p)
            except LatentFitError as e:
                chunks.rep.errors.append(str(e))
        chunks.finished += len(chunk) - len(stems)
        if stems and starts:  # the start's noise maps start the optimized ones
            noise = target_noise(G, [starts[s] for s in stems])
            chunks.run(
                stems,
                paths,
                torch.stack(images),
                torch.from_numpy(np.stack([starts[s].latent for s in stems])),
                None if noise is None else [torch.from_numpy(m) for m in noise],
            )
        elif stems:
            chunks.run(stems, paths, torch.stack(images), None)


def _summary(rep: Report) -> str:
    rows = [r for r in rep.metrics if r["target"] in set(rep.done)]
    med = f", median PSNR {np.median([r['psnr'] for r in rows]):.1f} dB" if rows else ""
    if rows and rows[0].get("psnr_pivot") is not None:
        med += (
            f" tuned (pivot {np.median([r['psnr_pivot'] for r in rows]):.1f} dB, locality "
            f"{np.median([r['locality_psnr'] for r in rows]):.1f} dB)"
        )
    return f"projected {len(rep.done)} target(s), skipped {len(rep.skipped)} complete, {len(rep.errors)} failed{med}"
