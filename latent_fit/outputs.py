"""An output folder: atomic writes, what makes a target complete, resume after a kill, the
metrics tables, and the Report every runner returns."""

from __future__ import annotations

import csv
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


@dataclass
class Report:
    """What a runner did: the CLI prints `errors` one per line, then `summary`, and exits 1 on errors."""

    done: list[str] = field(default_factory=list)      # stems done now
    skipped: list[str] = field(default_factory=list)   # complete from an earlier run
    errors: list[str] = field(default_factory=list)    # one line each: "<input>: <reason>"
    written: list[Path] = field(default_factory=list)  # files written that are not per target
    metrics: list[dict] = field(default_factory=list)  # rows of the metrics table (all complete targets)
    summary: str = ""                                  # one line for the user


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


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):   # nameless or unique: safe beside other ranks
            pass
    except OSError as e:
        raise LatentFitError(f"{out}: output folder is not writable ({e.strerror or e})") from None


def is_complete(out: Path, stem: str) -> bool:
    """A target's outputs are complete when the .npz (written last) reads back."""
    from .latents import read_latent_file
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


def collect_metrics(out: Path, columns: list[str]) -> list[dict]:
    """Metric rows (`columns`, the first the target) of every complete target in `out`."""
    from .latents import read_latent_file
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
    atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue()))


def write_metrics(out: Path, columns: list[str]) -> list[dict]:
    """metrics.csv and metrics.json (`columns`, the first the target) from every complete target
    in `out` (this run, earlier runs and other ranks alike)."""
    rows = collect_metrics(out, columns)
    write_csv(out / "metrics.csv", columns, rows)
    atomic_write(out / "metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=1)))
    return rows
