"""The latent file format: one .npz per target, versioned.

Keys: `latent` (float32, [*latent_shape]), `latent_init`, `space`, `generator`, `generator_sha256`,
`loss_history`, `config` (JSON text), `metrics` (JSON text), `record` (JSON text: what made it), `version`; with StyleGAN `w`
([1, num_ws, w_dim], as NVIDIA's projected_w.npz) and `noise_<i>` (optimized noise maps); with a
conditional generator's class `class_index` (int), which later commands use when given none.
A target cut from a whole photo (faces.PhotoLink) also holds `photo` (its path), `photo_sha256`,
`photo_size` ([height, width]), `photo_face` (1: the largest face), `photo_landmarks` ([5, 2] in
photo pixels) and `photo_transform` (the [3, 3] photo -> crop matrix).
"""

from __future__ import annotations

import io
import json
import math
import re
import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np
from numpy.lib import format as npformat

from .errors import LatentFitError
from .fields import parse_json, regular_file
from .files import atomic_write

FORMAT_VERSION = 1
MAX_FILE_BYTES = 2**28  # 256 MiB: a w+ latent with the noise maps of a 1024 px StyleGAN2 is about 25 MiB
REQUIRED = ("latent", "space", "generator")
TEXT = {
    "space": 16,
    "generator": 4096,
    "generator_sha256": 64,
    "tuned_sha256": 64,
    "photo": 4096,
    "photo_sha256": 64,
}  # key -> most characters
JSON_KEYS = ("config", "metrics", "record")
WHOLE = ("class_index", "version", "photo_face")
MAX_WHOLE = 2**31 - 1
FINITE = (
    "latent",
    "latent_init",
    "w",
    "photo_landmarks",
    "photo_transform",
    "photo_size",
)  # and noise_<i>: what a generator renders, finite numbers


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
    """Read and check a latent file: every entry latent-fit reads has its type, shape and range
    checked (see _entry); text entries come back as str, JSON entries as dicts, whole numbers as
    int. A damaged or foreign file is one LatentFitError line, in bounded time and memory."""
    path = regular_file(path, "latent file not found")
    data = _read_npz(path)
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise LatentFitError(f"{path}: not a latent-fit file (missing key {missing[0]!r})")
    return {k: _entry(f"{path}: entry {k!r}", k, v) for k, v in data.items()}


def _entry(what: str, key: str, v: np.ndarray):
    """One entry of a latent file: TEXT as str (at most its length; tuned_sha256 64 hex digits),
    JSON_KEYS as dicts (parse_json), WHOLE as int in 0..MAX_WHOLE, the latent, its start, w,
    noise maps as arrays of finite numbers, the loss history as numbers; other text as str."""
    if key in WHOLE:
        if v.ndim or v.dtype.kind not in "iu" or not 0 <= int(v) <= MAX_WHOLE:
            raise LatentFitError(f"{what} is not one whole number in 0..{MAX_WHOLE}")
        return int(v)
    if key in FINITE or key == "loss_history" or key.startswith("noise_"):
        if v.dtype.kind not in "fiu":
            raise LatentFitError(f"{what} is not numbers (dtype {v.dtype.str})")
        if key != "loss_history" and not np.isfinite(v).all():
            raise LatentFitError(f"{what} holds values that are not finite")
        return v
    if key in TEXT or key in JSON_KEYS or v.dtype.kind == "U":
        if v.dtype.kind != "U" or v.ndim:
            raise LatentFitError(f"{what} is not one text")
        text = str(v)
        if key in JSON_KEYS:
            return parse_json(text, what)
        if len(text) > TEXT.get(key, len(text)):
            raise LatentFitError(f"{what} is longer than {TEXT[key]} characters")
        if key in ("tuned_sha256", "photo_sha256") and not re.fullmatch("[0-9a-f]{64}", text):
            raise LatentFitError(f"{what} is not a sha256 (64 hex digits)")
        return text
    return v


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
    except (
        zipfile.BadZipFile,
        zlib.error,
        ValueError,
        EOFError,
        NotImplementedError,
        RuntimeError,
        SyntaxError,
        tokenize.TokenError,
    ) as e:  # the last two: a .npy header numpy cannot parse
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


def check_compatible(
    path: Path, data: dict, generator_name: str, latent_shape: tuple, space: str, generator_sha256: str | None = None
) -> np.ndarray:
    """The latent of `data` if it fits the generator and space, else a LatentFitError. With
    generator_sha256 the file must also come from this generator (same sha256 or name)."""
    if (
        generator_sha256 is not None
        and data["generator"] != generator_name
        and not (generator_sha256 and str(data.get("generator_sha256", "")) == generator_sha256)
    ):
        raise LatentFitError(
            f"{path}: latent made by generator {data['generator']!r}, this run uses "
            f"{generator_name!r}; project the image with {generator_name!r} first"
        )
    if data["space"] != space:
        raise LatentFitError(f"{path}: latent is in space {data['space']!r}, this run uses {space!r}")
    lat = np.asarray(data["latent"], dtype=np.float32)
    if tuple(lat.shape) != tuple(latent_shape):
        raise LatentFitError(
            f"{path}: latent of shape {list(lat.shape)} made by {data['generator']!r}; "
            f"{generator_name!r} needs {list(latent_shape)} in space {space!r}"
        )
    return lat


def stored_class(data: dict, class_index: int | None = None) -> int | None:
    """The class of a latent: `class_index` when given (it overrides the file), else the one
    stored in the file's data (None: none stored)."""
    if class_index is not None or "class_index" not in data:
        return class_index
    return int(data["class_index"])


def file_class(path: Path, data: dict, G, class_index: int | None) -> int | None:
    """stored_class, where a class stored in the file must be one of G's (an error of that file)."""
    k = stored_class(data, class_index)
    if class_index is None and k is not None and G.c_dim and k >= G.c_dim:
        raise LatentFitError(
            f"{path}: stored class_index {k}, generator {G.name!r} has {G.c_dim} classes; give --class K"
        )
    return k
