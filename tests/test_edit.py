"""Edits: masked (iGAN) edits and their w_r bounds, directions, interpolation, and the edit /
direction / interpolate commands end to end, bad inputs included."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latent_fit import (
    apply_direction,
    edit,
    interpolate,
    linear_boundary,
    mean_difference,
    pca_directions,
    read_latent_file,
    render,
    write_latent_file,
)

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
LATENTS = sorted((SAMPLES / "latents").glob("face_*.npz"))


def latent(i):
    return torch.from_numpy(read_latent_file(LATENTS[i])["latent"])


def box_mask(n=1):
    m = torch.zeros(n, 1, 64, 64)
    m[:, :, 8:32, 16:48] = 1
    return m


def one_line_error(stderr, *names):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert all(str(n) in lines[0] for n in names), lines[0]


# --- masked edits -----------------------------------------------------------------------------


def test_masked_edit_moves_the_region_within_bounds_that_tighten_as_wr_grows(G):
    """Paint another face's upper half into two faces, at four w_r in one batch."""
    wrs = [1e-3, 1e-2, 1e-1, 1.0]
    z0 = torch.stack([latent(0), latent(1)])
    before = render(G, z0)
    mask = box_mask(2)
    request = before * (1 - mask) + render(G, z0.flip(0)) * mask
    k = len(wrs)
    res = edit(
        G,
        z0.repeat_interleave(k, 0),
        request.repeat_interleave(k, 0),
        mask.repeat_interleave(k, 0),
        [f"{i}" for i in range(2) for _ in wrs],
        wr=torch.tensor(wrs * 2),
        steps=100,
        loss="mse",
    )
    m = {
        key: res.metrics[key].reshape(2, k)
        for key in ("mask_mse_before", "mask_mse_after", "outside_change", "dz_norm")
    }
    assert torch.allclose(res.latent_init, z0.repeat_interleave(k, 0))
    assert np.allclose(res.metrics["wr"], wrs * 2)
    # the masked region moves toward the request, close to it at the smallest w_r
    assert (m["mask_mse_after"] < m["mask_mse_before"]).all()
    assert (m["mask_mse_after"][:, 0] < 0.25 * m["mask_mse_before"][:, 0]).all()
    # the objective never ends above its start: err_after + wr*||dz||^2 <= err_before, hence
    # ||dz|| <= sqrt(err_before / wr), a bound that tightens as w_r grows
    assert (m["dz_norm"] <= np.sqrt(m["mask_mse_before"] / np.array(wrs))).all()
    # larger w_r: smaller ||dz|| and less change outside the mask
    assert (np.diff(m["dz_norm"], axis=1) < 0).all()
    assert (np.diff(m["outside_change"], axis=1) <= 1e-4).all()
    assert (m["dz_norm"][:, -1] < 0.2).all() and (m["outside_change"][:, -1] < 0.01).all()
    # mse / psnr are measured where the objective looked: inside the mask
    assert np.allclose(res.metrics["mse"], res.metrics["mask_mse_after"], rtol=1e-5)


def test_edit_without_mask_has_no_outside(G):
    z0 = latent(2)[None]
    res = edit(G, z0, render(G, latent(3)[None]), steps=5, loss="mse")
    assert np.isnan(res.metrics["outside_change"]).all()
    assert res.config["latent_noise"] == 0 and res.config["steps"] == 5 and res.config["wr"] == 1e-2


# --- directions and interpolation --------------------------------------------------------------


@pytest.mark.parametrize("method", [mean_difference, linear_boundary])
def test_direction_from_synthetic_labels_recovers_the_planted_one(method):
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(2000, 100, generator=gen)
    planted = torch.randn(100, generator=gen)
    planted /= planted.norm()
    label = z @ planted + 0.5 * torch.randn(2000, generator=gen) > 0.3  # noisy, unbalanced
    d = method(z[label], z[~label])
    assert d.shape == (100,) and abs(float(d.norm()) - 1) < 1e-5
    assert float(d @ planted) >= 0.9


def test_pca_directions_are_unit_deterministic_and_ordered(G):
    d1, std1 = pca_directions(G, 3, n=256)
    d2, _ = pca_directions(G, 3, n=256)
    assert d1.shape == (3, 100) and torch.allclose(d1.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.equal(d1, d2) and (std1 > 0).all()


def test_apply_direction_and_interpolate():
    a, b = torch.randn(2, 100), torch.randn(2, 100)
    moved = apply_direction(a, b[0], [-1.0, 0.0, 2.0])
    assert moved.shape == (2, 3, 100)
    assert torch.allclose(moved[:, 1], a) and torch.allclose(moved[:, 2], a + 2 * b[0])
    for mode in ("linear", "spherical"):
        path = interpolate(a, b, 5, mode)
        assert path.shape == (2, 5, 100)
        assert torch.allclose(path[:, 0], a, atol=1e-5) and torch.allclose(path[:, -1], b, atol=1e-5)
    lin = interpolate(a, b, 3, "linear")
    assert torch.allclose(lin[:, 1], (a + b) / 2)
    b_same_norm = b / b.norm(dim=1, keepdim=True) * a.norm(dim=1, keepdim=True)
    sph = interpolate(a, b_same_norm, 7, "spherical")
    assert torch.allclose(sph.norm(dim=2), a.norm(dim=1, keepdim=True).expand(2, 7), rtol=1e-5)


# --- the commands, end to end ------------------------------------------------------------------


def write_rgba_request(path, face=1):
    """Face `face`'s image, opaque only in the box: a painted request that is its own mask."""
    rgb = np.asarray(Image.open(SAMPLES / "targets" / f"face_{face:02d}.png").convert("RGB"))
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = rgb
    rgba[8:32, 16:48, 3] = 255
    Image.fromarray(rgba).save(path)
    return path


def test_cli_masked_edit_writes_outputs_and_resumes(cli, tmp_path):
    req = write_rgba_request(tmp_path / "req.png")
    out = tmp_path / "out"
    res = cli(
        "edit", LATENTS[0], LATENTS[2], "--target", req, "--wr", "0.01", "--steps", "20", "--loss", "mse", "-o", out
    )
    assert res.exit_code == 0, res.stderr
    assert "edited 2 latent(s)" in res.stdout
    for stem in ("face_00", "face_02"):
        assert (out / f"{stem}.png").is_file()
        compare = np.asarray(Image.open(out / f"{stem}_compare.png"))
        assert compare.shape == (64, 3 * 64 + 2 * 2, 3)  # before | request | after
        data = read_latent_file(out / f"{stem}.npz")
        assert np.array_equal(data["latent_init"], read_latent_file(SAMPLES / "latents" / f"{stem}.npz")["latent"])
        assert data["generator"] == "digiface-dcgan64" and data["config"]["wr"] == 0.01
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert list(rows[0])[:9] == [
        "target",
        "wr",
        "wr_units",
        "wr_factor",
        "wr_effective",
        "mask_mse_before",
        "mask_mse_after",
        "outside_change",
        "dz_norm",
    ]
    assert len(rows) == 2 and all(float(r["mask_mse_after"]) < float(r["mask_mse_before"]) for r in rows)
    assert all(r["wr_units"] == "raw" and float(r["wr_effective"]) == 0.01 for r in rows)
    res = cli("edit", LATENTS[0], LATENTS[2], "--target", req, "--steps", "20", "--loss", "mse", "-o", out)
    assert res.exit_code == 0 and "skipped 2 complete" in res.stdout


def test_cli_edit_requests_matched_by_stem_report_the_missing_one(cli, tmp_path):
    reqs = tmp_path / "requests"
    reqs.mkdir()
    write_rgba_request(reqs / "face_00.png", face=3)
    res = cli("edit", LATENTS[0], LATENTS[1], "--target", reqs, "--steps", "5", "--loss", "mse", "-o", tmp_path / "out")
    assert res.exit_code == 1
    assert "edited 1 latent(s)" in res.stdout and "face_01" in res.stderr
    assert (tmp_path / "out" / "face_00.npz").is_file()


def test_cli_direction_edit_strip(cli, tmp_path, G):
    d = np.zeros(100, np.float32)
    d[0] = 1
    np.save(tmp_path / "d.npy", d)
    out = tmp_path / "out"
    res = cli("edit", LATENTS[0], LATENTS[1], "--direction", tmp_path / "d.npy", "--strength", "-3,-1,0,1,3", "-o", out)
    assert res.exit_code == 0, res.stderr
    for stem in ("face_00", "face_01"):
        strip = np.asarray(Image.open(out / f"{stem}_strip.png"))
        assert strip.shape == (64, 5 * 64 + 4 * 2, 3)
        assert {p.name for p in out.glob(f"{stem}_s[+-]*.png")} == {
            f"{stem}_s{s}.png" for s in ("-3", "-1", "+0", "+1", "+3")
        }
    z = latent(0)
    z[0] += 3
    expected = ((render(G, z[None])[0].permute(1, 2, 0) + 1) * 127.5).round().numpy()
    assert np.abs(np.asarray(Image.open(out / "face_00_s+3.png")).astype(float) - expected).max() <= 1


def test_cli_direction_from_labelled_files_and_pca(cli, tmp_path, G):
    gen = torch.Generator().manual_seed(1)
    planted = torch.zeros(100)
    planted[5] = 1
    for label, folder in ((1.0, "pos"), (-1.0, "neg")):
        (tmp_path / folder).mkdir()
        z = torch.randn(60, 100, generator=gen) + 3 * label * planted
        for i, zi in enumerate(z):
            write_latent_file(
                tmp_path / folder / f"{folder}{i}.npz",
                latent=zi,
                space="z",
                generator=G.name,
                generator_sha256=G.sha256,
            )
    pos = sorted(str(p) for p in (tmp_path / "pos").glob("*.npz"))
    # several files after one flag, as an unquoted shell glob gives them
    res = cli("direction", "-o", tmp_path / "d.npy", "--positive", *pos, "--negative", tmp_path / "neg")
    assert res.exit_code == 0, res.stderr
    assert "from 60 positive and 60 negative" in res.stdout
    assert float(np.load(tmp_path / "d.npy") @ planted.numpy()) >= 0.9
    res = cli("direction", "-o", tmp_path / "pca.npy", "--pca", "4", "--samples", "200")
    assert res.exit_code == 0, res.stderr
    assert np.load(tmp_path / "pca.npy").shape == (4, 100)
    res = cli(
        "edit",
        LATENTS[0],
        "--direction",
        tmp_path / "pca.npy",
        "--component",
        "3",
        "--strength",
        "2",
        "-o",
        tmp_path / "out",
    )
    assert res.exit_code == 0 and (tmp_path / "out" / "face_00_s+2.png").is_file()


def test_cli_interpolate_strip_and_video(cli, tmp_path):
    out = tmp_path / "out"
    res = cli("interpolate", LATENTS[0], LATENTS[1], LATENTS[2], "--frames", "5", "-o", out)
    assert res.exit_code == 0, res.stderr
    for mode in ("linear", "spherical"):
        strip = np.asarray(Image.open(out / f"{mode}.png"))
        assert strip.shape == (2 * 64 + 2, 5 * 64 + 4 * 2, 3)  # a row per pair
        assert list(out.glob(f"{mode}.mp4")) or list(out.glob(f"{mode}.gif"))


# --- bad inputs: one line naming the input, exit 1 ----------------------------------------------


def test_cli_latent_from_another_generator(cli, tmp_path):
    other = tmp_path / "other.npz"
    write_latent_file(
        other, latent=np.zeros(100, np.float32), space="z", generator="some-other-gan", generator_sha256="0" * 64
    )
    res = cli("edit", other, "--direction", tmp_path / "d.npy", "-o", tmp_path / "out")
    assert res.exit_code == 1
    one_line_error(res.stderr, other, "some-other-gan")
    res = cli("interpolate", other, LATENTS[0], "-o", tmp_path / "out")
    assert res.exit_code == 1 and str(other) in res.stderr


def test_cli_mask_of_the_wrong_size(cli, tmp_path):
    mask = tmp_path / "mask.png"
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(mask)
    res = cli(
        "edit",
        LATENTS[0],
        "--target",
        SAMPLES / "targets" / "face_01.png",
        "--mask",
        mask,
        "--steps",
        "5",
        "--loss",
        "mse",
        "-o",
        tmp_path / "out",
    )
    assert res.exit_code == 1
    one_line_error(res.stderr, mask, "32x32")


@pytest.mark.parametrize("strength", ["a,b", "1,,2", "nan", ""])
def test_cli_strengths_that_do_not_parse(cli, tmp_path, strength):
    np.save(tmp_path / "d.npy", np.ones(100, np.float32))
    res = cli("edit", LATENTS[0], "--direction", tmp_path / "d.npy", "--strength", strength, "-o", tmp_path / "out")
    assert res.exit_code == 1
    one_line_error(res.stderr, "--strength")


def test_cli_direction_of_the_wrong_shape_and_missing_mode(cli, tmp_path):
    np.save(tmp_path / "d.npy", np.ones(7, np.float32))
    res = cli("edit", LATENTS[0], "--direction", tmp_path / "d.npy", "-o", tmp_path / "out")
    assert res.exit_code == 1
    one_line_error(res.stderr, "d.npy", "[7]")
    res = cli("edit", LATENTS[0], "-o", tmp_path / "out")
    assert res.exit_code == 1
    one_line_error(res.stderr, "--target", "--direction")
    # a header declaring 10^12 directions over a few bytes: refused before any allocation
    huge = tmp_path / "huge.npy"
    with open(huge, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 100)})
        f.write(b"\0" * 400)
    res = cli("edit", LATENTS[0], "--direction", huge, "-o", tmp_path / "out")
    assert res.exit_code == 1
    one_line_error(res.stderr, "huge.npy", "not a .npy direction")
