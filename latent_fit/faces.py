"""Whole photos: faces and their landmarks, the generator's own template, alignment and paste-back,
identity similarity.

Faces are found by dlib (package dlib-bin, Boost licence) with the models that the package
face-recognition-models (MIT) ships: the MMOD CNN or HOG detector, the 5-point landmark model
(eye corners and the base of the nose; the 68-point model is not used: its training set excludes
commercial use) and the 128-D face descriptor. Nothing is downloaded.

Coordinates are continuous pixel coordinates, x right and y down, pixel (i, j) covering
[i, i+1) x [j, j+1) as in Pillow. Photos are uint8 HWC RGB arrays; crops are float NCHW in [-1, 1].
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import LatentFitError
from .files import atomic_write, input_sha256
from .images import load_photo, to_uint8

LANDMARKS = ("eye 1 outer", "eye 1 inner", "eye 2 outer", "eye 2 inner", "nose base")  # dlib's 5 points
MIN_FACE = 24  # px: faces whose box side (sqrt of its area) is smaller in the photo are skipped
WORK_SIDE = 400  # px: the detector sees the photo scaled so that its longer side is this long
MIN_FOUND = 0.3  # make_template refuses a generator whose samples show a face less often
TEMPLATE_SAMPLES = 256
PROBE_SAMPLES = 32  # make_template stops after these when none shows a face
ALIGNED_QUANTILE = 0.99  # template.radius: this quantile of the samples' mean landmark distance
AS_IS = 3.0  # is_aligned's tolerance in template radii: past the farthest of 193 held-out samples (2.9)
FILL_MODES = ("reflect", "edge", "mean", "constant")
DEFAULT_FILL = "edge"  # measured best of FILL_MODES (NOTES-h-faces.md, samples/measure_fill.py)
FEATHER = 0.125  # paste-back: the crop's mask falls from 1 to 0 over this fraction of its side
INSTALL = "pip install dlib-bin face-recognition-models"
BUNDLED_TEMPLATES = {  # generator name: (file in weights/, its sha256)
    "digiface-dcgan64": (
        "digiface-dcgan64.template.json",
        "d998529cd65ffef286d72841d0305c46291e33e887509416f821ebd2b556e7c9",
    ),
}
TEMPLATE_FORMAT = "latent-fit-face-template-1"
MAX_TEMPLATE_BYTES = 1 << 16


# --- models ---------------------------------------------------------------------------------

MODEL_FILES = {
    "cnn": "mmod_human_face_detector.dat",
    "points": "shape_predictor_5_face_landmarks.dat",
    "descriptor": "dlib_face_recognition_resnet_model_v1.dat",
}


def _dlib():
    """The dlib module; one line naming the install when it is missing."""
    try:
        import dlib
    except ImportError:
        raise LatentFitError(f"face models: dlib is not installed; {INSTALL}") from None
    return dlib


@functools.cache
def _model(name: str):
    """One of dlib's face models ("hog", or a key of MODEL_FILES), loaded once, when first needed,
    from the files that face-recognition-models ships."""
    dlib = _dlib()
    if name == "hog":
        return dlib.get_frontal_face_detector()
    spec = importlib.util.find_spec("face_recognition_models")  # located, not imported: its
    if spec is None:  # __init__ needs pkg_resources
        raise LatentFitError(f"face models: face-recognition-models is not installed; {INSTALL}")
    path = Path(spec.submodule_search_locations[0]) / "models" / MODEL_FILES[name]
    load = {
        "cnn": dlib.cnn_face_detection_model_v1,
        "points": dlib.shape_predictor,
        "descriptor": dlib.face_recognition_model_v1,
    }[name]
    try:
        return load(str(path))
    except RuntimeError as e:
        raise LatentFitError(f"{path}: unreadable face model ({e}); reinstall face-recognition-models") from None


class NotFaces(LatentFitError):
    """A generator whose samples show too few faces for a template (make_template's refusal, the
    one template_for caches: a missing face model is not cached)."""


# --- detection ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Face:
    """One face in a photo: box (left, top, right, bottom) and landmarks [5, 2] in photo pixels."""

    box: np.ndarray
    landmarks: np.ndarray
    score: float

    @property
    def size(self) -> float:
        """Side of the square with the box's area, in photo pixels."""
        return math.sqrt(max(0.0, (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])))


@dataclass(frozen=True)
class Faces:
    """The faces found in a photo, largest first, and how many were skipped as smaller than min_size."""

    faces: list[Face]
    skipped: int


def _check_photo(photo: np.ndarray) -> np.ndarray:
    """A uint8 HWC RGB array (grayscale repeated), or one line saying what it is instead."""
    photo = np.asarray(photo)
    if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] not in (1, 3) or min(photo.shape[:2]) < 1:
        raise LatentFitError(f"photo: need a uint8 HxWx3 (or HxWx1) array, got {photo.dtype} {photo.shape}")
    return np.repeat(photo, 3, axis=2) if photo.shape[2] == 1 else photo


DETECTORS = ("auto", "hog", "cnn")


def detect_faces(
    photo: np.ndarray, *, min_size: float = MIN_FACE, detector: str = "auto", work_side: int = WORK_SIDE
) -> Faces:
    """Faces in a uint8 HWC photo with their 5 landmarks, largest first.

    The detector ("hog": dlib's HOG, fast, upright frontal faces; "cnn": its MMOD network, finds
    turned faces too, 20-50x slower; "auto": HOG, then MMOD when HOG finds none) sees the photo
    scaled to `work_side` on its longer side (up for small photos: the generator's 64 px faces are
    found once upsampled; down for large ones: faces under about a tenth of the longer side are
    then missed); landmarks are located there too and mapped back. Faces smaller than min_size
    photo pixels are skipped and counted."""
    photo = _check_photo(photo)
    if detector not in DETECTORS:
        raise LatentFitError(f"detector {detector!r}: choose one of {', '.join(DETECTORS)}")
    s = work_side / max(photo.shape[:2])
    size = (max(1, round(photo.shape[1] * s)), max(1, round(photo.shape[0] * s)))
    work = np.asarray(Image.fromarray(photo).resize(size, Image.BICUBIC if s > 1 else Image.BOX))
    sx, sy = size[0] / photo.shape[1], size[1] / photo.shape[0]
    found = []
    if detector != "cnn":
        rects, scores, _ = _model("hog").run(work, 0, 0.0)
        found = list(zip(rects, scores))
    if detector == "cnn" or (detector == "auto" and not found):
        found = [(d.rect, d.confidence) for d in _model("cnn")(work, 0)]
    faces = []
    for rect, score in found:
        pts = _model("points")(work, rect)
        lm = np.array([[p.x + 0.5, p.y + 0.5] for p in pts.parts()]) / (sx, sy)
        box = np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], float) / (sx, sy, sx, sy)
        faces.append(Face(box, lm, float(score)))
    faces.sort(key=lambda f: -f.size)
    kept = [f for f in faces if f.size >= min_size]
    return Faces(kept, len(faces) - len(kept))


# --- the template: where the generator puts each landmark -------------------------------------


@dataclass(frozen=True)
class Template:
    """Landmarks [5, 2] of the generator's faces in its own pixels (the per-landmark median over
    its samples), box [4] (the median detector box: left, top, right, bottom), spread [5] (median
    distance of a sample's landmark to it), radius (99th percentile over samples of the mean
    landmark distance: the tolerance of is_aligned), found / sampled samples showing a face, the
    samples' seed, and the generator's name and sha256."""

    landmarks: np.ndarray
    box: np.ndarray
    spread: np.ndarray
    radius: float
    resolution: int
    found: int
    sampled: int
    seed: int
    generator: str
    generator_sha256: str

    def to_json(self) -> str:
        return (
            json.dumps(
                {
                    "format": TEMPLATE_FORMAT,
                    "landmark_names": list(LANDMARKS),
                    "landmarks": np.round(self.landmarks, 4).tolist(),
                    "box": np.round(self.box, 4).tolist(),
                    "spread": np.round(self.spread, 4).tolist(),
                    "radius": round(self.radius, 4),
                    "resolution": self.resolution,
                    "found": self.found,
                    "sampled": self.sampled,
                    "seed": self.seed,
                    "generator": self.generator,
                    "generator_sha256": self.generator_sha256,
                },
                indent=1,
            )
            + "\n"
        )

    @property
    def sha256(self) -> str:
        """Of the JSON text (the file's bytes): for records."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()


def sample_landmarks(G, n: int, seed: int, batch: int = PROBE_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks [n, 5, 2] and boxes [n, 4] of the largest face in each of n samples of G (NaN
    where none is found), in G's pixels; only the first batch when none of it shows a face.
    Detection by HOG, which is fast and frontal: a template of upright faces."""
    out, boxes = np.full((n, len(LANDMARKS), 2), np.nan), np.full((n, 4), np.nan)
    c = G.cycled_labels(n)
    latents = G.sample(n, seed=seed, c=c)
    with torch.no_grad():
        for i in range(0, n, batch):
            ci = None if c is None else c[i : i + batch]
            for j, img in enumerate(to_uint8(G.synthesize(latents[i : i + batch], G.default_space, ci))):
                found = detect_faces(img, min_size=0, detector="hog").faces
                if found:
                    out[i + j], boxes[i + j] = found[0].landmarks, found[0].box
            if i == 0 and np.isnan(out[:batch]).all():
                return out[:batch], boxes[:batch]
    return out, boxes


def make_template(G, n: int = TEMPLATE_SAMPLES, seed: int = 0) -> Template:
    """The template of G from the landmarks of n of its samples; refuses (NotFaces) a
    generator whose samples show a face less often than MIN_FOUND (after the first
    PROBE_SAMPLES when none of them shows one)."""
    if n < 8:
        raise LatentFitError(f"template samples {n}: need at least 8")
    pts, boxes = sample_landmarks(G, n, seed)
    n = len(pts)
    ok, boxes = pts[~np.isnan(pts).any(axis=(1, 2))], boxes[~np.isnan(boxes).any(axis=1)]
    if len(ok) < MIN_FOUND * n:
        raise NotFaces(
            f"generator {G.name!r}: a face was found in only {len(ok)} of {n} samples "
            f"(need {math.ceil(MIN_FOUND * n)}); it does not look like a face generator"
        )
    med = np.median(ok, axis=0)
    dist = np.linalg.norm(ok - med, axis=2)
    radius = float(np.quantile(dist.mean(1), ALIGNED_QUANTILE))
    return Template(
        med,
        np.median(boxes, axis=0),
        np.median(dist, axis=0),
        radius,
        int(G.resolution),
        len(ok),
        n,
        seed,
        G.name,
        G.sha256,
    )


def save_template(template: Template, path: str | Path) -> str:
    """Write the template's JSON to `path` (atomically); returns its sha256."""
    text = template.to_json()
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))
    return template.sha256


def load_template(path: str | Path) -> Template:
    """A template file, validated (size, format, types, shapes, ranges); one line if it is not one."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_TEMPLATE_BYTES:
            raise LatentFitError(f"{path}: {path.stat().st_size} bytes, too large for a face template")
        d = json.loads(path.read_bytes())
        return _template_from(d)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise LatentFitError(f"{path}: not a readable face template ({e})") from None
    except (KeyError, TypeError, ValueError) as e:
        raise LatentFitError(f"{path}: not a face template ({e})") from None


def _template_from(d) -> Template:
    """The Template of a parsed JSON object; KeyError / TypeError / ValueError naming what is wrong."""
    if not isinstance(d, dict) or d.get("format") != TEMPLATE_FORMAT:
        raise ValueError(f"format is not {TEMPLATE_FORMAT}")
    ints = {k: d[k] for k in ("resolution", "found", "sampled", "seed")}
    if (
        any(type(v) is not int for v in ints.values())
        or not 0 < ints["found"] <= ints["sampled"]
        or not 0 < ints["resolution"] <= 8192
    ):
        raise ValueError("resolution, found, sampled and seed must be integers, 0 < found <= sampled")
    lm, box, spread, radius = (
        _numbers(d[k], shape)
        for k, shape in (
            ("landmarks", (len(LANDMARKS), 2)),
            ("box", (4,)),
            ("spread", (len(LANDMARKS),)),
            ("radius", ()),
        )
    )
    R = ints["resolution"]
    if (
        (lm < 0).any()
        or (lm > R).any()
        or (spread < 0).any()
        or radius < 0
        or (abs(box) > 2 * R).any()
        or box[2] <= box[0]
        or box[3] <= box[1]
    ):
        raise ValueError("landmarks outside the image, an empty or far box, or a negative spread")
    if not all(isinstance(d[k], str) and len(d[k]) <= 256 for k in ("generator", "generator_sha256")):
        raise ValueError("generator and generator_sha256 must be short strings")
    return Template(
        lm,
        box,
        spread,
        float(radius),
        ints["resolution"],
        ints["found"],
        ints["sampled"],
        ints["seed"],
        d["generator"],
        d["generator_sha256"],
    )


def _numbers(value, shape: tuple) -> np.ndarray:
    """A JSON list of finite numbers as an array of `shape` (ValueError otherwise)."""
    a = np.asarray(value)
    if a.shape != shape or a.dtype.kind not in "iuf" or not np.isfinite(a).all():
        raise ValueError(f"need finite numbers of shape {list(shape)}, got {str(value)[:40]}")
    return a.astype(float)


def default_cache_dir() -> Path:
    """Where templates of generators that ship none are kept: $LATENT_FIT_CACHE/templates, else
    ~/.cache/latent-fit/templates."""
    root = os.environ.get("LATENT_FIT_CACHE") or Path.home() / ".cache" / "latent-fit"
    return Path(root) / "templates"


def template_for(G, cache_dir: str | Path | None = None) -> tuple[Template, str | None]:
    """G's template and a line to show when it had to be made: the shipped file of a bundled
    generator (checked by sha256), else the cached one (by G.sha256), else made and cached. A
    generator refused as NotFaces is refused again from the cache (<sha256>.refused)."""
    from .generators import check_bundled, weights_dir

    if G.name in BUNDLED_TEMPLATES:
        file, want = BUNDLED_TEMPLATES[G.name]
        path = weights_dir() / file
        check_bundled(path, want)
        t = load_template(path)
        if t.generator_sha256 == G.sha256:
            return t, None
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path, refused = folder / f"{G.sha256}.json", folder / f"{G.sha256}.refused"
    if G.sha256 and path.is_file():
        return load_template(path), None
    if G.sha256 and refused.is_file():
        with open(refused, "rb") as f:  # a regular file (is_file), its first 400 bytes
            raise NotFaces(f.read(400).decode(errors="replace").strip())
    try:
        t = make_template(G, n=TEMPLATE_SAMPLES)
    except NotFaces as e:
        if G.sha256:
            folder.mkdir(parents=True, exist_ok=True)
            line = f"{e} (cached in {refused})\n"
            atomic_write(refused, lambda tmp: Path(tmp).write_text(line))
        raise
    if not G.sha256:
        return t, f"made the face template of {G.name!r} from {t.sampled} samples (not cached: no sha256)"
    folder.mkdir(parents=True, exist_ok=True)
    save_template(t, path)
    return t, f"made the face template of {G.name!r} from {t.sampled} samples, cached in {path}"


ALIGN_MODES = ("auto", "faces", "none")


def face_template(G, align: str = "auto", template: str | Path | None = None) -> tuple[Template | None, str | None]:
    """G's face template for a run, `template` (a file) or template_for(G), and a line to show.
    Under "auto" and "faces" photos are aligned to it; under "none" it only measures
    id_similarity. A refusal is the run's error under "faces"; else it means no template, with a
    line (none under "none" for a generator that does not make faces: NotFaces)."""
    if align not in ALIGN_MODES:
        raise LatentFitError(f"--align {align!r}: choose one of {', '.join(ALIGN_MODES)}")
    if template is not None:
        t = load_template(template)
        if t.resolution != G.resolution:
            raise LatentFitError(
                f"{template}: a template for {t.resolution} px images, the generator makes {G.resolution} px"
            )
        return t, None
    try:
        return template_for(G)
    except LatentFitError as e:
        if align == "faces":
            raise
        if align == "none":
            return None, None if isinstance(e, NotFaces) else f"identity similarity not measured: {e}"
        return None, f"photos are centre-cropped, not aligned: {e}"


# --- alignment: photo -> crop -------------------------------------------------------------------


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 similarity (rotation, uniform scale, shift; no reflection) that maps points src
    [K, 2] onto dst [K, 2] in the least-squares sense (Umeyama 1991)."""
    ms, md = src.mean(0), dst.mean(0)
    xs, xd = src - ms, dst - md
    U, S, Vt = np.linalg.svd(xd.T @ xs / len(src))
    D = np.diag([1.0, np.sign(np.linalg.det(U) * np.linalg.det(Vt)) or 1.0])
    R = U @ D @ Vt
    scale = np.trace(np.diag(S) @ D) / (xs**2).sum(1).mean()
    M = np.eye(3)
    M[:2, :2], M[:2, 2] = scale * R, md - scale * R @ ms
    return M


def _pad(part: np.ndarray, width: tuple, fill: str, mean: np.ndarray | None) -> np.ndarray:
    """A part of a photo padded by width ((top, bottom), (left, right), (0, 0)) pixels, filled by
    `fill` (FILL_MODES; "mean": the photo's mean colour, given)."""
    if fill in ("reflect", "edge"):
        return np.pad(part, width, mode="symmetric" if fill == "reflect" else "edge")
    value = np.round(mean if fill == "mean" else np.full(3, 127.5)).astype(np.uint8)
    return np.stack([np.pad(part[..., k], width[:2], constant_values=value[k]) for k in range(3)], -1)


def warp_crop(photo: np.ndarray, M: np.ndarray, size: int, fill: str = DEFAULT_FILL) -> torch.Tensor:
    """The size x size crop [3, size, size] in [-1, 1] that the photo->crop matrix M sees:
    resampled bicubically, where M shrinks the photo at a supersampled size (at least the photo's
    own scale) then box-averaged down (antialiased); parts outside the photo filled by `fill`
    (FILL_MODES)."""
    x = torch.from_numpy(_warp(photo, M, size, fill)).permute(2, 0, 1).float()
    return x / 127.5 - 1


def _warp(photo: np.ndarray, M: np.ndarray, size: int, fill: str) -> np.ndarray:
    """warp_crop as a uint8 HWC array."""
    if fill not in FILL_MODES:
        raise LatentFitError(f"fill {fill!r}: choose one of {', '.join(FILL_MODES)}")
    photo = _check_photo(photo)
    h, w = photo.shape[:2]
    ss = int(np.clip(math.ceil(1 / math.sqrt(abs(np.linalg.det(M[:2, :2])))), 1, 32))  # 1: upsampling
    c = _corners(np.linalg.inv(M), size)
    x0, y0 = math.floor(c[0].min()) - 2, math.floor(c[1].min()) - 2
    x1, y1 = math.ceil(c[0].max()) + 2, math.ceil(c[1].max()) + 2
    xa, ya = min(max(x0, 0), w - 1), min(max(y0, 0), h - 1)  # the photo's part under the crop
    xb, yb = max(min(x1, w), xa + 1), max(min(y1, h), ya + 1)  # (one pixel at least), padded
    width = ((max(0, ya - y0), max(0, y1 - yb)), (max(0, xa - x0), max(0, x1 - xb)), (0, 0))
    part = _pad(photo[ya:yb, xa:xb], width, fill, photo.reshape(-1, 3).mean(0) if fill == "mean" else None)
    to_big = np.diag([ss, ss, 1.0]) @ M @ np.array([[1, 0, xa - width[1][0]], [0, 1, ya - width[0][0]], [0, 0, 1]])
    big = Image.fromarray(part).transform(
        (size * ss, size * ss), Image.AFFINE, tuple(np.linalg.inv(to_big)[:2].ravel()), Image.BICUBIC
    )
    return np.array(big.reduce(ss))


REFINE_SCALE = 4  # the upright frame of refine_landmarks: the template at 4x its resolution
REFINE_PASSES = 2


def refine_landmarks(
    photo: np.ndarray, landmarks: np.ndarray, template: Template, passes: int = REFINE_PASSES
) -> np.ndarray:
    """Landmarks [5, 2] located again in the face's own upright frame: the photo is warped so that
    the current landmarks fall on the template's (at REFINE_SCALE x its resolution) and the 5-point
    model runs there on the template's detector box; mapped back. The model then sees the same
    image whatever the face's turn, size and place (equivariance) and whichever detector found it."""
    k = REFINE_SCALE
    rect = _dlib().rectangle(*(int(round(v)) for v in template.box * k - (0, 0, 1, 1)))
    for _ in range(passes):
        M = np.diag([k, k, 1.0]) @ similarity(landmarks, template.landmarks)
        upright = _warp(photo, M, template.resolution * k, "edge")
        pts = np.array([[p.x + 0.5, p.y + 0.5, 1] for p in _model("points")(upright, rect).parts()])
        landmarks = (pts @ np.linalg.inv(M).T)[:, :2]
    return landmarks


def is_aligned(landmarks: np.ndarray, template: Template, tol: float | None = None) -> bool:
    """Whether landmarks [5, 2] (in an image at the template's resolution) lie where the generator
    puts them: mean distance to the template's within tol px (default AS_IS * template.radius,
    as far as the generator's own samples stray: 400 of 400 held-out samples of the bundled
    generator are used as they are, and crops framed as it frames its faces)."""
    d = np.linalg.norm(np.asarray(landmarks, float) - template.landmarks, axis=1).mean()
    return bool(d <= (AS_IS * template.radius if tol is None else tol))


@dataclass(frozen=True)
class Aligned:
    """The crops [N, 3, R, R] in [-1, 1] of a photo's faces (largest first), their photo->crop
    matrices [N, 3, 3], the faces, how many were skipped as small, and whether the photo was
    used as it is (then its one crop is the photo itself, with the identity matrix, and faces
    holds the one face found in it or none)."""

    crops: torch.Tensor
    transforms: np.ndarray
    faces: list[Face]
    skipped: int
    as_is: bool


def align_photo(
    photo: np.ndarray,
    template: Template,
    *,
    fill: str = DEFAULT_FILL,
    min_size: float = MIN_FACE,
    detector: str = "auto",
) -> Aligned:
    """Every face of a photo cut out at the template's resolution, its landmarks (refine_landmarks)
    moved onto the template's. A photo at that resolution is used as it is when the landmarks
    found from the template's is_aligned (no detector runs: the generator's own samples keep their
    latents, cheaply), or when no face is found in it (as before faces were looked for)."""
    photo, R = _check_photo(photo), template.resolution
    if photo.shape[:2] == (R, R):  # already framed as the generator frames its faces? (no detector)
        lm = refine_landmarks(photo, template.landmarks, template)
        if is_aligned(lm, template):
            return _as_is(photo, [Face(template.box.copy(), lm, math.nan)], 0)
    found = detect_faces(photo, min_size=min_size, detector=detector)
    faces = [dataclasses.replace(f, landmarks=refine_landmarks(photo, f.landmarks, template)) for f in found.faces]
    if photo.shape[:2] == (R, R) and not faces:
        return _as_is(photo, faces, found.skipped)
    Ms = [similarity(f.landmarks, template.landmarks) for f in faces]
    crops = [warp_crop(photo, M, R, fill) for M in Ms]
    return Aligned(
        torch.stack(crops) if crops else torch.zeros(0, 3, R, R),
        np.stack(Ms) if Ms else np.zeros((0, 3, 3)),
        faces,
        found.skipped,
        False,
    )


def _as_is(photo: np.ndarray, faces: list[Face], skipped: int) -> Aligned:
    """The Aligned of a photo used as it is: its one crop the photo, with the identity matrix."""
    crop = torch.from_numpy(photo.copy()).permute(2, 0, 1).float() / 127.5 - 1
    return Aligned(crop[None], np.eye(3)[None], faces, skipped, True)


# --- paste-back: crop -> photo --------------------------------------------------------------------


def crop_mask(size: int, feather: float = FEATHER) -> np.ndarray:
    """[size, size] weights of a crop for paste-back: 1 inside, falling linearly to 0 over
    feather * size pixels at its edges."""
    x = np.arange(size) + 0.5
    ramp = np.clip(np.minimum(x, size - x) / max(feather * size, 1e-9), 0, 1)
    return np.minimum(ramp[:, None], ramp[None, :]).astype(np.float32)


def paste_back(photo: np.ndarray, crops: torch.Tensor, transforms: np.ndarray, feather: float = FEATHER) -> np.ndarray:
    """The photo (uint8 HWC, its own size) with each crop [N, C, R, R] in [-1, 1] warped back
    through the inverse of its photo->crop matrix [N, 3, 3] and blended with crop_mask; pixels
    where every mask is 0 are the photo's own, unchanged."""
    photo = _check_photo(photo)
    out = photo.astype(np.float64)
    total = np.zeros(photo.shape[:2])
    for img, M in zip(to_uint8(crops), np.asarray(transforms, float)):
        img, R = _check_photo(img), img.shape[0]
        box = _footprint(np.linalg.inv(M), R, photo.shape)
        if box is None:
            continue
        x0, y0, x1, y1 = box
        coeffs = tuple((M @ np.array([[1, 0, x0], [0, 1, y0], [0, 0, 1]]))[:2].ravel())
        warp = [
            np.asarray(Image.fromarray(a).transform((x1 - x0, y1 - y0), Image.AFFINE, coeffs, Image.BILINEAR))
            for a in [crop_mask(R, feather)] + [img[..., k].astype(np.float32) for k in range(3)]
        ]
        m = warp[0][..., None].astype(np.float64)
        win = out[y0:y1, x0:x1]
        out[y0:y1, x0:x1] = win * (1 - m) + np.stack(warp[1:], -1) * m
        total[y0:y1, x0:x1] += m[..., 0]
    blended = np.clip(np.round(out), 0, 255).astype(np.uint8)
    return np.where(total[..., None] > 0, blended, photo)


@dataclass(frozen=True)
class PhotoLink:
    """Where a target was cut from a whole photo: the photo's path, sha256 and size (height,
    width), the face's number (1: the largest), its landmarks [5, 2] in photo pixels and the
    photo -> crop matrix [3, 3]. Stored in the target's latent file (entries())."""

    path: str
    sha256: str
    size: tuple[int, int]
    face: int
    landmarks: np.ndarray
    transform: np.ndarray

    def entries(self) -> dict:
        """The latent-file entries that record it."""
        return {
            "photo": self.path,
            "photo_sha256": self.sha256,
            "photo_size": np.array(self.size, np.int64),
            "photo_face": self.face,
            "photo_landmarks": np.asarray(self.landmarks, np.float32),
            "photo_transform": np.asarray(self.transform, np.float32),
        }

    @classmethod
    def read(cls, path: Path, data: dict) -> PhotoLink | None:
        """The link a latent file records (read_latent_file's `data`, entries already typed and
        finite), None when it records none; one line when its entries do not make one."""
        if "photo" not in data:
            return None
        keys = ("photo_sha256", "photo_size", "photo_face", "photo_landmarks", "photo_transform")
        missing = [k for k in keys if k not in data]
        size, lm, M = (np.asarray(data.get(k, np.zeros(0))) for k in keys[1:2] + keys[3:])
        if (
            missing
            or size.shape != (2,)
            or (size < 1).any()
            or (size > 1 << 16).any()
            or lm.shape != (len(LANDMARKS), 2)
            or M.shape != (3, 3)
            or abs(np.linalg.det(M[:2, :2].astype(float))) < 1e-12
        ):
            raise LatentFitError(f"{path}: its photo entries do not describe a crop of a photo")
        h, w = (int(v) for v in size)
        return cls(data["photo"], data["photo_sha256"], (h, w), data["photo_face"], lm.astype(float), M.astype(float))


def read_photo(link: PhotoLink) -> np.ndarray:
    """The photo a link was cut from (uint8 HWC); one line when it is missing or not the one the
    link was cut from (its sha256 changed)."""
    path = Path(link.path)
    if input_sha256(path) != link.sha256:
        raise LatentFitError(
            f"{path}: the photo is {'changed' if path.exists() else 'missing'} since its faces were "
            "cut; the crops are written, the photo is not"
        )
    return load_photo(path)


def photo_back(links: list[PhotoLink], crops: torch.Tensor) -> np.ndarray:
    """The photo of `links` (all of one photo) with each crop [N, C, R, R] pasted back through
    its link's transform (paste_back); one line when the photo is missing or changed (read_photo)."""
    return paste_back(read_photo(links[0]), crops, np.stack([link.transform for link in links]))


def _corners(inv: np.ndarray, size: int) -> np.ndarray:
    """[2, 4] photo coordinates of the corners of a size x size crop mapped by inv (crop->photo)."""
    return (inv @ np.array([[0, size, 0, size], [0, 0, size, size], [1, 1, 1, 1]]))[:2]


def _footprint(inv: np.ndarray, size: int, shape: tuple) -> tuple[int, int, int, int] | None:
    """The photo-pixel box (x0, y0, x1, y1) covering a size x size crop mapped by inv, clipped
    to the photo; None when it lies outside."""
    c = _corners(inv, size)
    x0, y0 = max(0, math.floor(c[0].min())), max(0, math.floor(c[1].min()))
    x1, y1 = min(shape[1], math.ceil(c[0].max())), min(shape[0], math.ceil(c[1].max()))
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


# --- identity ---------------------------------------------------------------------------------------

ID_SIDE = 256  # px: images are upsampled to this for the landmarks the descriptor's chips need


def face_descriptors(images: torch.Tensor, template: Template | None = None) -> np.ndarray:
    """dlib's 128-D face descriptor [N, 128] of the largest face of each image [N, C, H, W] in
    [-1, 1], on chips cut by its 5 landmarks; NaN rows where no face is found. template: the images
    are crops aligned to it (a projection's crops and results): their landmarks are found from the
    template's by refine_landmarks, without a detector, so no crop is missed."""
    dlib, describe = _dlib(), _model("descriptor")
    out = np.full((len(images), 128), np.nan)
    for i, img in enumerate(to_uint8(images)):
        work = np.asarray(Image.fromarray(_check_photo(img)).resize((ID_SIDE, ID_SIDE), Image.BICUBIC))
        if template is not None:
            lm = refine_landmarks(work, template.landmarks * ID_SIDE / template.resolution, template)
        else:
            found = detect_faces(work, min_size=0, work_side=ID_SIDE).faces
            if not found:
                continue
            lm = found[0].landmarks
        rect = dlib.rectangle(*(int(v) for v in np.r_[lm.min(0), lm.max(0)]))
        parts = dlib.points([dlib.point(*(int(round(v)) for v in p)) for p in lm - 0.5])
        out[i] = np.asarray(describe.compute_face_descriptor(work, dlib.full_object_detection(rect, parts)))
    return out


def id_similarity(a_images: torch.Tensor, b_images: torch.Tensor, template: Template | None = None) -> np.ndarray:
    """Cosine similarity [N] of the face descriptors of a_images[i] and b_images[i] (NaN for a
    pair where a face is not found; all NaN, with one warning, when the face models cannot load).
    template: all images are crops aligned to it (see face_descriptors)."""
    if a_images.shape[0] != b_images.shape[0]:
        raise LatentFitError(f"id_similarity: {a_images.shape[0]} images against {b_images.shape[0]}")
    try:
        a, b = face_descriptors(a_images, template), face_descriptors(b_images, template)
    except LatentFitError as e:
        warnings.warn(f"identity similarity not measured: {e}", stacklevel=2)
        return np.full(a_images.shape[0], np.nan)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
