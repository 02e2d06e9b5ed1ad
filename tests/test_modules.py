"""User modules beyond latent -> RGB: conditional modules (forward(z, c), `--class`, the class kept
in the latent file for later commands) and grayscale modules ([N, 1, H, W], mode L PNGs)."""

import shutil
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from latent_fit import read_latent_file
from latent_fit.errors import LatentFitError
from latent_fit.generators import load_generator
from latent_fit.images import load_image, save_png, to_uint8
from latent_fit.objective import LPIPS

FAST = ["--steps", "60", "--starts", "2", "--loss", "mse"]
MODULES = """
    import torch
    from torch import nn


    class Cond(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_dim = 4                       # an instance attribute: TorchScript keeps it
            self.fc = nn.Linear(8, 3 * 16 * 16)
            self.embed = nn.Linear(4, 3 * 16 * 16)

        def forward(self, z, c):
            return torch.tanh(self.fc(z) + 2 * self.embed(c)).view(-1, 3, 16, 16)


    class Gray(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 16 * 16)

        def forward(self, z):
            return torch.tanh(self.fc(z)).view(-1, 1, 16, 16)


    def cond():
        torch.manual_seed(0)
        return Cond()


    def gray():
        torch.manual_seed(0)
        return Gray()


    def unlabelled():
        m = cond()
        del m.c_dim
        return m
"""


@pytest.fixture
def modules(tmp_path):
    """path/to/lf_modules_7c1e.py, the file holding both factories."""
    path = tmp_path / "lf_modules_7c1e.py"
    path.write_text(textwrap.dedent(MODULES))
    yield path
    for name in [n for n in sys.modules if "lf_modules_7c1e" in n]:
        del sys.modules[name]


def render_target(G, path, seed, c=None):
    """Save G(z) of a seed's prior sample as an RGB PNG (gray images repeated in R, G and B)."""
    with torch.no_grad():
        x = to_uint8(G.synthesize(G.sample(1, seed=seed), "z", c))[0]
    save_png(np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x, path)
    return path


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


def test_a_conditional_module_projects_per_class_and_later_commands_read_the_class(cli, modules, tmp_path):
    spec = f"{modules}:cond"
    G = load_generator(spec)
    assert (G.c_dim, G.z_dim, G.img_channels) == (4, 8, 3)
    target = render_target(G, tmp_path / "t.png", seed=31, c=G.class_vector(1, "z"))
    runs = {}
    for k in (1, 3):
        r = cli("project", target, "-g", spec, "-o", tmp_path / f"c{k}", "--class", k, *FAST)
        assert r.exit_code == 0, r.stderr
        runs[k] = read_latent_file(tmp_path / f"c{k}" / "t.npz")
        assert int(runs[k]["class_index"]) == k
    assert not np.allclose(runs[1]["latent"], runs[3]["latent"])
    assert runs[1]["metrics"]["psnr"] > runs[3]["metrics"]["psnr"] + 10  # the target's own class fits

    r = cli("project", target, "-g", spec, "-o", tmp_path / "none", *FAST)
    assert r.exit_code == 1 and "conditional with 4 classes" in r.stderr and len(r.stderr.splitlines()) == 1

    # edit and interpolate without --class render in the class the file stores
    before = pixels(tmp_path / "c1" / "t.png")
    r = cli(
        "edit",
        tmp_path / "c1" / "t.npz",
        "-g",
        spec,
        "-o",
        tmp_path / "edit",
        "--target",
        target,
        "--steps",
        "5",
        "--loss",
        "mse",
    )
    assert r.exit_code == 0, r.stderr
    assert int(read_latent_file(tmp_path / "edit" / "t.npz")["class_index"]) == 1
    assert np.abs(pixels(tmp_path / "edit" / "t_compare.png")[:, :16] - before).max() <= 1
    shutil.copy(tmp_path / "c1" / "t.npz", tmp_path / "u.npz")
    r = cli(
        "interpolate",
        tmp_path / "c1" / "t.npz",
        tmp_path / "u.npz",
        "-g",
        spec,
        "-o",
        tmp_path / "lerp",
        "--frames",
        "3",
        "--mode",
        "linear",
    )
    assert r.exit_code == 0, r.stderr
    assert np.abs(pixels(tmp_path / "lerp" / "linear.png")[:, :16] - before).max() <= 1

    r = cli(
        "sweep",
        target,
        "--init",
        tmp_path / "c1" / "t.npz",
        "-g",
        spec,
        "-o",
        tmp_path / "sweep",
        "--wr",
        "0,1",
        "--steps",
        "5",
        "--loss",
        "mse",
    )
    assert r.exit_code == 0, r.stderr

    # a class given by --class (here with --num-classes for a module without c_dim)
    r = cli(
        "direction",
        "-g",
        f"{modules}:unlabelled",
        "--num-classes",
        4,
        "--pca",
        2,
        "--samples",
        50,
        "--class",
        1,
        "-o",
        tmp_path / "u.npy",
    )
    assert r.exit_code == 0, r.stderr
    r = cli(
        "edit",
        tmp_path / "c3" / "t.npz",
        "-g",
        spec,
        "-o",
        tmp_path / "moved",
        "--direction",
        tmp_path / "u.npy",
        "--strength",
        "0",
        "--class",
        1,
    )  # its record names another generator
    assert r.exit_code == 1 and r.stderr.strip().endswith(
        "made for generator 'unlabelled' in space 'z'; this run uses 'cond' in space 'z'"
    )
    r = cli("direction", "-g", spec, "--pca", 2, "--samples", 50, "--class", 1, "-o", tmp_path / "d.npy")
    assert r.exit_code == 0, r.stderr
    r = cli(
        "edit",
        tmp_path / "c3" / "t.npz",
        "-g",
        spec,
        "-o",
        tmp_path / "moved",
        "--direction",
        tmp_path / "d.npy",
        "--strength",
        "0",
        "--class",
        1,
    )
    assert r.exit_code == 0, r.stderr
    with torch.no_grad():
        lat = torch.from_numpy(runs[3]["latent"])[None]
        in_class_1 = to_uint8(G.synthesize(lat, "z", G.class_vector(1, "z")))[0].astype(np.int16)
    assert np.abs(pixels(tmp_path / "moved" / "t_s+0.png") - in_class_1).max() <= 1

    shutil.copy(tmp_path / "c3" / "t.npz", tmp_path / "v.npz")
    r = cli(
        "interpolate",
        tmp_path / "c1" / "t.npz",
        tmp_path / "v.npz",
        tmp_path / "u.npz",
        "-g",
        spec,
        "-o",
        tmp_path / "mixed",
        "--frames",
        "3",
    )
    assert r.exit_code == 1 and len(r.stderr.splitlines()) == 1
    assert "latent files of different classes" in r.stderr


def test_a_grayscale_module_end_to_end(cli, modules, tmp_path):
    spec = f"{modules}:gray"
    G = load_generator(spec)
    assert (G.img_channels, G.c_dim) == (1, 0)
    target = render_target(G, tmp_path / "g.png", seed=47)
    request = render_target(G, tmp_path / "req.png", seed=48)
    r = cli("project", target, "-g", spec, "-o", tmp_path / "p", "--steps", "150", "--starts", "2", "--loss", "mse")
    assert r.exit_code == 0, r.stderr
    for name, size in [("g.png", (16, 16)), ("g_compare.png", (3 * 16 + 2 * 2, 16))]:
        with Image.open(tmp_path / "p" / name) as im:
            assert (im.mode, im.size) == ("L", size)
    assert read_latent_file(tmp_path / "p" / "g.npz")["metrics"]["psnr"] > 30
    assert "class_index" not in read_latent_file(tmp_path / "p" / "g.npz")

    r = cli(
        "edit",
        tmp_path / "p" / "g.npz",
        "-g",
        spec,
        "-o",
        tmp_path / "e",
        "--target",
        request,
        "--steps",
        "40",
        "--loss",
        "mse",
        "--wr",
        "0",
    )
    assert r.exit_code == 0, r.stderr
    for name in ("g.png", "g_compare.png"):
        with Image.open(tmp_path / "e" / name) as im:
            assert im.mode == "L"
    m = read_latent_file(tmp_path / "e" / "g.npz")["metrics"]
    assert m["mask_mse_after"] < 0.5 * m["mask_mse_before"]


def test_gray_targets_are_luma_and_lpips_sees_three_channels(tmp_path):
    Image.new("RGB", (4, 4), (200, 40, 90)).save(tmp_path / "c.png")
    gray = load_image(tmp_path / "c.png", 4, channels=1)
    assert gray.shape == (1, 4, 4)
    luma = (200 * 299 + 40 * 587 + 90 * 114) / 1000
    assert torch.allclose((gray + 1) * 127.5, torch.full_like(gray, luma), atol=1)

    seen = []

    class Net(torch.nn.Module):
        def forward(self, a, b):
            seen.append((a.shape, b.shape, bool((a[:, 0] == a[:, 2]).all())))
            return (a - b).pow(2).mean((1, 2, 3), keepdim=True)

    lp = LPIPS.__new__(LPIPS)  # the wrapper around a stand-in for the VGG network
    torch.nn.Module.__init__(lp)
    lp.net = Net()
    assert lp(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)).shape == (2,)
    assert seen == [((2, 3, 8, 8), (2, 3, 8, 8), True)]


def test_torchscript_conditional_modules_and_labels(modules, tmp_path):
    sys.path.insert(0, str(modules.parent))
    try:
        import lf_modules_7c1e as user
    finally:
        sys.path.remove(str(modules.parent))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(user.cond()), str(tmp_path / "cond.ts"))
    G = load_generator(tmp_path / "cond.ts")
    assert (G.c_dim, G.z_dim, G.resolution) == (4, 8, 16)
    c = G.cycled_labels(6)  # as the encoder's training samples use
    with torch.no_grad():
        x = G.synthesize(G.sample(6, seed=0, c=c), "z", c)
    assert x.shape == (6, 3, 16, 16) and not torch.allclose(x[0], x[1])
    with pytest.raises(LatentFitError, match="give a class"):
        G.synthesize(torch.zeros(1, 8))

    with pytest.raises(LatentFitError, match="c_dim attribute or --num-classes"):
        load_generator(f"{modules}:unlabelled")
    assert load_generator(f"{modules}:unlabelled", num_classes=4).c_dim == 4
