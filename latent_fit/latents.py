"""The latent file format: one .npz per target, versioned.

Keys: `latent` (float32, [*latent_shape]), `latent_init`, `space`, `generator`, `generator_sha256`,
`loss_history`, `config` (JSON text), `metrics` (JSON text), `record` (JSON text: what made it), `version`; with StyleGAN `w`
([1, num_ws, w_dim], as NVIDIA's projected_w.npz) and `noise_<i>` (optimized noise maps); with a
conditional generator's class `class_index` (int), which later commands use when given none.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
import zlib
from pathlib import Path

import numpy as np
from numpy.lib import format as npformat

from .errors import LatentFitError
from .files import atomic_write

FORMAT_VERSION = 1
MAX_FILE_BYTES = 2 ** 28   # 256 MiB: a w+ latent with the noise maps of a 1024 px StyleGAN2 is about 25 MiB
REQUIRED = ("latent", "space", "generator")


def write_latent_file(path: Path, **arrays) -> None:
    """Write an .npz atomically; strings and dicts are stored as 0-d text arrays."""
    data = {"version": np.array(FORMAT_VERSION)}
    for k, v in arrays.items():
        if v is None:
            continue
        if isinstance(v, dict):
            v = json.dumps(v, sort_keys=True, default=float)
        if isinstance(v, str):
            v = np.array(v)
        elif hasattr(v, "detach"):
            v = v.detach().cpu().numpy()
        data[k] = np.asarray(v, dtype=np.float32) if np.asarray(v).dtype.kind == "f" else np.asarray(v)

    def write(tmp):
        buf = io.BytesIO()
        np.savez(buf, **data)
        Path(tmp).write_bytes(buf.getvalue())
    atomic_write(Path(path), write)


def read_latent_file(path: str | Path) -> dict:
    """Read and check a latent file; text entries come back as str, JSON entries as dicts.
    A damaged or foreign file is one LatentFitError line, in bounded time and memory."""
    path = Path(path)
    data = _read_npz(path)
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise LatentFitError(f"{path}: not a latent-fit file (missing key {missing[0]!r})")
    out = {}
    for k, v in data.items():
        if v.dtype.kind == "U":
            if v.ndim:
                raise LatentFitError(f"{path}: entry {k!r} is not one text")
            v = str(v)
            if k in ("config", "metrics", "record"):
                try:
                    v = json.loads(v)
                except (ValueError, RecursionError):
                    raise LatentFitError(f"{path}: entry {k!r} is not JSON text") from None
        out[k] = v
    if out["latent"].dtype.kind not in "fiu" or not all(isinstance(out[k], str) for k in ("space", "generator")):
        raise LatentFitError(f"{path}: not a latent-fit file (its latent is not numbers or its space not text)")
    return out


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz without pickles, read within MAX_FILE_BYTES: each array's declared
    size is checked against the bytes present before anything is made of it."""
    from .generators.untrusted import read_capped
    try:
        raw = read_capped(path, MAX_FILE_BYTES)
        if not zipfile.is_zipfile(io.BytesIO(raw)):
            raise LatentFitError("not a zip archive")
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            infos = [i for i in z.infolist() if i.filename.endswith(".npy")]
            if sum(i.file_size for i in infos) > MAX_FILE_BYTES:
                raise LatentFitError("its arrays would unpack to more than the file size limit")
            return {i.filename[:-4]: _npy(z.read(i), i.filename) for i in infos}
    except FileNotFoundError:
        raise LatentFitError(f"{path}: latent file not found") from None
    except OSError as e:
        raise LatentFitError(f"{path}: cannot read the latent file ({e.strerror or e})") from None
    except LatentFitError as e:
        raise LatentFitError(f"{path}: not a latent .npz file ({e})") from None
    except (zipfile.BadZipFile, zlib.error, ValueError, EOFError, NotImplementedError, RuntimeError) as e:
        raise LatentFitError(f"{path}: not a latent .npz file ({' '.join(str(e).split())})") from None


def _npy(raw: bytes, name: str) -> np.ndarray:
    f = io.BytesIO(raw)
    version = npformat.read_magic(f)
    header = {(1, 0): npformat.read_array_header_1_0, (2, 0): npformat.read_array_header_2_0}.get(version)
    if header is None:
        raise LatentFitError(f"{name}: unsupported .npy version {version}")
    shape, fortran, dtype = header(f)
    if dtype.hasobject or math.prod(shape) * dtype.itemsize != len(raw) - f.tell():
        raise LatentFitError(f"{name}: holds objects, or its size does not match its shape")
    return np.frombuffer(raw, dtype, math.prod(shape), f.tell()).reshape(shape, order="F" if fortran else "C").copy()


def check_compatible(path: Path, data: dict, generator_name: str, latent_shape: tuple, space: str,
                     generator_sha256: str | None = None) -> np.ndarray:
    """The latent of `data` if it fits the generator and space, else a LatentFitError. With
    generator_sha256 the file must also come from this generator (same sha256 or name)."""
    if generator_sha256 is not None and data["generator"] != generator_name and \
            not (generator_sha256 and str(data.get("generator_sha256", "")) == generator_sha256):
        raise LatentFitError(f"{path}: latent made by generator {data['generator']!r}, this run uses "
                             f"{generator_name!r}; project the image with {generator_name!r} first")
    if data["space"] != space:
        raise LatentFitError(f"{path}: latent is in space {data['space']!r}, this run uses {space!r}")
    lat = np.asarray(data["latent"], dtype=np.float32)
    if tuple(lat.shape) != tuple(latent_shape):
        raise LatentFitError(f"{path}: latent of shape {list(lat.shape)} made by {data['generator']!r}; "
                             f"{generator_name!r} needs {list(latent_shape)} in space {space!r}")
    return lat


def stored_class(data: dict, class_index: int | None = None) -> int | None:
    """The class of a latent: `class_index` when given (it overrides the file), else the one
    stored in the file's data (None: none stored)."""
    if class_index is not None or "class_index" not in data:
        return class_index
    return int(data["class_index"])
