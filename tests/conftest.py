"""Shared fixtures and builders: the bundled generator, in-domain targets, folders of sample
targets, photos made from them (place), a CLI runner, the rescaled-generator wrapper (also used by samples/), small images in
every format Pillow writes, and a spy that refuses any program started."""

import io
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from latent_fit import load_generator
from latent_fit.cli import main
from latent_fit.generators.base import Generator

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: one thread per worker, N workers share the cores
    torch.set_num_threads(1)
# A small StyleGAN2 (32 px) that projects in seconds: the constructor kwargs of the tests' networks.
SMALL_STYLEGAN2 = dict(
    z_dim=32,
    c_dim=0,
    w_dim=32,
    img_resolution=32,
    img_channels=3,
    mapping_kwargs=dict(num_layers=2),
    synthesis_kwargs=dict(channel_base=1024, channel_max=64),
)

# A tiny StyleGAN3-T: few layers and channels, 16 px (the hostile and StyleGAN3 tests' base).
TINY_SG3 = dict(
    z_dim=8,
    c_dim=0,
    w_dim=8,
    img_resolution=16,
    img_channels=3,
    mapping_kwargs=dict(num_layers=2),
    channel_base=256,
    channel_max=8,
    num_layers=6,
)


class Rescaled(Generator):
    """G'(z) = G(z / a) with prior N(0, a^2 I): the same model, its latent scaled by a."""

    def __init__(self, G, a):
        super().__init__()
        self.G, self.a = G, a
        self.z_dim, self.resolution, self.name = G.z_dim, G.resolution, f"{G.name}/{a:g}"

    def from_z(self, z, space, c=None):
        return self.a * z

    def synthesize(self, latent, space="z", c=None, noise=None):
        return self.G.synthesize(latent / self.a, space, c, noise)


def place(
    face: np.ndarray,
    size: tuple[int, int],
    *,
    angle: float = 0.0,
    side: float = 256,
    center: tuple[float, float] = (0.5, 0.5),
    background: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """`face` (uint8 HWC) scaled to `side` px, turned `angle` degrees and put at `center` (fractions)
    of a (width, height) canvas of smooth noise; returns the photo and the 3x3 face->photo matrix."""
    h, w = face.shape[:2]
    a, s = math.radians(angle), side / max(h, w)
    rot = np.array([[math.cos(a), math.sin(a), 0], [-math.sin(a), math.cos(a), 0], [0, 0, 1]]) * [[s], [s], [1]]
    A = (
        np.array([[1, 0, center[0] * size[0]], [0, 1, center[1] * size[1]], [0, 0, 1]])
        @ rot
        @ np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]])
    )
    rng = np.random.default_rng(background)
    canvas = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    inv = np.linalg.inv(A)[:2].ravel()
    warped = Image.fromarray(face).transform(size, Image.AFFINE, tuple(inv), Image.BICUBIC)
    mask = Image.new("L", (w, h), 255).transform(size, Image.AFFINE, tuple(inv), Image.BILINEAR)
    canvas.paste(warped, (0, 0), mask)
    return np.array(canvas), A


def load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def module_tree(state_dict: dict) -> dict:
    """A state dict's keys as nested dicts of module names, its tensors at the leaves (the shape
    of a pickled network's module states)."""
    tree = {}
    for key, value in state_dict.items():
        *parts, leaf = key.split(".")
        node = tree
        for part in parts:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def sample_targets(folder: Path, stems: list[str]) -> Path:
    """`folder` holding copies of samples/targets/<stem>.png."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in stems:
        shutil.copy(SAMPLES / "targets" / f"{s}.png", folder)
    return folder


@pytest.fixture(scope="session", autouse=True)
def template_cache(tmp_path_factory):
    """Face templates made (or refused) for the tests' generators go to a folder of this session,
    not the user's cache; made once per generator per session."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LATENT_FIT_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def G():
    return load_generator("digiface-dcgan64")


@pytest.fixture(scope="session")
def in_domain(G):
    """8 targets G(z*) with their true latents."""
    z = G.sample(8, seed=123)
    with torch.no_grad():
        return G.synthesize(z), z


@pytest.fixture
def cli():
    """Run `latent-fit ARGS...` in-process; returns the click Result (stdout, stderr, exit_code)."""

    def run(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return run


@pytest.fixture
def one_target(tmp_path):
    return sample_targets(tmp_path / "in", ["face_00"])


@pytest.fixture
def two_targets(tmp_path):
    return sample_targets(tmp_path / "in", ["face_00", "astronaut"])


@pytest.fixture(scope="session")
def pillow_image():
    """image(fmt) -> a small noisy image written by Pillow in `fmt` (a name in PIL.Image.SAVE), in
    the first mode that format takes; None where this Pillow cannot write it (a stub without
    its handler)."""
    return _pillow_image


@pytest.fixture
def no_programs(monkeypatch):
    """A list that records, and refuses, every program started (subprocess, Pillow's Ghostscript)."""
    from PIL import EpsImagePlugin

    started = []

    def spy(*args, **kwargs):
        started.append(args)
        raise OSError("no program may be started here")

    monkeypatch.setattr(subprocess, "Popen", spy)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", spy)
    return started


def _pillow_image(fmt: str) -> bytes | None:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    for mode in ("RGB", "RGBA", "L", "P", "1"):
        buf = io.BytesIO()
        try:
            rgb.convert(mode).save(buf, fmt)
        except Exception:  # this mode (or the whole format) cannot be written: try the next
            continue
        return buf.getvalue()
    return None


def face_photo_latents(folder: Path, G, steps: int = 30) -> Path:
    """`folder` holding group.png (480 x 320: samples face_00 upright at 200 px and face_02 turned
    12 degrees at 150 px on smooth noise) and, in folder/latents, the outputs of its two faces,
    `group` (the larger) and `group_face2`, projected in a few steps and linked to the photo
    (PhotoLink), as `project --align` writes them."""
    from latent_fit import project
    from latent_fit.faces import PhotoLink, align_photo, template_for
    from latent_fit.files import input_sha256
    from latent_fit.outputs import OutputFolder

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    canvas = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((480, 320), Image.BICUBIC)
    for name, side, angle, at in (("face_00", 200, 0, (30, 60)), ("face_02", 150, 12, (290, 90))):
        face = Image.open(SAMPLES / "targets" / f"{name}.png").convert("RGBA").resize((side, side), Image.BICUBIC)
        face = face.rotate(angle, Image.BICUBIC, expand=True)
        canvas.paste(face, at, face)
    path = folder / "group.png"
    canvas.save(path)
    photo = np.asarray(canvas)
    aligned = align_photo(photo, template_for(G)[0])
    assert len(aligned.faces) == 2, "the test photo's two faces are found"
    names = ["group", "group_face2"]
    res = project(G, aligned.crops, names, steps=steps, starts=1, loss="mse", jacobian_metrics=False)
    sha, where = input_sha256(path), str(path.resolve())
    for i in range(2):
        link = PhotoLink(where, sha, photo.shape[:2], i + 1, aligned.faces[i].landmarks, aligned.transforms[i])
        OutputFolder(folder / "latents").check_writable().write_projection(
            G, res, i, aligned.crops[i], 0.0, {}, photo=link
        )
    return folder


@pytest.fixture(scope="session")
def face_photo(tmp_path_factory, G):
    """A folder made by face_photo_latents (shared: copy what a test changes)."""
    return face_photo_latents(tmp_path_factory.mktemp("face_photo"), G)
