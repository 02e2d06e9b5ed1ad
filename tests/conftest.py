"""Shared fixtures and builders: the bundled generator, in-domain targets, folders of sample
targets, a CLI runner, and the rescaled-generator wrapper (also used by samples/)."""

import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from latent_fit import load_generator
from latent_fit.cli import main
from latent_fit.generators.base import Generator

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


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


def sample_targets(folder: Path, stems: list[str]) -> Path:
    """`folder` holding copies of samples/targets/<stem>.png."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in stems:
        shutil.copy(SAMPLES / "targets" / f"{s}.png", folder)
    return folder


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
