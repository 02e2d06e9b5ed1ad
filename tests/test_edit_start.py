"""What an edit starts from: the projection itself. A direction edit at strength 0 and the ends
of an interpolation reproduce the projection's PNG (its stored noise maps, class and tuned weights
included), on the bundled DCGAN and on a StyleGAN2 network pickle with optimized noise."""

import numpy as np
import pytest
import torch
from PIL import Image
from test_stylegan2 import persistent_network, write_pickle

from latent_fit.generators.stylegan2 import StyleGAN2Generator

from conftest import SMALL_STYLEGAN2 as SMALL

FAST = ["--steps", "20", "--loss", "mse"]


def psnr(a, b) -> float:
    """PSNR in dB of two uint8 images (100 when identical)."""
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return 100.0 if mse == 0 else float(10 * np.log10(255**2 / mse))


def tile(path, row: int, col: int, size: int, pad: int = 2) -> np.ndarray:
    """Panel (row, col) of a grid written by images.grid."""
    g = np.asarray(Image.open(path))
    return g[row * (size + pad) : row * (size + pad) + size, col * (size + pad) : col * (size + pad) + size]


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
    assert moved < 60  # the direction does move the image: the test can tell
    r = cli("interpolate", a, b, "-g", generator, "--frames", "3", "-o", tmp_path / "i")
    assert r.exit_code == 0, r.stderr
    ends = [
        psnr(tile(tmp_path / "i" / f"{m}.png", 0, col, size), proj[s])
        for m in ("linear", "spherical")
        for col, s in ((0, "face_00"), (2, "astronaut"))
    ]
    return strength0, ends


def test_dcgan_edits_start_from_the_projection(cli, tmp_path, two_targets):
    strength0, ends = _project_edit_interpolate(cli, tmp_path, two_targets, "digiface-dcgan64", None)
    assert min(strength0 + ends) >= 50, (strength0, ends)


@pytest.mark.parametrize("space", ["w", "w+"])
def test_stylegan2_edits_render_with_the_stored_noise(cli, tmp_path, two_targets, sg2_pickle, space):
    from latent_fit import read_latent_file

    strength0, ends = _project_edit_interpolate(cli, tmp_path, two_targets, sg2_pickle, space)
    assert min(strength0 + ends) >= 50, (strength0, ends)
    a = tmp_path / "p" / "face_00.npz"
    r = cli(
        "edit",
        a,
        "-g",
        sg2_pickle,
        "--target",
        two_targets / "astronaut.png",
        "--steps",
        "2",
        "--loss",
        "mse",
        "-o",
        tmp_path / "painted",
    )
    assert r.exit_code == 0, r.stderr
    before = tile(tmp_path / "painted" / "face_00_compare.png", 0, 0, 32)  # before | request | after
    assert psnr(before, Image.open(tmp_path / "p" / "face_00.png")) >= 50
    projected, edited = read_latent_file(a), read_latent_file(tmp_path / "painted" / "face_00.npz")
    noise = [k for k in projected if k.startswith("noise_")]
    assert noise and all(np.array_equal(projected[k], edited[k]) for k in noise)  # held at the projection's


def test_a_tuned_stylegan2_projection_is_the_start_too(cli, tmp_path, two_targets, sg2_pickle):
    strength0, ends = _project_edit_interpolate(
        cli, tmp_path, two_targets, sg2_pickle, "w", "--tune", "--tune-steps", "5"
    )
    assert (tmp_path / "p" / "face_00.tuned.safetensors").is_file()
    assert min(strength0 + ends) >= 50, (strength0, ends)


def test_a_conditional_module_renders_in_the_stored_class(cli, tmp_path, two_targets):
    import textwrap

    from test_modules import MODULES

    path = tmp_path / "lf_cond_22.py"
    path.write_text(textwrap.dedent(MODULES))
    strength0, ends = _project_edit_interpolate(cli, tmp_path, two_targets, f"{path}:cond", None, "--class", "2")
    assert min(strength0 + ends) >= 50, (strength0, ends)


def test_api_edit_holds_the_projection_noise_and_interpolates_it():
    from latent_fit import edit, project, sweep
    from latent_fit.edit import interpolate_noise, render
    from latent_fit.images import to_uint8

    torch.manual_seed(0)
    G = StyleGAN2Generator(**SMALL).freeze()
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.3)
        targets = G.synthesize(G.sample(2, seed=1, space="w"), "w").clamp(-1, 1)
    r = project(G, targets, ["a", "b"], loss="mse", steps=10)
    assert psnr(to_uint8(render(G, r.latent, "w", noise=r.noise)), to_uint8(r.images)) >= 50
    assert psnr(to_uint8(render(G, r.latent, "w")), to_uint8(r.images)) < 40  # the noise matters
    e = edit(G, r.latent, targets.flip(0), names=["a", "b"], noise=r.noise, loss="mse", steps=3)
    assert psnr(to_uint8(e.before), to_uint8(r.images)) >= 50
    assert all(torch.equal(a, b) for a, b in zip(e.noise, r.noise))  # held fixed (EDIT: optimize_noise off)
    sw = sweep(G, targets.flip(0), [1e-3, 1e3], ["a", "b"], init=r.latent, noise=r.noise, loss="mse", steps=2)
    assert psnr(to_uint8(sw.result.before), to_uint8(r.images.repeat_interleave(2, 0))) >= 50
    a, b = [m[:1] for m in r.noise], [m[1:] for m in r.noise]
    for mode in ("linear", "spherical"):
        path = interpolate_noise(a, b, 5, mode)
        assert all(torch.equal(p[0, 0], x[0]) for p, x in zip(path, a))
        assert all((p[0, -1] - x[0]).abs().max() <= 1e-6 for p, x in zip(path, b))
    mid = [p[0, 2].std() for p in interpolate_noise(a, b, 5, "spherical")]
    assert min(mid) > 0.9  # a straight line between independent unit maps has std ~0.71 there


def test_directions_carry_a_record_of_their_generator_and_space(cli, tmp_path):
    import json

    from conftest import SAMPLES

    lat = sorted((SAMPLES / "latents").glob("*.npz"))
    d = tmp_path / "d.npy"
    r = cli("direction", "-o", d, "--positive", lat[0], "--negative", lat[1])
    assert r.exit_code == 0, r.stderr
    rec = json.loads((tmp_path / "d.npy.json").read_text())
    assert (rec["generator"], rec["space"], rec["shape"], rec["made"]["method"]) == (
        "digiface-dcgan64",
        "z",
        [100],
        "mean",
    )
    assert len(rec["generator_sha256"]) == 64 and lat[0].stem in rec["made"]["positive"]
    ok = cli("edit", lat[0], "--direction", d, "--strength", "1", "-o", tmp_path / "ok")
    assert ok.exit_code == 0 and "warning" not in ok.stderr, ok.stderr

    foreign = rec | {"generator": "ffhq", "generator_sha256": "f" * 64, "space": "w"}
    (tmp_path / "d.npy.json").write_text(json.dumps(foreign))
    r = cli("edit", lat[0], "--direction", d, "--strength", "1", "-o", tmp_path / "no")
    assert r.exit_code == 1 and r.stderr.strip() == (
        f"error: {d}: direction made for generator 'ffhq' in space 'w'; this run uses 'digiface-dcgan64' in space 'z'"
    )

    plain = tmp_path / "plain.npy"  # from another tool: used, with one warning
    np.save(plain, np.eye(100, dtype=np.float32)[3])
    r = cli("edit", lat[0], "--direction", plain, "--strength", "1", "-o", tmp_path / "plain")
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning")]
    assert r.exit_code == 0 and len(warnings) == 1 and "has no record" in warnings[0], r.stderr
    np.save(d, np.eye(100, dtype=np.float32)[4])  # overwritten since its record was written
    r = cli("edit", lat[0], "--direction", d, "--strength", "1", "-o", tmp_path / "changed")
    assert r.exit_code == 0 and "does not match its record d.npy.json" in r.stderr, r.stderr


def test_project_init_starts_from_the_stored_noise_maps(cli, tmp_path, two_targets, sg2_pickle):
    """project --init with noise optimization off renders with the init file's maps throughout:
    zero steps give back its PNG."""
    out = tmp_path / "p"
    assert cli("project", two_targets, "-o", out, "-g", sg2_pickle, *FAST).exit_code == 0
    r = cli(
        "project",
        two_targets,
        "-o",
        tmp_path / "again",
        "-g",
        sg2_pickle,
        "--init",
        out,
        "--steps",
        "1",
        "--lr",
        "0",
        "--starts",
        "1",
        "--no-noise",
        "--loss",
        "mse",
    )
    assert r.exit_code == 0, r.stderr
    for s in ("face_00", "astronaut"):
        assert psnr(Image.open(tmp_path / "again" / f"{s}.png"), Image.open(out / f"{s}.png")) >= 50
