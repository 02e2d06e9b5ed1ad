"""An output folder: atomic writes, what makes a target complete, resume after a kill, the
metrics tables, and the Report every runner returns."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LatentFitError

_UMASK = os.umask(0)
os.umask(_UMASK)
# atomic_write's temp files: .<name>.<random>.tmp<suffix>
_TEMP = re.compile(r"^\.(?P<name>.+)\.[^.]+\.tmp(\.[^.]+)?$")
TUNED_SUFFIX = ".tuned.safetensors"   # <stem>.tuned.safetensors: a target's tuned weights (project --tune)


@dataclass
class Report:
    """What a runner did: the CLI prints `errors` one per line, then `summary`, and exits 1 on errors."""

    done: list[str] = field(default_factory=list)      # stems done now
    skipped: list[str] = field(default_factory=list)   # complete from an earlier run
    errors: list[str] = field(default_factory=list)    # one line each: "<input>: <reason>"
    written: list[Path] = field(default_factory=list)  # files written that are not per target
    metrics: list[dict] = field(default_factory=list)  # rows of the metrics table (all complete targets)
    summary: str = ""                                  # one line for the user
    notes: list[str] = field(default_factory=list)     # lines printed before the summary (what is redone, why)
    interrupted: bool = False                          # stopped by Ctrl-C; a rerun finishes the job


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path) then rename onto `path`: readers never see a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_target(rep: Report, out: Path, stem: str, write) -> None:
    """Run write() for one target; a failed write (disk full, permissions) becomes its error line."""
    try:
        write()
        rep.done.append(stem)
    except OSError as e:
        rep.errors.append(f"{out / stem}: could not write outputs ({e.strerror or e})")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def input_sha256(path: Path | None) -> str | None:
    """sha256 of a regular input file; None for anything else (missing, a folder, a FIFO)."""
    try:
        return file_sha256(path) if path is not None and Path(path).is_file() else None
    except OSError:
        return None


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


def plan(out: Path, items: list[tuple[str, Path]], record: dict, inputs) -> tuple[list, list[str], str | None]:
    """Split (stem, path) items into (todo, skipped stems, note): a target is skipped only when its
    outputs are complete and were made by the same record (the run's `record` plus
    inputs(path) -> that target's own entries). The note says how many are redone and the first
    difference of the first of them."""
    todo, skipped, stale = [], [], []
    for stem, p in items:
        data = read_complete(out, stem)
        if data is None:
            todo.append((stem, p))
            continue
        why = difference(data.get("record"), record | inputs(p))
        if why is None:
            skipped.append(stem)
        else:
            stale.append(why)
            todo.append((stem, p))
    note = f"redoing {len(stale)} target(s) made with other settings: {stale[0]}" if stale else None
    return todo, skipped, note


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):   # nameless or unique: safe beside other ranks
            pass
    except OSError as e:
        raise LatentFitError(f"{out}: output folder is not writable ({e.strerror or e})") from None


def read_complete(out: Path, stem: str) -> dict | None:
    """A target's latent file if its outputs are complete (the .npz, written last, reads back,
    and a tuned target's weights file is the one its .npz records)."""
    from .latents import read_latent_file
    npz = out / f"{stem}.npz"
    if not (npz.is_file() and (out / f"{stem}.png").is_file() and (out / f"{stem}_compare.png").is_file()):
        return None
    try:
        data = read_latent_file(npz)
    except LatentFitError:
        return None
    tuned = data.get("tuned_sha256")
    return data if tuned is None or input_sha256(out / f"{stem}{TUNED_SUFFIX}") == tuned else None


def is_complete(out: Path, stem: str) -> bool:
    return read_complete(out, stem) is not None


def output_names(stem: str) -> list[str]:
    """The files a target's outputs may have in the output folder."""
    return [f"{stem}.npz", f"{stem}.png", f"{stem}_compare.png", f"{stem}.mp4", f"{stem}.gif",
            f"{stem}{TUNED_SUFFIX}"]


def remove_stale_temps(out: Path, names: set[str]) -> None:
    """Delete temp files a killed run left behind while writing one of `names` (only those:
    other ranks may be writing theirs right now)."""
    for p in out.iterdir():
        m = _TEMP.match(p.name)
        if m and m["name"] in names:
            p.unlink(missing_ok=True)


def collect_metrics(out: Path, columns: list[str], record: dict | None = None) -> list[dict]:
    """Metric rows (`columns`, the first the target) of every complete target in `out`; with a
    run's `record`, only those made with its settings (their own inputs may differ)."""
    from .latents import read_latent_file
    rows = []
    for npz in sorted(out.glob("*.npz")):
        try:
            data = read_latent_file(npz)
        except LatentFitError:
            continue
        m = data.get("metrics")
        old = data.get("record")
        if record is not None and (not isinstance(old, dict) or difference(old, record)):
            continue
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


def write_metrics(out: Path, columns: list[str], record: dict | None = None, rep: Report | None = None) -> list[dict]:
    """metrics.csv and metrics.json (`columns`, the first the target) from every complete target
    in `out` made with `record`'s settings (this run, earlier runs and other ranks alike). With
    `rep`, a failed write (a full disk) becomes one error line naming the folder."""
    rows = collect_metrics(out, columns, record)

    def write():
        write_csv(out / "metrics.csv", columns, rows)
        atomic_write(out / "metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=1)))
    if rep is None:
        write()
    else:
        write_folder_file(rep, out, "metrics.csv / metrics.json", write)
    return rows


def write_folder_file(rep: Report, out: Path, what: str, write) -> None:
    """Run write() for a file of the whole folder; a failed write (a full disk) becomes one error
    line naming the folder."""
    try:
        write()
    except OSError as e:
        rep.errors.append(f"{out}: could not write {what} ({e.strerror or e}); free space and rerun the same command")
