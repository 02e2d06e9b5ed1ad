"""What the browser sends, checked and turned into tensors: painted strokes, direction files and
file names (uploaded images go through images.load_image, as the CLI's files do). Nothing from
the client is ever used as a path."""

from __future__ import annotations

import base64
import binascii
import io
import math
import re

import numpy as np
import numpy.lib.format as npformat
import torch
import torch.nn.functional as F

from ..errors import LatentFitError
from ..images import open_image

MAX_UPLOAD_BYTES = 25 * 2**20  # an upload larger than this is refused before it is read
MAX_STROKE_SIZE = 4096  # the painted canvas is at most this many pixels a side
MAX_DIRECTIONS = 16  # sliders shown for a direction file of [K, *shape]
_STEM = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_stem(name: str | None, default: str = "image") -> str:
    """A file stem made only of letters, digits, '_', '-' and inner dots, at most 80 characters:
    the client's name with any folder part and extension dropped."""
    name = re.split(r"[\\/]", str(name or ""))[-1]
    if "." in name.strip(".") and not name.startswith("."):
        name = name.rsplit(".", 1)[0]
    stem = _STEM.sub("_", name).strip("._-")[:80].strip("._-")
    return stem or default


def decode_strokes(data_url: str, resolution: int, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """The painted layer (a PNG data URL of RGBA strokes on transparency) as the edit request
    [channels, R, R] in [-1, 1] (channels 1: ITU-R 601 luma, as images.load_image) and its
    footprint, the mask [1, R, R] in [0, 1] (alpha, area-resized with premultiplied colours)."""
    head, _, b64 = str(data_url).partition(",")
    if head != "data:image/png;base64":
        raise LatentFitError("painted strokes: expected a PNG data URL from the canvas")
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise LatentFitError("painted strokes: not valid base64") from None
    img = open_image(raw, "painted strokes")
    if max(img.size) > MAX_STROKE_SIZE or img.size[0] != img.size[1]:
        raise LatentFitError(
            f"painted strokes: a square canvas of at most {MAX_STROKE_SIZE} px expected, "
            f"got {img.size[0]}x{img.size[1]}"
        )
    rgba = torch.from_numpy(np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    alpha = rgba[3:]
    rgba = torch.cat([rgba[:3] * alpha, alpha])[None]
    if img.size[0] != resolution:
        rgba = F.interpolate(
            rgba,
            size=(resolution, resolution),
            mode="area" if img.size[0] > resolution else "bilinear",
            align_corners=None if img.size[0] > resolution else False,
        )
    alpha = rgba[0, 3:].clamp(0, 1)
    if float(alpha.max()) < 1e-3:
        raise LatentFitError("painted strokes: nothing painted; paint on the image first")
    rgb = (rgba[0, :3] / alpha.clamp_min(1 / 255)).clamp(0, 1)
    if channels == 1:
        rgb = (rgb * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
    return rgb * 2 - 1, alpha


def decode_direction(data: bytes, shape: tuple[int, ...], what: str = "direction file") -> torch.Tensor:
    """A .npy direction of shape [*shape] or [K, *shape] as K rows [K, *shape] (at most
    MAX_DIRECTIONS). The header is checked against `shape` and the bytes present before any
    array is made; nothing is unpickled."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise LatentFitError(f"{what}: larger than the {MAX_UPLOAD_BYTES // 2**20} MiB limit")
    f = io.BytesIO(data)
    try:
        header = {(1, 0): npformat.read_array_header_1_0, (2, 0): npformat.read_array_header_2_0}.get(
            npformat.read_magic(f)
        )
        if header is None:
            raise ValueError("unknown .npy version")
        found, fortran, dtype = header(f)
    except (ValueError, SyntaxError, TypeError, EOFError) as e:
        raise LatentFitError(f"{what}: not a .npy array ({' '.join(str(e).split())[:120]})") from None
    if dtype.kind not in "fiu" or dtype.hasobject:
        raise LatentFitError(f"{what}: not a numeric .npy array")
    if tuple(found) == shape:
        found = (1, *found)
    if tuple(found[1:]) != shape or found[0] < 1:
        raise LatentFitError(
            f"{what}: shape {list(found)}; latents here need {list(shape)} or [K, {', '.join(map(str, shape))}]"
        )
    if math.prod(found) * dtype.itemsize != len(data) - f.tell():
        raise LatentFitError(f"{what}: its size does not match its shape {list(found)} (truncated?)")
    d = np.frombuffer(data, dtype, offset=f.tell()).reshape(found, order="F" if fortran else "C")
    d = torch.from_numpy(d[:MAX_DIRECTIONS].astype(np.float32))
    if not torch.isfinite(d).all() or bool((d.flatten(1).norm(dim=1) == 0).any()):
        raise LatentFitError(f"{what}: a direction is zero or not finite")
    return d
