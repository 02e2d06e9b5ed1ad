"""The editor behind the page: what each page works on, and the device work it asks for
(projection, painted edits, direction moves, w_r sweeps), all run through one DeviceQueue.

Latents of a page: P, the projection; E, the last painted edit (from P); and direction offsets
D = sum_k s_k * std_k * d_k. The current latent, shown and saved, is (E or P) + D. A conditional
generator's page works in one class, picked before the projection; every rendering uses it (and
the projection's noise maps, which the page holds fixed at the constant ones). A page whose target
is a face of an uploaded photo holds the photo too: its renderings come pasted back into it.
"""

from __future__ import annotations

import base64
import io
import itertools
import math
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import PROJECTION, SWEEP_WRS, edit_config
from ..edit import PCA_SAMPLES, edit, pca_directions, render
from ..encoder import load_encoder
from ..errors import LatentFitError
from ..faces import Template, face_template
from ..files import file_sha256
from ..generators.base import Generator
from ..images import save_png, to_uint8
from ..latents import write_latent_file
from ..objective import pixel_mse, psnr
from ..optimize import project
from ..outputs import SUFFIXES
from ..sweep import suggest_wr, sweep
from .inputs import safe_stem
from .jobqueue import DeviceQueue, Job
from .photos import Photo, read_upload

MAX_PAGES = 16  # pages whose state is kept (least recently used dropped)
DIRECTIONS = 5  # principal directions offered as sliders
PAGE_WRS = {u: tuple(w for w in wrs if w > 0) for u, wrs in SWEEP_WRS.items()}  # the page's log-scale w_r range
CHECK_EVERY = 10  # steps between progress reports (and cancel checks)
PHOTO_FILES = ("photo", "aligned", "original")  # what Save writes beside the latent for a face of a photo


def load_start_encoder(spec: str | None, G: Generator, space: str):
    """The learned start of --encoder (none | auto | PATH) for `space`: an Encoder mapping images
    [N, C, H, W] to latents [N, *shape], or None for the loop's own starts."""
    return None if spec in (None, "") else load_encoder(spec, G, space=space)


def data_url(image: np.ndarray) -> str:
    """An [H, W, 3] (RGB) or [H, W, 1] (gray) uint8 image as a PNG data URL."""
    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@dataclass
class Page:
    """What one browser page works on; tensors on the CPU."""

    space: str
    stem: str
    target: torch.Tensor  # [C, H, W] (C = G.img_channels)
    projection: torch.Tensor  # P [*shape]
    record: dict  # what made P: config, loss_history, metrics, steps, seconds
    class_index: int | None = None  # a conditional generator's class (None: unconditional)
    edited: torch.Tensor | None = None  # E [*shape]
    edit_record: dict | None = None
    directions: torch.Tensor | None = None  # [K, *shape], each row one prior std long
    direction_names: list[str] = field(default_factory=list)
    strengths: list[float] = field(default_factory=list)
    image: torch.Tensor | None = None  # G(current) [C, H, W]
    photo: Photo | None = None  # the whole photo the target was cut from
    face: int = 0  # which of the photo's faces (0: the largest)

    def current(self) -> torch.Tensor:
        base = self.projection if self.edited is None else self.edited
        if self.directions is None or not any(self.strengths):
            return base
        s = torch.tensor(self.strengths, dtype=torch.float32).view(-1, *[1] * base.ndim)
        return base + (s * self.directions).sum(0)

    def label(self, G: Generator) -> torch.Tensor | None:
        """The page's class as a one-hot row [1, c_dim]; None for an unconditional generator."""
        c = G.class_vector(self.class_index, self.space)
        return None if c is None else c[None]


class Editor:
    """The server's state and device work. Every method that touches the device submits a job
    to `queue` and returns it; results are plain dicts the page reads as JSON."""

    def __init__(
        self,
        G: Generator,
        out: Path,
        *,
        encoder: str = "none",
        steps: int = 200,
        starts: int = 4,
        loss: str = "auto",
        seed: int = 0,
        pca_samples: int = PCA_SAMPLES,
        wr_units: str = "raw",
    ):
        self.G, self.out, self.encoder, self.pca_samples = G, Path(out), encoder, pca_samples
        page = dict(steps=steps, loss=loss, seed=seed, check_every=CHECK_EVERY, optimize_noise=False, wr_units=wr_units)
        self.sweep_wrs = PAGE_WRS[wr_units]
        self.config = PROJECTION.replace(starts=starts, **page)  # projections in the page
        self.edit_config = edit_config(**page)  # edits from the page's projection
        self.queue = DeviceQueue()
        self._pages: OrderedDict[str, Page] = OrderedDict()
        self._encoders: dict[str, object] = {}  # space -> Encoder | None (worker thread only)
        self._pca: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # (space, class) -> PCA
        self._save_lock = threading.Lock()  # a name is chosen and written by one save at a time
        self._photos: OrderedDict[str, Photo] = OrderedDict()  # a page's last uploaded photo
        self._faces_lock = threading.Lock()  # faces are looked for in one upload at a time
        self._template: tuple[Template | None, str | None] | None = None  # face_template(G), once

    def info(self) -> dict:
        G = self.G
        return {
            "generator": G.name,
            "resolution": G.resolution,
            "spaces": list(G.spaces),
            "space": G.default_space,
            "classes": G.c_dim,
            "steps": self.config.steps,
            "encoder": self.encoder,
            "out": str(self.out),
            "sweep_wrs": list(self.sweep_wrs),
            "wr_units": self.edit_config.wr_units,
            "wr": self.edit_config.wr,
        }

    def start_encoder(self, space: str):
        """The encoder for `space`, loaded once (so a bad --encoder fails at start-up)."""
        if space not in self._encoders:
            self._encoders[space] = load_start_encoder(self.encoder, self.G, space)
        return self._encoders[space]

    def face_template(self) -> tuple[Template | None, str | None]:
        """The template uploads are aligned to (None: none) and its line (faces.face_template)."""
        with self._faces_lock:
            if self._template is None:
                self._template = face_template(self.G)
            return self._template

    def read_upload(self, data: bytes, name: str) -> tuple[torch.Tensor, str, Photo | None, str | None]:
        """An uploaded image's target, stem, Photo (its faces aligned; None: used as it is) and
        a line to show (photos.read_upload)."""
        template, stem = self.face_template()[0], safe_stem(name)
        with self._faces_lock:
            target, photo, note = read_upload(data, name, stem, self.G, template)
        return target, stem, photo, note

    def photo(self, page_id: str) -> Photo:
        """The page's last uploaded photo whose faces were aligned."""
        with self.queue.lock:
            photo = self._photos.get(page_id)
        if photo is None:
            raise LatentFitError("no photo on this page: upload a photo first")
        return photo

    def page(self, page_id: str) -> Page:
        """The page's state (call with the queue's lock held)."""
        page = self._pages.get(page_id)
        if page is None:
            raise LatentFitError("no projection on this page yet: upload an image or pick a sample first")
        self._pages.move_to_end(page_id)
        return page

    def _submit(self, page_id: str, kind: str, run, **kw) -> Job:
        """Queue work on the page's projection; refused at once if the page has none."""
        with self.queue.lock:
            self.page(page_id)
        return self.queue.submit(page_id, kind, run, **kw)

    def _set_page(self, page_id: str, page: Page) -> None:
        _keep(self._pages, page_id, page)

    # --- device work ---------------------------------------------------------------------------

    def submit_projection(
        self,
        page_id: str,
        target: torch.Tensor,
        stem: str,
        space: str | None,
        class_index: int | None = None,
        photo: Photo | None = None,
        face: int = 0,
    ) -> Job:
        """Project `target` [C, H, W] (in class `class_index` of a conditional generator, which
        it needs; cut as face `face` from `photo`, if given, which the page keeps for picking
        another face); a new projection makes all of the page's work stale."""
        space = self.G.check_space(space or self.G.default_space)
        if self.G.c_dim and class_index is None:
            raise LatentFitError(f"generator {self.G.name!r} is conditional: pick a class 0..{self.G.c_dim - 1}")
        self.G.class_vector(class_index, space)  # a wrong class is refused before any work
        page = Page(
            space=space,
            stem=stem,
            target=target.cpu(),
            projection=torch.empty(0),
            record={},
            class_index=class_index if self.G.c_dim else None,
            photo=photo,
            face=face,
        )
        with self.queue.lock:
            _keep(self._photos, page_id, photo)
        return self.queue.submit(
            page_id,
            "project",
            lambda job: self._project(job, page_id, page),
            total=self.config.steps,
            supersedes=("edit", "render", "directions", "sweep"),
        )

    def _project(self, job: Job, page_id: str, page: Page) -> dict:
        """Run the projection of submit_projection and commit the page it makes."""
        x = page.target[None].to(self.G.device)
        encoder = self.start_encoder(page.space)
        init = None if encoder is None else encoder(x)  # the one place a projection starts
        res = project(
            self.G,
            x,
            [page.stem],
            config=self.config.replace(space=page.space),
            init=init,
            c=page.label(self.G),
            progress=job.progress,
        )
        page.record = {
            "config": res.config,
            "loss_history": res.loss_history[0],
            "steps": int(res.steps[0]),
            "seconds": res.seconds,
            "terms": "+".join(res.terms),
        }
        page.projection, page.image = res.latent[0].cpu(), res.images[0].cpu()
        job.commit(lambda: self._set_page(page_id, page))
        return {
            "stem": page.stem,
            "space": page.space,
            "class": page.class_index,
            "target": data_url(to_uint8(x)[0]),
            "projection": data_url(to_uint8(res.images)[0]),
            "psnr": float(res.metrics["psnr"][0]),
            "seconds": round(res.seconds, 2),
        } | self._pasted(page)

    def _pasted(self, page: Page) -> dict:
        """{"photo": the page's photo with its image pasted back, a data URL}; {} without a photo."""
        if page.photo is None:
            return {}
        return {"photo": data_url(page.photo.pasted(page.face, page.image))}

    def submit_edit(self, page_id: str, request: torch.Tensor, mask: torch.Tensor, wr: float) -> Job:
        """The masked edit from the page's projection toward the painted `request` where `mask` is set."""
        if not (isinstance(wr, (int, float)) and math.isfinite(wr) and wr >= 0):
            raise LatentFitError(f"w_r {wr!r}: give a number >= 0")

        def run(job: Job) -> dict:
            with self.queue.lock:
                page = self.page(page_id)
            res = edit(
                self.G,
                page.projection[None],
                request[None],
                mask[None],
                [page.stem],
                wr=float(wr),
                c=page.label(self.G),
                config=self.edit_config.replace(space=page.space),
                progress=job.progress,
            )
            metrics = {
                k: float(res.metrics[k][0])
                for k in ("mask_mse_before", "mask_mse_after", "outside_change", "dz_norm", "wr", "wr_effective")
            }
            record = {
                "config": res.config,
                "loss_history": res.loss_history[0],
                "steps": int(res.steps[0]),
                "seconds": res.seconds,
                "metrics": metrics,
            }
            return self._show(job, page_id, page, edited=res.latent[0].cpu(), edit_record=record) | {
                "metrics": {k: (None if math.isnan(v) else v) for k, v in metrics.items()}
            }

        return self._submit(page_id, "edit", run, total=self.config.steps, supersedes=("sweep",))

    def submit_render(self, page_id: str, strengths: list[float]) -> Job:
        """Move the current latent along the page's directions by `strengths` (prior stds)."""
        strengths = [float(s) for s in strengths]
        if not all(math.isfinite(s) for s in strengths):
            raise LatentFitError("direction strengths must be finite numbers")

        def run(job: Job) -> dict:
            with self.queue.lock:
                page = self.page(page_id)
            if page.directions is None or len(strengths) != len(page.directions):
                raise LatentFitError(
                    f"{len(strengths)} strengths for "
                    f"{0 if page.directions is None else len(page.directions)} directions"
                )
            return self._show(job, page_id, page, strengths=strengths)

        return self._submit(page_id, "render", run)

    def _show(self, job: Job, page_id: str, page: Page, **changes) -> dict:
        """Render the page's current latent with `changes` applied, and commit them together."""
        new = Page(**vars(page) | changes)
        image = render(self.G, new.current()[None], new.space, new.label(self.G))[0].cpu()
        new.image = image
        job.commit(lambda: self._set_page(page_id, new))  # jobs run one at a time: `page` is current
        return {"result": data_url(to_uint8(image[None])[0])} | self._pasted(new)

    def submit_directions(self, page_id: str, loaded: torch.Tensor | None = None, name: str = "") -> Job:
        """Principal directions of the page's space (loaded=None) or the rows of a direction
        file; each row scaled to one prior standard deviation. Resets the strengths."""

        def run(job: Job) -> dict:
            with self.queue.lock:
                page = self.page(page_id)
            if loaded is None:
                key = (page.space, page.class_index)
                if key not in self._pca:
                    self._pca[key] = pca_directions(
                        self.G, DIRECTIONS, space=page.space, n=self.pca_samples, c=page.label(self.G)
                    )
                dirs, std = self._pca[key]
                names = [f"PC{k + 1}" for k in range(len(dirs))]
            else:
                dirs, std = self._prior_std(loaded.to(self.G.device), page.space)
                label = safe_stem(name, "direction")
                names = [label] if len(dirs) == 1 else [f"{label}[{k}]" for k in range(len(dirs))]
            rows = (dirs * std.to(dirs).view(-1, *[1] * (dirs.ndim - 1))).cpu()
            shown = self._show(job, page_id, page, directions=rows, direction_names=names, strengths=[0.0] * len(rows))
            return shown | {"names": names, "std": [round(float(s), 4) for s in std]}

        return self._submit(page_id, "directions", run, supersedes=("render",))

    def _prior_std(self, dirs: torch.Tensor, space: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit rows of `dirs` and the prior latents' standard deviation along each."""
        if tuple(dirs.shape[1:]) != self.G.latent_shape(space):
            raise LatentFitError(
                f"direction file: rows of shape {list(dirs.shape[1:])}; the {space} "
                f"space needs {list(self.G.latent_shape(space))}"
            )
        unit = dirs / dirs.flatten(1).norm(dim=1).view(-1, *[1] * (dirs.ndim - 1))
        return unit, self.G.latent_std_along(unit, space)

    def submit_sweep(self, page_id: str, request: tuple[torch.Tensor, torch.Tensor] | None) -> Job:
        """Fidelity against ||dz|| over the page's w_r range for this page's image, in one batched run: an
        edit sweep from the projection toward the painted request, or without paint a
        projection sweep of the target from one shared start."""

        def run(job: Job) -> dict:
            with self.queue.lock:
                page = self.page(page_id)
            if request is None:
                sw = sweep(
                    self.G,
                    page.target[None],
                    self.sweep_wrs,
                    [page.stem],
                    progress=job.progress,
                    c=page.label(self.G),
                    config=self.config.replace(space=page.space, starts=1),
                )
            else:
                sw = sweep(
                    self.G,
                    request[0][None],
                    self.sweep_wrs,
                    [page.stem],
                    init=page.projection[None],
                    mask=request[1][None],
                    c=page.label(self.G),
                    progress=job.progress,
                    config=self.edit_config.replace(space=page.space),
                )
            best, reason = suggest_wr(sw)
            keys = ("psnr", "dz_norm", "realism", "prior_nll")
            rows = [{"wr": float(w)} | {k: float(sw.metrics[k][0, j]) for k in keys} for j, w in enumerate(sw.wrs)]
            return {
                "kind": "projection" if request is None else "edit",
                "rows": rows,
                "suggested": float(sw.wrs[best]),
                "reason": reason,
            }

        return self._submit(page_id, "sweep", run, total=self.config.steps)

    # --- files ---------------------------------------------------------------------------------

    def save(self, page_id: str, stem: str | None = None) -> dict:
        """Write OUT/<stem>.npz (the current latent; latent_init = the projection's) and
        OUT/<stem>.png, in the formats of `latent-fit project` / `edit`; for a face of a photo
        also <stem>_photo.png, _aligned.png and _original.png (_write_photo). Never over a file:
        where one exists they go to the first free <stem>_2, <stem>_3, ..., and the answer says so."""
        with self.queue.lock:
            page = self.page(page_id)
        asked = safe_stem(stem or page.stem)
        suffixes = [SUFFIXES[k] for k in ("latent", "image") + (PHOTO_FILES if page.photo else ())]
        with self._save_lock:
            stem = free_stem(self.out, asked, suffixes)
            self._write(page, stem)
        answer = {
            "stem": stem,
            "files": [stem + s for s in suffixes],
            "out": str(self.out),
            "saved_at": time.strftime("%H:%M:%S"),
        }
        if stem != asked:
            names = [asked + s for s in suffixes]
            answer |= {
                "renamed_from": asked,
                "note": f"{', '.join(names[:-1])} or {names[-1]} is there already: kept, and saved as {stem}",
            }
        return answer

    def _write_photo(self, page: Page, stem: str, image: torch.Tensor) -> dict:
        """OUT/<stem>_original.png (the uploaded photo), _aligned.png (the target, its face's
        crop) and _photo.png (the photo with `image` pasted back); the latent file's entries
        that link it to the original (faces.PhotoLink)."""
        original = (self.out / f"{stem}{SUFFIXES['original']}").resolve()
        save_png(page.photo.image, original)
        save_png(to_uint8(page.target[None])[0], self.out / f"{stem}{SUFFIXES['aligned']}")
        save_png(page.photo.pasted(page.face, image, shown=False), self.out / f"{stem}{SUFFIXES['photo']}")
        return page.photo.link(page.face, original, file_sha256(original)).entries()

    def _write(self, page: Page, stem: str) -> None:
        """OUT/<stem>.png (and a photo's files) and OUT/<stem>.npz, last, of the page's current latent."""
        G, latent = self.G, page.current()
        image = page.image if page.image is not None else render(G, latent[None], page.space, page.label(G))[0].cpu()
        linked = self._write_photo(page, stem, image) if page.photo else {}
        mse = pixel_mse(image[None], page.target[None])
        rec = page.edit_record or page.record
        metrics = {
            "mse": float(mse[0]),
            "psnr": float(psnr(mse)[0]),
            "lpips": math.nan,
            "dz_norm": float((latent - page.projection).norm()),
            "steps": rec["steps"],
            "seconds": rec["seconds"],
            "terms": page.record["terms"],
        } | rec.get("metrics", {})
        config = {
            "made_by": "latent-fit serve",
            "projection": page.record["config"],
            "edit": page.edit_record and page.edit_record["config"],
            "directions": dict(zip(page.direction_names, page.strengths)) or None,
        }
        save_png(to_uint8(image[None])[0], self.out / f"{stem}.png")
        write_latent_file(
            self.out / f"{stem}.npz",
            latent=latent,
            latent_init=page.projection,
            space=page.space,
            generator=G.name,
            generator_sha256=G.sha256,
            loss_history=rec["loss_history"][~np.isnan(rec["loss_history"])],
            config=config,
            metrics=metrics,
            w=G.file_ws(latent, page.space),
            class_index=page.class_index,
            **linked,
        )


def _keep(store: OrderedDict, key: str, value) -> None:
    """Put `value` (None: remove the key) in a store of at most MAX_PAGES, dropping the least
    recently used."""
    if value is None:
        store.pop(key, None)
        return
    store[key] = value
    store.move_to_end(key)
    while len(store) > MAX_PAGES:
        store.popitem(last=False)


def free_stem(folder: Path, stem: str, suffixes=(".npz", ".png")) -> str:
    """`stem`, or the first of stem_2, stem_3, ... for which folder holds no <name><suffix>."""
    for k in itertools.count(1):
        name = stem if k == 1 else f"{stem}_{k}"
        if not any(os.path.lexists(folder / f"{name}{ext}") for ext in suffixes):
            return name
