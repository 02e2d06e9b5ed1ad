"""One policy: the Python API and the command line, given the same inputs and no settings beyond
them, pick the same presets and defaults (the encoder's start and ENCODED, the edit w_r of the
units asked for, the sweep's preset) and so give the same latents."""

import csv

import numpy as np
import torch

from latent_fit import edit, load_encoder, project, read_latent_file, sweep
from latent_fit.images import load_image, load_request

from conftest import SAMPLES

TARGET = SAMPLES / "targets" / "face_00.png"
FAST = {"steps": 12, "loss": "mse"}
FAST_FLAGS = ["--steps", "12", "--loss", "mse"]


def test_project_api_and_cli_agree(cli, G, tmp_path):
    r = cli("project", TARGET, "-o", tmp_path / "out", *FAST_FLAGS)
    assert r.exit_code == 0, r.output
    x = load_image(TARGET, G.resolution)[None]
    res = project(G, x, ["face_00"], encoder=load_encoder("auto", G), **FAST)
    stored = read_latent_file(tmp_path / "out" / "face_00.npz")
    assert stored["config"]["starts"] == 1 and res.config["starts"] == 1  # ENCODED from the encoder's start
    np.testing.assert_allclose(stored["latent"], res.latent[0].numpy(), rtol=0, atol=1e-6)


def test_edit_api_and_cli_agree_in_relative_units(cli, G, tmp_path):
    start = SAMPLES / "latents" / "face_01.npz"
    request = SAMPLES / "targets" / "face_02.png"
    r = cli("edit", start, "--target", request, "-o", tmp_path / "out", "--wr-units", "relative", *FAST_FLAGS)
    assert r.exit_code == 0, r.output
    z0 = torch.from_numpy(read_latent_file(start)["latent"])[None]
    req, mask = load_request(request, G.resolution)
    res = edit(G, z0, req[None], mask, ["face_01"], wr_units="relative", **FAST)
    stored = read_latent_file(tmp_path / "out" / "face_01.npz")
    assert stored["config"]["wr"] == res.config["wr"] == 2.0  # the edit default in relative units
    np.testing.assert_allclose(stored["latent"], res.latent[0].numpy(), rtol=0, atol=1e-6)


def test_sweep_api_and_cli_agree(cli, G, tmp_path):
    r = cli("sweep", TARGET, "-o", tmp_path / "out", "--wr", "0,1", *FAST_FLAGS)
    assert r.exit_code == 0, r.output
    x = load_image(TARGET, G.resolution)[None]
    sw = sweep(G, x, [0.0, 1.0], ["face_00"], encoder=load_encoder("auto", G), **FAST)
    rows = list(csv.DictReader(open(tmp_path / "out" / "sweep.csv")))
    np.testing.assert_allclose([float(row["psnr"]) for row in rows], sw.metrics["psnr"][0], rtol=0, atol=1e-3)
    np.testing.assert_allclose([float(row["dz_norm"]) for row in rows], sw.metrics["dz_norm"][0], rtol=0, atol=1e-5)
