"""The ground floor for files: atomic writes, sha256, finding input files and their stems.
Nothing here knows images, latents or generators."""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import re
import stat
import tempfile
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)
# atomic_write's temp files: .<name>.<random>.tmp<suffix>
_TEMP = re.compile(r"^\.(?P<name>.+)\.[^.]+\.tmp(\.[^.]+)?$")


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


def remove_stale_temps(out: Path, names: set[str]) -> None:
    """Delete temp files a killed run left behind while writing one of `names` (only those:
    other ranks may be writing theirs right now)."""
    for p in out.iterdir():
        m = _TEMP.match(p.name)
        if m and m["name"] in names:
            p.unlink(missing_ok=True)


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


def file_problem(path: Path) -> str | None:
    """Why `path` cannot be read as a file (a folder, FIFO, device, socket, broken symlink or
    symlink loop), or None for a regular file or one that does not exist."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "broken symlink" if path.is_symlink() else None
    except OSError as e:
        return e.strerror.lower() if e.errno == errno.ELOOP else f"cannot read ({e.strerror})"
    if stat.S_ISREG(mode):
        return None
    return {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket"}.get(
        stat.S_IFMT(mode), "a device"
    ) + ", not a file"


def find_files(specs: list[str], suffixes: set[str], what: str) -> tuple[list[Path], list[str]]:
    """Expand files, folders (their files with these suffixes, sorted) and globs; `what` names
    the kind in errors. Returns (paths, errors); an error line for each path that is not a
    regular file (a folder named x.png, a FIFO, a symlink loop, ...)."""
    paths, errors = [], []

    def add(found: list[Path]) -> None:
        for q in found:
            problem = file_problem(q)
            if problem:
                errors.append(f"{q}: {problem}")
            else:
                paths.append(q)

    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in suffixes)
            if not found:
                errors.append(f"{spec}: folder has no {what} ({', '.join(sorted(suffixes))})")
            add(found)
        elif p.exists() or p.is_symlink():
            add([p])
        elif any(ch in spec for ch in "*?["):
            found = sorted(Path(q) for q in glob.glob(spec, recursive=True) if Path(q).suffix.lower() in suffixes)
            if not found:
                errors.append(f"{spec}: pattern matches no {what}")
            add(found)
        else:
            errors.append(f"{spec}: file not found")
    return list(dict.fromkeys(paths)), errors


def assign_stems(paths: list[Path]) -> tuple[list[tuple[str, Path]], list[str]]:
    """(stem, path) per input file; a stem seen twice is an error for the later file."""
    seen: dict[str, Path] = {}
    errors = []
    for p in paths:
        if p.stem in seen:
            errors.append(f"{p}: same name as {seen[p.stem]}; outputs would collide, rename one")
        else:
            seen[p.stem] = p
    return list(seen.items()), errors
