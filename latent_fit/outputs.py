"""An output folder, the one owner of its targets' files: their names, what makes a target
complete and the record of what made it, writing them, reading one back (its latent, class,
record and the weights it renders with), the metrics tables, and the Report every runner returns."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import LatentFitError
from .faces import PhotoLink
from .files import assign_stems, atomic_write, file_sha256, find_files, input_sha256, remove_stale_temps
from .latents import check_compatible, file_class, read_latent_file, write_latent_file

# A target's files: <stem><suffix>. The .npz is written last and marks the target complete.
SUFFIXES = {
    "latent": ".npz",
    "image": ".png",
    "compare": "_compare.png",
    "video": ".mp4",
    "gif": ".gif",
    "tuned": ".tuned.safetensors",
    "aligned": "_aligned.png",  # the crop of a whole photo that was projected (--align)
    "photo": "_photo.png",  # the whole photo with the results pasted back (per photo: its largest face's stem)
    "original": "_original.png",  # the photo a crop was cut from, as uploaded to serve (its PhotoLink's file)
}
TABLES = ("metrics.csv", "metrics.json")


@dataclass
class Report:
    """What a runner did: the CLI prints `errors` one per line, then `summary`, and exits 1 on errors."""

    done: list[str] = field(default_factory=list)  # stems done now
    skipped: list[str] = field(default_factory=list)  # complete from an earlier run
    errors: list[str] = field(default_factory=list)  # one line each: "<input>: <reason>"
    written: list[Path] = field(default_factory=list)  # files written that are not per target
    metrics: list[dict] = field(default_factory=list)  # rows of the metrics table (all complete targets)
    summary: str = ""  # one line for the user
    notes: list[str] = field(default_factory=list)  # lines printed before the summary (what is redone, why)
    interrupted: bool = False  # stopped by Ctrl-C; a rerun finishes the job


@dataclass
class Target:
    """One target read back from its latent file: what renders it again."""

    stem: str
    path: Path  # its .npz
    data: dict  # read_latent_file's entries (latent, space, record, metrics, ...)
    latent: np.ndarray  # checked to fit the generator and space it was read for
    class_index: int | None  # its class (a given --class overrides the file's)
    weights: Path | None  # its tuned weights (project --tune); None: the generator's own
    noise: list[np.ndarray] | None = None  # its StyleGAN noise maps [*noise_shape] each; None: constant ones
    photo: PhotoLink | None = None  # the whole photo it was cut from (project --align)


def stored_noise(path: Path, data: dict, shapes: tuple[tuple[int, ...], ...]) -> list[np.ndarray] | None:
    """A latent file's noise maps (noise_0, noise_1, ...) if it holds any, checked to be one of
    each `shapes` (the generator's noise_shapes); None if it holds none (constant noise)."""
    found = sorted((k for k in data if k.startswith("noise_")), key=lambda k: (len(k), k))
    if not found:
        return None
    maps = [np.asarray(data[k]) for k in found]
    if (
        found != [f"noise_{i}" for i in range(len(shapes))]
        or [m.shape for m in maps] != [tuple(s) for s in shapes]
        or any(m.dtype.kind != "f" for m in maps)
    ):
        raise LatentFitError(
            f"{path}: its noise maps ({len(maps)}, of shapes {[list(m.shape) for m in maps]}) "
            f"do not fit this generator's {len(shapes)} noise inputs "
            f"{[list(s) for s in shapes]}"
        )
    if not all(np.isfinite(m).all() for m in maps):
        raise LatentFitError(f"{path}: its noise maps hold NaN or infinite values")
    return [m.astype(np.float32) for m in maps]


def settings_record(G, config, **inputs) -> dict:
    """What makes every target of a run: the generator, every Config field that changes a result
    (all but save_video), and `inputs` (files are recorded by sha256, other values as they are)."""
    rec = {"generator": G.name, "generator_sha256": G.sha256}
    rec |= {k: v for k, v in dataclasses.asdict(config).items() if k != "save_video"}
    for k, v in inputs.items():
        rec[k] = input_sha256(v) if isinstance(v, Path) else v
    return rec


def _show(v) -> str:
    return f"{v[:12]}…" if isinstance(v, str) and len(v) == 64 else repr(v) if isinstance(v, str) else f"{v}"


def difference(old: dict | None, new: dict) -> str | None:
    """The first setting in which a stored record differs from `new` ('wr 0 → 10'); None if none."""
    if not isinstance(old, dict):
        return "no record of its settings (made by an older latent-fit)"
    for k, v in new.items():
        if old.get(k) != v:
            return f"{k} {_show(old.get(k))} → {_show(v)}"
    return None


class OutputFolder:
    """A folder of targets' outputs (see SUFFIXES) and the folder's own files (TABLES, index.html)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def file(self, stem: str, kind: str = "latent") -> Path:
        return self.path / f"{stem}{SUFFIXES[kind]}"

    @staticmethod
    def names(stem: str) -> list[str]:
        """The files a target's outputs may have in the folder."""
        return [f"{stem}{suffix}" for suffix in SUFFIXES.values()]

    def check_writable(self) -> OutputFolder:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.path):  # nameless or unique: safe beside other ranks
                pass
        except OSError as e:
            raise LatentFitError(f"{self.path}: output folder is not writable ({e.strerror or e})") from None
        return self

    def remove_stale_temps(self, stems: list[str], tables: bool = True) -> None:
        """Temp files a killed run left while writing these targets' files (and the tables)."""
        remove_stale_temps(self.path, {n for s in stems for n in self.names(s)} | (set(TABLES) if tables else set()))

    def read_complete(self, stem: str) -> dict | None:
        """A target's latent file if its outputs are complete (the .npz, written last, reads back,
        and a tuned target's weights file is the one its .npz records)."""
        if not all(self.file(stem, k).is_file() for k in ("latent", "image", "compare")):
            return None
        try:
            data = read_latent_file(self.file(stem))
        except LatentFitError:
            return None
        tuned = data.get("tuned_sha256")
        return data if tuned is None or input_sha256(self.file(stem, "tuned")) == tuned else None

    def is_complete(self, stem: str) -> bool:
        return self.read_complete(stem) is not None

    def weights(self, stem: str, data: dict) -> Path | None:
        """The tuned weights a latent file renders with: None when its .npz records none (a tuned
        file left beside it is then ignored); else <stem>.tuned.safetensors, which must still
        have the recorded sha256, or one error line."""
        sha = data.get("tuned_sha256")
        if sha is None:
            return None
        f = self.file(stem, "tuned")
        if input_sha256(f) != sha:
            raise LatentFitError(
                f"{f}: the tuned weights {stem}.npz was made with are "
                f"{'changed' if f.exists() else 'missing'}; rerun project --tune for it"
            )
        return f

    def read_target(
        self, stem: str, G, space: str, class_index: int | None = None, path: Path | None = None, weights: bool = True
    ) -> Target:
        """Target `stem` of this folder (its latent file: `path`, default <stem>.npz), checked to
        fit G in `space`, with the noise maps it renders with; without `weights` its tuned weights
        are not looked for. One error line if it does not fit."""
        path = path or self.file(stem)
        data = read_latent_file(path)
        latent = check_compatible(path, data, G.name, G.latent_shape(space), space, G.sha256)
        return Target(
            stem,
            path,
            data,
            latent,
            file_class(path, data, G, class_index),
            self.weights(stem, data) if weights else None,
            stored_noise(path, data, G.noise_shapes),
            PhotoLink.read(path, data),
        )

    def plan(self, items: list[tuple[str, Path]], record: dict, inputs) -> tuple[list, list[str], str | None]:
        """Split (stem, path) items into (todo, skipped stems, note): a target is skipped only when
        its outputs are complete and were made by the same record (the run's `record` plus
        inputs(stem, path) -> that target's own entries). The note says how many are redone and the
        first difference of the first of them."""
        todo, skipped, stale = [], [], []
        for stem, p in items:
            data = self.read_complete(stem)
            why = "incomplete" if data is None else difference(data.get("record"), record | inputs(stem, p))
            if why is None:
                skipped.append(stem)
                continue
            todo.append((stem, p))
            stale += [why] if data is not None else []
        note = f"redoing {len(stale)} target(s) made with other settings: {stale[0]}" if stale else None
        return todo, skipped, note

    def write_target(self, rep: Report, stem: str, write) -> None:
        """Run write() for one target; a failed write (disk full, permissions) becomes its error line."""
        try:
            write()
            rep.done.append(stem)
        except OSError as e:
            rep.errors.append(f"{self.path / stem}: could not write outputs ({e.strerror or e})")

    def write_projection(
        self,
        G,
        res,
        i: int,
        target,
        seconds: float,
        record: dict,
        panels: list | None = None,
        class_index: int | None = None,
        tuned_sha256: str | None = None,
        photo: PhotoLink | None = None,
    ) -> None:
        """Row i of a projection or edit `res`: PNG, comparison strip (`panels`, default target |
        result | difference), the video when frames were kept, then the .npz last (it marks
        completion, and holds the `record` of what made it, `class_index` when a class was used,
        `tuned_sha256`, the sha256 of the tuned weights written before, which render it (without
        one, a tuned file left from an earlier run is removed) and the entries of `photo`, the
        whole photo the target was cut from)."""
        from .images import difference as diff_image
        from .images import grid, save_png, save_video, to_uint8

        stem = res.names[i]
        proj, tgt = to_uint8(res.images[i : i + 1])[0], to_uint8(target[None])[0]
        save_png(proj, self.file(stem, "image"))
        save_png(grid([panels or [tgt, proj, diff_image(tgt, proj)]]), self.file(stem, "compare"))
        if res.frames is not None:
            frames = res.frames[:, i]
            save_video(np.concatenate([np.broadcast_to(tgt, frames.shape), frames], axis=2), self.path / stem)
        metrics = {k: float(v[i]) for k, v in res.metrics.items()}
        metrics |= {
            "steps": int(res.steps[i]),
            "seconds": seconds,
            "terms": "+".join(res.terms),
            "wr_units": res.config["wr_units"],
        }
        metrics |= {"photo": photo.path, "photo_face": photo.face} if photo else {}
        history = res.loss_history[i]
        if tuned_sha256 is None:
            self.file(stem, "tuned").unlink(missing_ok=True)
        write_latent_file(
            self.file(stem),
            record=record,
            latent=res.latent[i],
            latent_init=res.latent_init[i],
            space=res.space,
            generator=G.name,
            generator_sha256=G.sha256,
            loss_history=history[~np.isnan(history)],
            config=res.config,
            metrics=metrics,
            w=G.file_ws(res.latent[i], res.space),
            class_index=class_index,
            tuned_sha256=tuned_sha256,
            **{f"noise_{j}": nz[i] for j, nz in enumerate(res.noise or [])},
            **(photo.entries() if photo else {}),
        )

    def write_aligned(self, stem: str, crop: np.ndarray | None) -> None:
        """<stem>_aligned.png, the crop of a photo a target projects (uint8 HWC); None removes one
        left by an earlier run. Before the target's .npz."""
        from .images import save_png

        if crop is None:
            self.file(stem, "aligned").unlink(missing_ok=True)
        else:
            save_png(crop, self.file(stem, "aligned"))

    def write_tuned(self, G, tres, i: int) -> str:
        """Target i's tuned weights (Δθ in fp16, atomically); its sha256, which the target's .npz
        records (written after it: the .npz marks completion)."""
        from .generators.tuned import save_tuned
        from .lowrank import pick

        path = self.file(tres.names[i], "tuned")
        save_tuned(
            path,
            pick(tres.delta, i),
            G,
            tres.settings,
            {k: float(v[i]) for k, v in tres.metrics.items()},
        )
        return file_sha256(path)

    def copy_tuned(self, src: Path, stem: str) -> str:
        """Put the tuned file `src` beside target `stem` (atomically; nothing to do when it is
        already there); its sha256."""
        dst = self.file(stem, "tuned")
        if not (dst.exists() and dst.samefile(src)):
            atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))
        return file_sha256(dst)

    def collect_metrics(self, columns: list[str], record: dict | None = None) -> list[dict]:
        """Metric rows (`columns`, the first the target) of every complete target; with a run's
        `record`, only those made with its settings (their own inputs may differ)."""
        rows = []
        for npz in sorted(self.path.glob("*.npz")):
            try:
                data = read_latent_file(npz)
            except LatentFitError:
                continue
            m, old = data.get("metrics"), data.get("record")
            if record is not None and (not isinstance(old, dict) or difference(old, record)):
                continue
            if isinstance(m, dict) and "psnr" in m:
                rows.append({"target": npz.stem} | {k: m.get(k) for k in columns[1:]})
        for r in rows:
            r.update({k: None for k, v in r.items() if isinstance(v, float) and math.isnan(v)})
        return rows

    def write_metrics(self, columns: list[str], record: dict | None = None, rep: Report | None = None) -> list[dict]:
        """metrics.csv and metrics.json (`columns`, the first the target) from every complete
        target made with `record`'s settings (this run, earlier runs and other ranks alike). With
        `rep`, a failed write (a full disk) becomes one error line naming the folder."""
        rows = self.collect_metrics(columns, record)

        def write():
            write_csv(self.path / "metrics.csv", columns, rows)
            atomic_write(self.path / "metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=1)))

        if rep is None:
            write()
        else:
            self.write_file(rep, "metrics.csv / metrics.json", write)
        return rows

    def write_file(self, rep: Report, what: str, write) -> None:
        """Run write() for a file of the whole folder; a failed write (a full disk) becomes one
        error line naming the folder."""
        try:
            write()
        except OSError as e:
            rep.errors.append(
                f"{self.path}: could not write {what} ({e.strerror or e}); free space and rerun the same command"
            )


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    """A CSV of `columns` (other keys ignored) written atomically; None and NaN as empty cells."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, columns, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(
        [{k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in r.items()} for r in rows]
    )
    atomic_write(
        path, lambda tmp: Path(tmp).write_text(buf.getvalue(), encoding="utf-8", errors="surrogateescape")
    )  # names as their files


def claim_outputs(items: list[tuple[str, Path]]) -> tuple[list[tuple[str, Path]], list[str]]:
    """Items whose output names do not collide with an earlier item's (targets a.png and
    a_compare.png would both write a_compare.png): a colliding one is an error line."""
    owner: dict[str, Path] = {}
    kept, errors = [], []
    for stem, p in items:
        names = OutputFolder.names(stem)
        clash = next((n for n in names if n in owner), None)
        if clash is not None:
            errors.append(f"{p}: its outputs would overwrite {clash} of {owner[clash]}; rename one")
            continue
        owner |= {n: p for n in names}
        kept.append((stem, p))
    return kept, errors


def read_targets(
    specs: list[str], G, space: str | None = None, class_index: int | None = None, weights: bool = True
) -> tuple[list[Target], str, list[str]]:
    """(targets, space, error lines) of the latent files in `specs` (files, folders, globs) that
    fit G, each with the weights it renders with (weights: as OutputFolder.read_target); space:
    the first file's unless given."""
    paths, errors = find_files(specs, {".npz"}, "latent files")
    items, dup_errors = assign_stems(paths)
    errors += dup_errors
    targets = []
    for _, p in items:
        try:
            if space is None:
                first = read_latent_file(p)["space"]
                space = first if first in G.spaces else G.default_space
            targets.append(OutputFolder(p.parent).read_target(p.stem, G, space, class_index, p, weights))
        except LatentFitError as e:
            errors.append(str(e))
    return targets, space or G.default_space, errors


def read_starts(
    spec: Path, G, space: str, stems: list[str], class_index: int | None = None, weights: bool = True
) -> tuple[dict[str, Target], list[str]]:
    """Start latents (`--init`) by target stem, and error lines: one latent file for every stem
    (its errors raise: they concern every target), or a folder of <stem>.npz matched by stem (a
    missing or unreadable file is that target's error line). weights: as OutputFolder.read_target."""
    spec = Path(spec)
    if not spec.is_dir():
        one = OutputFolder(spec.parent).read_target(spec.stem, G, space, class_index, spec, weights)
        return {s: dataclasses.replace(one, stem=s) for s in stems}, []
    folder = OutputFolder(spec)
    if stems and not any(folder.file(s).exists() for s in stems):
        raise LatentFitError(f"{spec}: no <stem>.npz there matches a target")
    starts, errors = {}, []
    for s in stems:
        try:
            if not (folder.file(s).exists() or folder.file(s).is_symlink()):
                raise LatentFitError(f"{folder.file(s)}: no start latent for target {s}")
            starts[s] = folder.read_target(s, G, space, class_index, weights=weights)
        except LatentFitError as e:
            errors.append(str(e))
    return starts, errors


def target_noise(G, targets: list[Target]) -> list[np.ndarray] | None:
    """The targets' noise maps stacked per noise input of G ([N, *noise_shape] each; a target
    without stored maps gets G's constant ones), so each renders as its projection did; None
    when none has any."""
    if all(t.noise is None for t in targets):
        return None
    const = [m.detach().cpu().numpy() for m in G.const_noise()]
    return [np.stack([const[i] if t.noise is None else t.noise[i] for t in targets]) for i in range(len(const))]


def by_weights(G, targets: list[Target], batch_size: int, errors: list[str]):
    """(index, count, generator, chunk) for chunks of at most batch_size targets that render with
    the same weights (Target.weights: None for G's own, else its tuned file applied to G), in the
    order the weights first appear; a tuned file that does not fit G is one error line and its
    targets are left out."""
    from .generators.tuned import apply_tuned

    groups: dict[Path | None, list[Target]] = {}
    for t in targets:
        groups.setdefault(t.weights, []).append(t)
    chunks = [(w, g[i : i + batch_size]) for w, g in groups.items() for i in range(0, len(g), batch_size)]
    current, Gk = None, G  # chunks of one weights are consecutive: one tuned copy at a time
    for k, (weights, chunk) in enumerate(chunks):
        if weights != current:
            current = weights
            try:
                Gk = G if weights is None else apply_tuned(G, weights)
            except LatentFitError as e:
                errors.append(str(e))
                Gk = None
        if Gk is not None:
            yield k, len(chunks), Gk, chunk


def tuned_note(targets: list, done: list[str]) -> str:
    """The summary's mention of the tuned weights used."""
    n = len({t.stem for t in targets if t.weights is not None} & set(done))
    return f", used tuned weights for {n} target(s)" if n else ""
