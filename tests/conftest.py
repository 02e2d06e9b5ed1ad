"""Shared fixtures: the bundled generator, in-domain targets, and a CLI runner."""

import pytest
import torch
from click.testing import CliRunner

from latent_fit import load_generator
from latent_fit.cli import main


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
