"""Whole photos in the page: an upload read as the generator's target (each face found aligned to
the generator's landmark template, faces.align_photo) and the page's image pasted back into it.

An upload is used as it is (images.load_image, centre-cropped) where the generator has no
template, where it is already an aligned crop at the generator's resolution, and, with a
warning, where no face is found in it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import LatentFitError
from ..faces import Aligned, PhotoLink, Template, align_photo, paste_back
from ..images import load_image, load_photo
from ..photos import in_channels

MAX_FACES = 16  # faces of one photo offered to the page (the largest first)
MAX_PHOTO_PIXELS = 2**24  # a photo with more pixels is scaled down to this many, first
SHOWN_SIDE = 512  # px: the longer side of the photo as the page shows it


@dataclass(frozen=True)
class Photo:
    """An uploaded photo (uint8 HWC), the copy the page shows (longer side at most SHOWN_SIDE)
    and its faces, largest first, each aligned to the generator's template."""

    stem: str
    image: np.ndarray
    shown: np.ndarray
    aligned: Aligned

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]

    def target(self, k: int, channels: int) -> torch.Tensor:
        """Face k's crop [channels, R, R] in [-1, 1] (channels 1: its luma)."""
        if not 0 <= k < len(self.aligned.faces):
            raise LatentFitError(f"face {k + 1}: the photo has {len(self.aligned.faces)} face(s)")
        return in_channels(self.aligned.crops[k], channels)

    def boxes(self) -> list[list[float]]:
        """Each face's box (left, top, right, bottom) in photo pixels."""
        return [[round(float(v), 1) for v in f.box] for f in self.aligned.faces]

    def pasted(self, k: int, image: torch.Tensor, shown: bool = True) -> np.ndarray:
        """The photo (shown: the page's copy) with `image` [C, R, R] in face k's place."""
        M = self.aligned.transforms[k]
        if shown:
            (h, w), (sh, sw) = self.size, self.shown.shape[:2]
            M = M @ np.diag([w / sw, h / sh, 1.0])
        return paste_back(self.shown if shown else self.image, image[None].cpu(), M[None])

    def link(self, k: int, path: Path, sha256: str) -> PhotoLink:
        """Face k's PhotoLink to this photo saved at `path`."""
        face = self.aligned.faces[k]
        return PhotoLink(str(path), sha256, self.size, k + 1, face.landmarks, self.aligned.transforms[k])


def read_upload(
    data: bytes, name: str, stem: str, G, template: Template | None
) -> tuple[torch.Tensor, Photo | None, str | None]:
    """The target [C, R, R] of an uploaded image, its Photo when its faces were aligned (face 0,
    the largest, is the target), and a line to show (None: nothing to say)."""
    note = None
    if template is not None:
        photo = _capped(load_photo(data, name))
        a = align_photo(photo, template)
        if a.faces and not a.as_is:
            n = min(len(a.faces), MAX_FACES)
            M = a.transforms[:n].astype(np.float32).astype(float)  # as the latent file keeps it (PhotoLink)
            a = dataclasses.replace(a, crops=a.crops[:n], transforms=M, faces=a.faces[:n])
            p = Photo(stem, photo, _shown(photo), a)
            return p.target(0, G.img_channels), p, None
        if not a.as_is:
            note = f"no face found in {name}: centre-cropped, not aligned"
    return load_image(data, G.resolution, channels=G.img_channels, name=name), None, note


def _capped(photo: np.ndarray) -> np.ndarray:
    """The photo, scaled down to MAX_PHOTO_PIXELS if it has more."""
    h, w = photo.shape[:2]
    if h * w <= MAX_PHOTO_PIXELS:
        return photo
    s = (MAX_PHOTO_PIXELS / (h * w)) ** 0.5
    return np.asarray(Image.fromarray(photo).resize((max(1, int(w * s)), max(1, int(h * s))), Image.BOX))


def _shown(photo: np.ndarray) -> np.ndarray:
    """The photo scaled so that its longer side is at most SHOWN_SIDE."""
    h, w = photo.shape[:2]
    s = SHOWN_SIDE / max(h, w)
    if s >= 1:
        return photo
    return np.asarray(Image.fromarray(photo).resize((max(1, round(w * s)), max(1, round(h * s))), Image.BOX))
