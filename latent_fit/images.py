"""Images at the edge: files <-> float tensors in [-1, 1], grids and videos."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import LatentFitError
from .files import atomic_write, file_problem, find_files

MAX_PIXELS = 2**26  # 67 megapixels (8192 x 8192): larger images are refused before decoding
FORMATS = ("PNG", "JPEG", "WEBP", "AVIF", "TIFF", "BMP", "GIF", "PPM")  # Pillow's names; JPEG includes MPO
FORMAT_NAMES = "PNG, JPEG, WebP, AVIF, TIFF, BMP, GIF or PNM"
IMAGE_SUFFIXES = {
    ".png",
    ".jpg",
    ".jpeg",
    ".webp",
    ".avif",
    ".bmp",
    ".tif",
    ".tiff",
    ".gif",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
}


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: 16-bit scaled down, alpha composited on `background`."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def open_image(source: Path | bytes, name: str, what: str = "image") -> Image.Image:
    """The image in `source` (a file, or a file's bytes) decoded, EXIF rotation applied; `name`
    names it in errors. Only FORMATS are identified, so nothing runs a program (Pillow hands EPS
    to Ghostscript); anything but a regular file, and images of more than MAX_PIXELS, are refused
    before decoding; every decoder failure is one LatentFitError line."""
    if isinstance(source, Path):
        problem = file_problem(source)
        if problem:
            raise LatentFitError(f"{name}: {problem}")
    try:
        if (len(source) if isinstance(source, bytes) else source.stat().st_size) == 0:
            raise LatentFitError(f"{name}: empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=FORMATS) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise LatentFitError(_too_many_pixels(name, f"{img.width}x{img.height}"))
                img = ImageOps.exif_transpose(img)
                img.load()
                return img
    except LatentFitError:
        raise
    except FileNotFoundError:
        raise LatentFitError(f"{name}: file not found") from None
    except UnidentifiedImageError:
        raise LatentFitError(f"{name}: not an image in a format latent-fit reads ({FORMAT_NAMES})") from None
    except Image.DecompressionBombError:  # Pillow's own check, at twice its warning size
        raise LatentFitError(_too_many_pixels(name, "over 178 million")) from None
    except Exception as e:  # Pillow's decoders fail in many ways on a bad file (struct.error, IndexError, ...)
        raise LatentFitError(f"{name}: unreadable {what} ({_reason(e)})") from None


def _reason(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _too_many_pixels(name: str, size: str) -> str:
    return (
        f"{name}: {size} pixels, more than latent-fit's limit of {MAX_PIXELS:,} (a decompression "
        "bomb?); scale the image down first"
    )


def load_photo(source: str | Path | bytes, name: str | None = None) -> np.ndarray:
    """A whole photo, a file or a file's bytes, as uint8 [H, W, 3] RGB at its own size (EXIF
    rotation applied, alpha composited on white): what faces are found in and pasted back into."""
    source = source if isinstance(source, bytes) else Path(source)
    name = name or ("image bytes" if isinstance(source, bytes) else str(source))
    img = open_image(source, name)
    try:
        return np.asarray(_to_rgb(img, (255, 255, 255)), dtype=np.uint8).copy()
    except Exception as e:  # a decoded mode Pillow cannot convert
        raise LatentFitError(f"{name}: unreadable image ({_reason(e)})") from None


def load_image(
    source: str | Path | bytes, resolution: int, background=(255, 255, 255), channels: int = 3, name: str | None = None
) -> torch.Tensor:
    """Read any image, a file or a file's bytes (named `name` in errors), as [channels,
    resolution, resolution] in [-1, 1]: EXIF rotation applied, alpha composited on `background`,
    center-cropped to a square and resized (Lanczos); channels 1: converted to gray (ITU-R 601 luma)."""
    source = source if isinstance(source, bytes) else Path(source)
    name = name or ("image bytes" if isinstance(source, bytes) else str(source))
    img = open_image(source, name)
    try:
        rgb = _to_rgb(img, tuple(background))
    except Exception as e:  # a decoded mode Pillow cannot convert
        raise LatentFitError(f"{name}: unreadable image ({_reason(e)})") from None
    w, h = rgb.size
    s = min(w, h)
    rgb = rgb.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    if s != resolution:
        rgb = rgb.resize((resolution, resolution), Image.LANCZOS)
    if channels == 1:
        rgb = rgb.convert("L")
    a = torch.from_numpy(np.asarray(rgb, dtype=np.float32).reshape(resolution, resolution, -1).copy())
    return a.permute(2, 0, 1) / 127.5 - 1.0


def load_mask(path: str | Path, resolution: int) -> torch.Tensor:
    """A grayscale (or alpha) mask as [1, resolution, resolution] in [0, 1]."""
    path = Path(path)
    img = open_image(path, str(path), "mask")
    try:
        m = img.getchannel("A") if "A" in img.getbands() else img.convert("L")
    except Exception as e:  # a decoded mode Pillow cannot convert
        raise LatentFitError(f"{path}: unreadable mask ({_reason(e)})") from None
    if m.size != (resolution, resolution):
        raise LatentFitError(
            f"{path}: mask is {m.size[0]}x{m.size[1]}, the generator makes {resolution}x{resolution} images"
        )
    return torch.from_numpy(np.asarray(m, dtype=np.float32) / 255.0)[None]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> [N, H, W, C] uint8 (C: 3 RGB, 1 gray)."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_png(array: np.ndarray, path: Path) -> None:
    """Save an [H, W, 3] (RGB) or [H, W, 1] (grayscale, mode L) uint8 array atomically."""
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def grid(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    """Tile equally sized [H, W, C] uint8 images into rows and columns, white gaps between."""
    h, w, ch = rows[0][0].shape
    ncol = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + pad) - pad, ncol * (w + pad) - pad, ch), 255, np.uint8)
    for i, r in enumerate(rows):
        for j, im in enumerate(r):
            out[i * (h + pad) : i * (h + pad) + h, j * (w + pad) : j * (w + pad) + w] = im
    return out


def difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Absolute difference of two uint8 images, amplified 4x so small errors show."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16)) * 4
    return np.clip(d, 0, 255).astype(np.uint8)


def save_video(frames: np.ndarray, path: Path, fps: int = 12) -> Path:
    """Write [T, H, W, 3] (or gray [T, H, W, 1]) uint8 frames as mp4 (needs imageio-ffmpeg) or
    else as an animated GIF. Small frames are upscaled to at least 256 px. Returns the path written."""
    t, h, w, ch = frames.shape
    if ch == 1:
        frames = frames.repeat(3, axis=3)
    scale = max(1, -(-256 // max(h, w)))
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    try:
        import imageio_ffmpeg
    except ImportError:
        gif = path.with_suffix(".gif")
        ims = [Image.fromarray(f) for f in frames]
        atomic_write(
            gif,
            lambda tmp: ims[0].save(
                tmp, format="GIF", save_all=True, append_images=ims[1:], duration=1000 // fps, loop=0
            ),
        )
        return gif
    mp4 = path.with_suffix(".mp4")

    def write(tmp):
        writer = imageio_ffmpeg.write_frames(
            tmp, (frames.shape[2], frames.shape[1]), fps=fps, codec="libx264", quality=8, macro_block_size=1
        )
        writer.send(None)
        for f in frames:
            writer.send(np.ascontiguousarray(f))
        writer.close()

    atomic_write(mp4, write)
    return mp4


def load_request(path: Path, resolution: int, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A request image [channels, R, R] and its alpha channel as a mask [1, R, R] (None when opaque).
    The alpha is recovered from two composites (on black and on white) so that it gets exactly
    the crop and resize of the colours; colours are un-premultiplied."""
    on_black = load_image(path, resolution, (0, 0, 0), channels)
    on_white = load_image(path, resolution, (255, 255, 255), channels)
    alpha = (1 - (on_white - on_black).mean(0, keepdim=True) / 2).clamp(0, 1)
    if bool((alpha > 0.999).all()):
        return on_black, None
    return ((on_black + 1) / alpha.clamp_min(1 / 255) - 1).clamp(-1, 1), alpha


def stack_masks(masks: list[torch.Tensor | None]) -> torch.Tensor | None:
    """[N, 1, H, W] with ones where a mask is None; None if all are."""
    given = [m for m in masks if m is not None]
    if not given:
        return None
    return torch.stack([torch.ones_like(given[0]) if m is None else m for m in masks])


def per_stem(spec: Path | None, stems: list[str], load) -> tuple[dict, list[str]]:
    """{stem: load(path)} for one file shared by all stems (its errors raise: they concern every
    input) or a folder of <stem>.<image> files (errors per stem)."""
    if spec is None:
        return {s: None for s in stems}, []
    spec = Path(spec)
    if not spec.is_dir():
        if not spec.exists():
            raise LatentFitError(f"{spec}: file not found")
        shared = load(spec)
        return {s: shared for s in stems}, []
    out, errors = {}, []
    for s in stems:
        try:
            out[s] = load(stem_file(spec, s))
        except LatentFitError as e:
            errors.append(str(e))
    return out, errors


def stem_file(folder: Path, stem: str) -> Path:
    """folder/<stem>.<image suffix>."""
    for p in sorted(folder.glob(f"{stem}.*")):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.stem == stem:
            return p
    raise LatentFitError(f"{folder}: no {stem}.* image for latent {stem}")


def find_images(specs: list[str]) -> tuple[list[Path], list[str]]:
    """Expand files, folders (their images, sorted) and globs. Returns (paths, errors)."""
    return find_files(specs, IMAGE_SUFFIXES, "images")
