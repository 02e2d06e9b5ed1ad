"""What the browser sends, checked and turned into tensors: uploaded images, painted strokes,
direction files and file names. Nothing from the client is ever used as a path."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import LatentFitError
from ..images import _to_rgb

MAX_UPLOAD_BYTES = 25 * 2 ** 20   # an upload larger than this is refused before it is read
MAX_PIXELS = 50_000_000           # larger images are refused unread (decompression bombs)
MAX_STROKE_SIZE = 4096            # the painted canvas is at most this many pixels a side
MAX_DIRECTIONS = 16               # sliders shown for a direction file of [K, *shape]
_STEM = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_stem(name: str | None, default: str = "image") -> str:
    """A file stem made only of letters, digits, '_', '-' and inner dots, at most 80 characters:
    the client's name with any folder part and extension dropped."""
    name = re.split(r"[\\/]", str(name or ""))[-1]
    if "." in name.strip(".") and not name.startswith("."):
        name = name.rsplit(".", 1)[0]
    stem = _STEM.sub("_", name).strip("._-")[:80].strip("._-")
    return stem or default


def _open(data: bytes, what: str) -> Image.Image:
    """A loaded Pillow image from bytes, refusing oversized ones before decoding them."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise LatentFitError(f"{what}: {len(data) / 2 ** 20:.1f} MiB, larger than the "
                             f"{MAX_UPLOAD_BYTES // 2 ** 20} MiB limit; upload a smaller image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise LatentFitError(f"{what}: {w}x{h} pixels is more than the {MAX_PIXELS // 10 ** 6} "
                                     "million allowed (a decompression bomb?); upload a smaller image")
            img = ImageOps.exif_transpose(img)
            img.load()
            return img
    except UnidentifiedImageError:
        raise LatentFitError(f"{what}: not an image (PNG, JPEG, WebP, BMP, TIFF or GIF)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise LatentFitError(f"{what}: too many pixels (a decompression bomb?); upload a smaller image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise LatentFitError(f"{what}: unreadable or truncated image ({e})") from None


def decode_image(data: bytes, resolution: int, what: str = "upload") -> torch.Tensor:
    """An uploaded image as a projection target [3, resolution, resolution] in [-1, 1], prepared
    as the CLI prepares files: EXIF rotation, alpha on white, center crop, Lanczos resize."""
    rgb = _to_rgb(_open(data, what), (255, 255, 255))
    w, h = rgb.size
    s = min(w, h)
    rgb = rgb.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    if s != resolution:
        rgb = rgb.resize((resolution, resolution), Image.LANCZOS)
    return torch.from_numpy(np.asarray(rgb, dtype=np.float32).copy()).permute(2, 0, 1) / 127.5 - 1.0


def decode_strokes(data_url: str, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The painted layer (a PNG data URL of RGBA strokes on transparency) as the edit request
    [3, R, R] in [-1, 1] and its footprint, the mask [1, R, R] in [0, 1] (alpha, area-resized
    with premultiplied colours)."""
    head, _, b64 = str(data_url).partition(",")
    if head != "data:image/png;base64":
        raise LatentFitError("painted strokes: expected a PNG data URL from the canvas")
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise LatentFitError("painted strokes: not valid base64") from None
    img = _open(raw, "painted strokes")
    if max(img.size) > MAX_STROKE_SIZE or img.size[0] != img.size[1]:
        raise LatentFitError(f"painted strokes: a square canvas of at most {MAX_STROKE_SIZE} px expected, "
                             f"got {img.size[0]}x{img.size[1]}")
    rgba = torch.from_numpy(np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    alpha = rgba[3:]
    rgba = torch.cat([rgba[:3] * alpha, alpha])[None]
    if img.size[0] != resolution:
        rgba = F.interpolate(rgba, size=(resolution, resolution), mode="area" if img.size[0] > resolution
                             else "bilinear", align_corners=None if img.size[0] > resolution else False)
    alpha = rgba[0, 3:].clamp(0, 1)
    if float(alpha.max()) < 1e-3:
        raise LatentFitError("painted strokes: nothing painted; paint on the image first")
    rgb = (rgba[0, :3] / alpha.clamp_min(1 / 255)).clamp(0, 1)
    return rgb * 2 - 1, alpha


def decode_direction(data: bytes, shape: tuple[int, ...], what: str = "direction file") -> torch.Tensor:
    """A .npy direction of shape [*shape] or [K, *shape] as K rows [K, *shape] (at most
    MAX_DIRECTIONS), never unpickling."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise LatentFitError(f"{what}: larger than the {MAX_UPLOAD_BYTES // 2 ** 20} MiB limit")
    try:
        d = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise LatentFitError(f"{what}: not a .npy array ({e})") from None
    if not isinstance(d, np.ndarray) or d.dtype.kind not in "fiu":
        raise LatentFitError(f"{what}: not a numeric .npy array")
    if tuple(d.shape) == shape:
        d = d[None]
    if tuple(d.shape[1:]) != shape or d.shape[0] < 1:
        raise LatentFitError(f"{what}: shape {list(d.shape)}; latents here need {list(shape)} or "
                             f"[K, {', '.join(map(str, shape))}]")
    d = torch.from_numpy(d[:MAX_DIRECTIONS].astype(np.float32))
    if not torch.isfinite(d).all() or bool((d.flatten(1).norm(dim=1) == 0).any()):
        raise LatentFitError(f"{what}: a direction is zero or not finite")
    return d
