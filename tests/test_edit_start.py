"""What an edit starts from: the projection itself. A direction edit at strength 0 and the ends
of an interpolation reproduce the projection's PNG (its stored noise maps, class and tuned weights
included), on the bundled DCGAN and on a StyleGAN2 network pickle with optimized noise."""

import numpy as np
import pytest
import torch
from PIL import Image

from latent_fit.generators.stylegan2 import StyleGAN2Generator
from test_stylegan2 import persistent_network, write_pickle

SMALL = dict(z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3,
             mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=1024, channel_max=64))
FAST = ["--steps", "20", "--loss", "mse"]


def psnr(a, b) -> float:
    """PSNR in dB of two uint8 images (100 when identical)."""
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return 100.0 if mse == 0 else float(10 * np.log10(255 ** 2 / mse))


def tile(path, row: int, col: int, size: int, pad: int = 2) -> np.ndarray:
    """Panel (row, col) of a grid written by images.grid."""
    g = np.asarray(Image.open(path))
    return g[row * (size + pad):row * (size + pad) + size, col * (size + pad):col * (size + pad) + size]


@pytest.fixture(scope="module")
def sg2_pickle(tmp_path_factory):
    """A small StyleGAN2 network pickle whose noise inputs visibly change the image."""
    torch.manual_seed(0)
    G = StyleGAN2Generator(**SMALL)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if "torgb" in name:
                p.mul_(0.4)
            if name.endswith("noise_strength"):
                p.fill_(0.3)
    path = tmp_path_factory.mktemp("sg2") / "small.pkl"
    net = persistent_network(G.state_dict(), SMALL, "raise SystemExit('never run')\n")
    write_pickle(path, dict(G_ema=net, G=net))
    return path


def _project_edit_interpolate(cli, tmp_path, two_targets, generator, space, *extra):
    """Project two targets, move them along their mean difference by 0 and 1, interpolate
    between them: (size, PSNRs of strength 0 vs the projection, PSNRs of the path ends vs them)."""
    g = ["-g", generator] + (["--space", space] if space else [])
    out = tmp_path / "p"
    r = cli("project", two_targets, "-o", out, *g, *FAST, *extra)
    assert r.exit_code == 0, r.stderr
    a, b = out / "face_00.npz", out / "astronaut.npz"
    assert cli("direction", "-o", tmp_path / "d.npy", "-g", generator, "--positive", a, "--negative", b).exit_code == 0
    r = cli("edit", a, b, "-g", generator, "--direction", tmp_path / "d.npy", "--strength", "0,1", "-o", tmp_path / "e")
    assert r.exit_code == 0, r.stderr
    proj = {s: np.asarray(Image.open(out / f"{s}.png")) for s in ("face_00", "astronaut")}
    size = proj["face_00"].shape[0]
    strength0 = [psnr(np.asarray(Image.open(tmp_path / "e" / f"{s}_s+0.png")), proj[s]) for s in proj]
    moved = psnr(np.asarray(Image.open(tmp_path / "e" / "face_00_s+1.png")), proj["face_00"])
    assert moved < 60   # the direction does move the image: the test can tell
    r = cli("interpolate", a, b, "-g", generator, "--frames", "3", "-o", tmp_path / "i")
    assert r.exit_code == 0, r.stderr
    ends = [psnr(tile(tmp_path / "i" / f"{m}.png", 0, col, size), proj[s])
            for m in ("linear", "spherical") for col, s in ((0, "face_00"), (2, "astronaut"))]
    return strength0, ends


def test_dcgan_edits_start_from_the_projection(cli, tmp_path, two_targets):
    strength0, ends = _project_edit_interpolate(cli, tmp_path, two_targets, "digiface-dcgan64", None)
    assert min(strength0 + ends) >= 50, (strength0, ends)


@pytest.mark.parametrize("space", ["w", "w+"])
def test_stylegan2_edits_render_with_the_stored_noise(cli, tmp_path, two_targets, sg2_pickle, space):
    from latent_fit import read_latent_file
    strength0, ends = _project_edit_interpolate(cli, tmp_path, two_targets, sg2_pickle, space)
    assert min(strength0 + ends) >= 50, (strength0, ends)
    assert any(k.startswith("noise_") for k in read_latent_file(tmp_path / "p" / "face_00.npz"))
