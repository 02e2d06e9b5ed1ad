"""Whole photos as targets: every face of a photo becomes a target (`<stem>`, `<stem>_face2`, ...
by size) cut to the generator's face template, its crop loaded when projected, and the photo given
back with the results pasted in (`<stem>_photo.png`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import LatentFitError
from .faces import MIN_FACE, PhotoLink, Template, align_photo, face_template, id_similarity, photo_back, warp_crop
from .files import input_sha256
from .images import load_image, load_photo, save_png

LUMA = torch.tensor([0.299, 0.587, 0.114])  # ITU-R 601, as load_image's gray


@dataclass(frozen=True)
class Alignment:
    """How a run turns images into targets: `align` ("auto", "faces" or "none", see
    faces.face_template), the generator's face `template` (None: it has none; with "none" it only
    measures id_similarity) and `max_faces` (None: every face found)."""

    align: str = "none"
    template: Template | None = None
    max_faces: int | None = None

    @classmethod
    def of(cls, G, align: str = "auto", template: str | Path | None = None, max_faces: int | None = None):
        """(the Alignment of G, a line to show or None): see faces.face_template."""
        if max_faces is not None and (type(max_faces) is not int or max_faces < 1):
            raise LatentFitError(f"--max-faces {max_faces!r}: give a whole number >= 1")
        t, note = face_template(G, align, template)
        return cls(align, t, max_faces), note

    @property
    def cuts(self) -> bool:
        """Whether photos are cut into faces."""
        return self.template is not None and self.align != "none"

    def record(self) -> dict:
        """What of it makes a target (the run's record): a change redoes the targets."""
        return {
            "align": self.align,
            "max_faces": self.max_faces,
            "template_sha256": self.template.sha256 if self.cuts else None,
        }

    def cut(self, items: list[tuple[str, Path]], errors: list[str], notes: list[str]):
        """(targets (stem, image), stem -> PhotoLink of those cut from a photo): each photo whose
        faces are found gives one target per face, largest first; an image used as it is (an
        aligned crop, or no face found with "auto": one note) keeps its stem and has no link; an
        unreadable image, or one with no face under "faces", is an error line."""
        if not self.cuts:
            return items, {}
        targets, links, small = [], {}, 0
        for stem, path in items:
            try:
                cut = self._faces(stem, path)
            except LatentFitError as e:
                errors.append(str(e))
                continue
            if cut is None:
                notes.append(f"warning: {path}: no face found; centre-cropped as it is")
                cut = [(stem, None)], 0
            small += cut[1]
            targets += [(s, path) for s, _ in cut[0]]
            links |= {s: link for s, link in cut[0] if link is not None}
        if small:
            notes.append(f"skipped {small} face(s) smaller than {MIN_FACE} px or past --max-faces")
        return targets, links

    def _faces(self, stem: str, path: Path):
        """([(stem, link or None)], faces left out) of one image; None when no face is found and
        the image is used as it is ("auto")."""
        photo = load_photo(path)
        a = align_photo(photo, self.template)
        if a.as_is:
            return [(stem, None)], a.skipped
        if not a.faces:
            if self.align == "faces":
                raise LatentFitError(f"{path}: no face found")
            return None
        n = len(a.faces) if self.max_faces is None else min(self.max_faces, len(a.faces))
        sha, where = input_sha256(path), str(Path(path).resolve())
        links = [PhotoLink(where, sha, photo.shape[:2], k + 1, a.faces[k].landmarks, a.transforms[k]) for k in range(n)]
        return [(face_stem(stem, k), link) for k, link in enumerate(links)], (a.skipped + len(a.faces) - n)

    def id_similarity(self, targets: torch.Tensor, images: torch.Tensor) -> np.ndarray | None:
        """faces.id_similarity of each target and its result, None without a template."""
        return None if self.template is None else id_similarity(targets, images, self.template)


class Crops:
    """Loads targets: an image centre-cropped as before, or a face's crop cut from its photo (the
    last photo read is kept, so the faces of one photo read it once)."""

    def __init__(self, links: dict[str, PhotoLink], resolution: int, channels: int):
        self.links, self.resolution, self.channels = links, resolution, channels
        self._photo: tuple[Path, np.ndarray] | None = None

    def load(self, stem: str, path: Path) -> torch.Tensor:
        link = self.links.get(stem)
        if link is None:
            return load_image(path, self.resolution, channels=self.channels)
        if self._photo is None or self._photo[0] != path:
            self._photo = (path, load_photo(path))
        return in_channels(warp_crop(self._photo[1], link.transform, self.resolution), self.channels)


def face_stem(stem: str, k: int) -> str:
    """The target name of face k (0: the largest) of a photo named `stem`: `stem`, `stem_face2`, ..."""
    return stem if k == 0 else f"{stem}_face{k + 1}"


def in_channels(crop: torch.Tensor, channels: int) -> torch.Tensor:
    """A crop [3, R, R] with the generator's channels (1: its ITU-R 601 luma)."""
    return (LUMA[:, None, None] * crop).sum(0, keepdim=True) if channels == 1 else crop


def paste_photos(folder, links: dict[str, PhotoLink], fresh: set[str], notes: list[str]) -> list[Path]:
    """paste_results of the targets' own images (<stem>.png in `folder`, an OutputFolder) of
    their complete targets, for every photo where one of them is in `fresh` or whose _photo.png
    is missing."""
    todo = {}
    for stems in by_photo(links):
        stems = [s for s in stems if folder.is_complete(s)]
        if stems and (fresh & set(stems) or not folder.file(stems[0], "photo").exists()):
            todo |= {s: links[s] for s in stems}
    images = {s: tensor(load_photo(folder.file(s, "image"))) for s in todo}
    return paste_results(folder, todo, images, notes)


def paste_results(folder, links: dict[str, PhotoLink], images: dict, notes: list[str], suffix: str = "") -> list[Path]:
    """For each photo of `links`: the photo with its targets' `images` (stem -> [C, R, R] in
    [-1, 1]) pasted back, written as <its largest face's stem><suffix>_photo.png in `folder` (an
    OutputFolder); a photo missing or changed since it was cut, or that cannot be written, is one
    warning line in `notes`. The files written."""
    written = []
    for stems in by_photo(links):
        out = folder.file(stems[0] + suffix, "photo")
        crops = torch.stack([torch.as_tensor(images[s]).detach().float().cpu() for s in stems])
        try:
            save_png(photo_back([links[s] for s in stems], crops), out)
            written.append(out)
        except LatentFitError as e:
            notes.append(f"warning: {e}")
        except OSError as e:  # a full disk: the targets are written, the photo is not
            notes.append(f"warning: {out}: could not write the photo ({e.strerror or e})")
    return written


def by_photo(links: dict[str, PhotoLink]) -> list[list[str]]:
    """The stems of `links` grouped by photo (path and sha256), each group largest face first."""
    groups: dict[tuple[str, str], list[str]] = {}
    for stem, link in sorted(links.items(), key=lambda kv: kv[1].face):
        groups.setdefault((link.path, link.sha256), []).append(stem)
    return list(groups.values())


def tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, C] -> float [..., C, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).movedim(-1, -3).float() / 127.5 - 1
