"""Shared fixtures: the bundled generator, in-domain targets, a CLI runner, small images in every
format Pillow writes, and a spy that refuses any program started."""

import io
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
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
        except Exception:   # this mode (or the whole format) cannot be written: try the next
            continue
        return buf.getvalue()
    return None
