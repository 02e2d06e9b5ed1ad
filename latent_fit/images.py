"""Images at the edge: files <-> float tensors in [-1, 1], grids and videos."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import LatentFitError

_UMASK = os.umask(0)
os.umask(_UMASK)
MAX_PIXELS = 2 ** 26   # 67 megapixels (8192 x 8192): larger images are refused before decoding
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


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
        stat.S_IFMT(mode), "a device") + ", not a file"


def _decode(path: Path, what: str) -> Image.Image:
    """The image at `path`, EXIF rotation applied, decoded. Refuses anything but a regular file,
    and images of more than MAX_PIXELS before decoding them."""
    problem = file_problem(path)
    if problem:
        raise LatentFitError(f"{path}: {problem}")
    try:
        if path.stat().st_size == 0:
            raise LatentFitError(f"{path}: empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise LatentFitError(_too_many_pixels(path, f"{img.width}x{img.height}"))
                img = ImageOps.exif_transpose(img)
                img.load()
                return img
    except FileNotFoundError:
        raise LatentFitError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise LatentFitError(f"{path}: not an image Pillow can read") from None
    except Image.DecompressionBombError:   # Pillow's own check, at twice its warning size
        raise LatentFitError(_too_many_pixels(path, "over 178 million")) from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        raise LatentFitError(f"{path}: unreadable {what} ({' '.join(str(e).split())})") from None


def _too_many_pixels(path: Path, size: str) -> str:
    return (f"{path}: {size} pixels, more than latent-fit's limit of {MAX_PIXELS:,} (a decompression "
            "bomb?); scale the image down first")


def load_image(path: str | Path, resolution: int, background=(255, 255, 255)) -> torch.Tensor:
    """Read any image as [3, resolution, resolution] in [-1, 1]: EXIF rotation applied, alpha
    composited on `background`, center-cropped to a square and resized (Lanczos)."""
    path = Path(path)
    img = _decode(path, "image")
    try:
        rgb = _to_rgb(img, tuple(background))
    except (OSError, ValueError) as e:
        raise LatentFitError(f"{path}: unreadable image ({e})") from None
    w, h = rgb.size
    s = min(w, h)
    rgb = rgb.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    if s != resolution:
        rgb = rgb.resize((resolution, resolution), Image.LANCZOS)
    a = torch.from_numpy(np.asarray(rgb, dtype=np.float32).copy()).permute(2, 0, 1)
    return a / 127.5 - 1.0


def load_mask(path: str | Path, resolution: int) -> torch.Tensor:
    """A grayscale (or alpha) mask as [1, resolution, resolution] in [0, 1]."""
    path = Path(path)
    img = _decode(path, "mask")
    try:
        m = img.getchannel("A") if "A" in img.getbands() else img.convert("L")
    except (OSError, ValueError) as e:
        raise LatentFitError(f"{path}: unreadable mask ({e})") from None
    if m.size != (resolution, resolution):
        raise LatentFitError(f"{path}: mask is {m.size[0]}x{m.size[1]}, the generator makes "
                             f"{resolution}x{resolution} images")
    return torch.from_numpy(np.asarray(m, dtype=np.float32) / 255.0)[None]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] -> [N, H, W, 3] uint8."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


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


def save_png(array: np.ndarray, path: Path) -> None:
    """Save an [H, W, 3] uint8 array atomically."""
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def grid(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    """Tile equally sized [H, W, 3] uint8 images into rows and columns, white gaps between."""
    h, w = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + pad) - pad, ncol * (w + pad) - pad, 3), 255, np.uint8)
    for i, r in enumerate(rows):
        for j, im in enumerate(r):
            out[i * (h + pad):i * (h + pad) + h, j * (w + pad):j * (w + pad) + w] = im
    return out


def difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Absolute difference of two uint8 images, amplified 4x so small errors show."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16)) * 4
    return np.clip(d, 0, 255).astype(np.uint8)


def save_video(frames: np.ndarray, path: Path, fps: int = 12) -> Path:
    """Write [T, H, W, 3] uint8 frames as mp4 (needs imageio-ffmpeg) or else as an animated GIF.
    Small frames are upscaled to at least 256 px. Returns the path written."""
    t, h, w, _ = frames.shape
    scale = max(1, -(-256 // max(h, w)))
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    try:
        import imageio_ffmpeg
    except ImportError:
        gif = path.with_suffix(".gif")
        ims = [Image.fromarray(f) for f in frames]
        atomic_write(gif, lambda tmp: ims[0].save(tmp, format="GIF", save_all=True,
                                                  append_images=ims[1:], duration=1000 // fps, loop=0))
        return gif
    mp4 = path.with_suffix(".mp4")

    def write(tmp):
        writer = imageio_ffmpeg.write_frames(tmp, (frames.shape[2], frames.shape[1]), fps=fps,
                                             codec="libx264", quality=8, macro_block_size=1)
        writer.send(None)
        for f in frames:
            writer.send(np.ascontiguousarray(f))
        writer.close()
    atomic_write(mp4, write)
    return mp4


def find_images(specs: list[str]) -> tuple[list[Path], list[str]]:
    """Expand files, folders (their images, sorted) and globs. Returns (paths, errors)."""
    return find_files(specs, IMAGE_SUFFIXES, "images")


def find_files(specs: list[str], suffixes: set[str], what: str) -> tuple[list[Path], list[str]]:
    """Expand files, folders (their files with these suffixes, sorted) and globs; `what` names
    the kind in errors. Returns (paths, errors); an error line for each path that is not a
    regular file (a folder named x.png, a FIFO, a symlink loop, ...)."""
    import glob
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
            found = sorted(Path(q) for q in glob.glob(spec, recursive=True)
                           if Path(q).suffix.lower() in suffixes)
            if not found:
                errors.append(f"{spec}: pattern matches no {what}")
            add(found)
        else:
            errors.append(f"{spec}: file not found")
    return list(dict.fromkeys(paths)), errors
