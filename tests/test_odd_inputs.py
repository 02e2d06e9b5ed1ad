"""Odd inputs to `latent-fit project` and `edit`: each gets one error line, the rest of the batch
goes on, and nothing is decoded or allocated beyond the limits."""

import io
import os
import resource
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from latent_fit import LatentFitError, read_latent_file
from latent_fit.images import FORMAT_NAMES, MAX_PIXELS

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
FAST = ["--steps", "2", "--starts", "1", "--loss", "mse"]


def png_bomb(width, height):
    """A PNG header for width x height RGB pixels and the first rows of zeros: a few KB."""

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = zlib.compress(b"\x00" * (3 * width + 1) * 16, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", rows)
        + chunk(b"IEND", b"")
    )


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def test_odd_files_get_one_line_each_and_the_batch_goes_on(cli, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(SAMPLES / "targets" / "face_00.png", d)
    shutil.copy(SAMPLES / "targets" / "face_00.png", os.fsencode(d) + b"/caf\xe9.png")  # not UTF-8
    (d / "huge.png").write_bytes(png_bomb(40_000, 40_000))
    (d / "big.png").write_bytes(png_bomb(10_000, 10_000))  # under Pillow's own limit, over ours
    assert max(len((d / n).read_bytes()) for n in ("huge.png", "big.png")) < 8000
    os.mkfifo(d / "pipe.png")
    (d / "folder.png").mkdir()
    os.symlink("loop-b.png", d / "loop-a.png")
    os.symlink("loop-a.png", d / "loop-b.png")
    (d / "empty.png").write_bytes(b"")
    open(os.fsencode(d) + b"/vide\xff.png", "wb").close()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = cli("project", d, d / "pipe.png", "-o", tmp_path / "out", *FAST)
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert r.exit_code == 1 and "projected 2 target(s)" in r.stdout, r.stderr
    assert sorted(os.listdir(os.fsencode(tmp_path / "out"))) == sorted(
        [
            b"caf\xe9.npz",
            b"caf\xe9.png",
            b"caf\xe9_compare.png",
            b"face_00.npz",
            b"face_00.png",
            b"face_00_compare.png",
            b"index.html",
            b"metrics.csv",
            b"metrics.json",
        ]
    )
    expected = {
        "huge.png": f"over 178 million pixels, more than latent-fit's limit of {MAX_PIXELS:,} (a decompression bomb?)",
        "big.png": "10000x10000 pixels, more than latent-fit's limit",
        "pipe.png": "a FIFO, not a file",
        "folder.png": "a folder, not a file",
        "loop-a.png": "too many levels of symbolic links",
        "loop-b.png": "too many levels of symbolic links",
        "empty.png": "empty file",
        "vide\\xff.png": "empty file",
    }
    lines = error_lines(r)
    assert len(lines) == len(expected) + 1  # pipe.png was given twice
    for name, reason in expected.items():
        assert any(f"{name}: {reason}" in line for line in lines), (name, lines)
    assert all(len(line) < 310 for line in lines)
    assert grew_mb < 150  # nothing was decoded (the 10000 px image alone is 300 MB)


def truncated(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes()[:300])
    return dst


def test_truncated_latent_files(cli, tmp_path):
    good = SAMPLES / "latents" / "face_01.npz"
    cut = truncated(good, tmp_path / "inits" / "face_00.npz")
    shutil.copy(good, tmp_path / "inits")
    targets = [SAMPLES / "targets" / "face_00.png", SAMPLES / "targets" / "face_01.png"]

    one = cli("project", targets[0], "-o", tmp_path / "a", "--init", cut, *FAST)  # shared by all: stops
    assert one.exit_code == 1 and error_lines(one) == [f"error: {cut}: not a latent .npz file (not a zip archive)"]
    folder = cli("project", *targets, "-o", tmp_path / "b", "--init", tmp_path / "inits", *FAST)
    assert folder.exit_code == 1 and "projected 1 target(s)" in folder.stdout
    assert error_lines(folder) == [f"error: {cut}: not a latent .npz file (not a zip archive)"]
    assert (tmp_path / "b" / "face_01.npz").is_file()

    edit = cli("edit", cut, good, "--target", targets[1], "-o", tmp_path / "c", "--steps", "2", "--loss", "mse")
    assert edit.exit_code == 1 and "edited 1 latent(s)" in edit.stdout
    assert error_lines(edit) == [f"error: {cut}: not a latent .npz file (not a zip archive)"]


def test_latent_arrays_are_checked_before_they_are_made(tmp_path):
    """A .npy header may declare any shape; the bytes present decide."""

    def npz(name, header, data):
        f = io.BytesIO()
        np.lib.format.write_array_header_1_0(f, header)
        path = tmp_path / f"{name}.npz"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("latent.npy", f.getvalue() + data)
            z.writestr("space.npy", _npy(np.array("z")))
            z.writestr("generator.npy", _npy(np.array("g")))
        return path

    huge = npz("huge", {"descr": "<f4", "fortran_order": False, "shape": (10**12,)}, b"\x00" * 32)
    objects = npz("objects", {"descr": "|O", "fortran_order": False, "shape": (1,)}, b"\x00" * 8)
    for path in (huge, objects):
        with pytest.raises(
            LatentFitError,
            match=rf"{path.name}: not a latent .npz file \(latent.npy: holds "
            "objects, or its size does not match its shape",
        ):
            read_latent_file(path)
    ok = npz("ok", {"descr": "<f4", "fortran_order": False, "shape": (2,)}, np.float32([1, 2]).tobytes())
    assert read_latent_file(ok)["latent"].tolist() == [1.0, 2.0]


def _npy(array):
    f = io.BytesIO()
    np.save(f, array)
    return f.getvalue()


def test_other_formats_get_one_line_each_and_the_good_file_is_projected(cli, tmp_path, pillow_image, no_programs):
    """EPS (Pillow would run Ghostscript), BLP, DDS and SPIDER under image names: refused
    unidentified, one line each; the good file in the same batch is projected."""
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(SAMPLES / "targets" / "face_00.png", d)
    bad = {"poster.png": "EPS", "game.png": "BLP", "texture.jpg": "DDS", "scan.tif": "SPIDER"}
    for name, fmt in bad.items():
        (d / name).write_bytes(pillow_image(fmt))
    r = cli("project", d, "-o", tmp_path / "out", "--steps", "5", "--starts", "1", "--loss", "mse")
    assert r.exit_code == 1 and "projected 1 target(s)" in r.stdout, r.stdout + r.stderr
    assert (tmp_path / "out" / "face_00.npz").is_file()
    lines = error_lines(r)
    assert sorted(lines) == sorted(
        f"error: {d / name}: not an image in a format latent-fit reads ({FORMAT_NAMES})" for name in bad
    )
    assert no_programs == []
