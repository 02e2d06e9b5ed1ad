"""w_r sweeps: monotone trade-off in one batched run, realism measures, the knee, the command."""

import csv
import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latent_fit import SweepResult, project, realism, render, suggest_wr, sweep, write_latent_file
from latent_fit.generators.stylegan2 import StyleGAN2Generator

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
TARGETS = [SAMPLES / "targets" / f"face_0{i}.png" for i in (0, 3)]
REQUIRED = ["target", "wr", "mse", "psnr", "lpips", "dz_norm", "prior_nll", "realism"]


def test_sweep_is_one_batched_run_and_monotone_in_wr(G, monkeypatch):
    """All w_r share one start (init), so the exact trade-off shows: ||dz|| never grows and PSNR
    never rises as w_r grows. Random multi-starts may pick different starts per w_r."""
    z = G.sample(2, seed=7)
    targets = render(G, z)
    init = z + 0.3 * torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    wrs = [0, 1e-2, 1e-1, 1]
    sweep_module = importlib.import_module("latent_fit.sweep")
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[1].shape[0])
        return project(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "project", counted)
    monkeypatch.setattr(importlib.import_module("latent_fit.edit"), "project", counted)  # edit sweeps
    # no Jacobian metrics (not asserted here; test_jacobian's sweep has them): 8 x 64 synthesis rows less
    sw = sweep(G, targets, wrs, ["a", "b"], init=init, steps=150, loss="mse", jacobian_metrics=False)
    assert calls == [8]  # one run of targets x w_r samples
    assert sw.metrics["psnr"].shape == (2, 4) and list(sw.wrs) == wrs
    assert (np.diff(sw.metrics["dz_norm"], axis=1) <= 0).all(), sw.metrics["dz_norm"]
    assert (np.diff(sw.metrics["psnr"], axis=1) <= 0).all(), sw.metrics["psnr"]
    assert (sw.metrics["mask_mse_before"] > sw.metrics["mask_mse_after"]).all()
    # every sample is independent: target b at w_r 1e-1 alone gives the same latent
    alone = project(
        G,
        targets[1:],
        ["b"],
        init=init[1:],
        wr=0.1,
        steps=150,
        loss="mse",
        latent_noise=0,
        optimize_noise=False,
        jacobian_metrics=False,
    )
    assert torch.allclose(alone.latent[0], sw.result.latent[1 * 4 + 2], atol=1e-5)
    rows = sw.rows()
    assert len(rows) == 8 and rows[6]["target"] == "b" and rows[6]["wr"] == 0.1
    assert set(REQUIRED) <= set(rows[0])


def test_realism_measures_of_prior_samples_and_of_the_center(G):
    z = G.sample(2000, seed=3)
    m = realism(G, z, "z")
    d = 100
    assert abs(m["prior_nll"].mean() - d / 2 * (1 + np.log(2 * np.pi))) < 2
    assert abs(m["radius"].mean() - np.sqrt(d)) < 0.1
    assert 0.4 < m["realism"].mean() < 0.7  # |N(0, 1/2)| has mean 0.56
    center = realism(G, torch.zeros(1, d), "z")
    assert center["prior_nll"][0] < m["prior_nll"].min() and center["realism"][0] == pytest.approx(10)


def test_realism_in_w_uses_a_fitted_gaussian():
    G = StyleGAN2Generator(
        z_dim=8,
        c_dim=0,
        w_dim=16,
        img_resolution=16,
        img_channels=3,
        mapping_kwargs={"num_layers": 2},
        synthesis_kwargs={"channel_base": 128, "channel_max": 16},
    ).freeze()
    for space in ("w", "w+"):
        w = G.sample(500, seed=11, space=space)
        m = realism(G, w, space)
        d = int(np.prod(G.latent_shape(space)))
        assert abs(m["radius"].mean() - np.sqrt(d)) < 0.15 * np.sqrt(d)
        far = realism(G, w[:1] * 10, space)
        assert far["realism"][0] > m["realism"].max()


def synthetic(psnr, dz):
    psnr, dz = np.array([psnr]), np.array([dz])
    return SweepResult(
        names=["t"], wrs=np.array([0, 1e-3, 1e-2, 1e-1, 1]), result=None, metrics={"psnr": psnr, "dz_norm": dz}
    )


def test_suggested_wr_is_the_knee():
    j, reason = suggest_wr(synthetic([30, 29.8, 29, 20, 12], [10, 4, 2, 1.5, 0]))
    assert j == 2 and "w_r=0.01 is the knee" in reason
    j, reason = suggest_wr(synthetic([30, 25, 20, 15, 10], [10, 7.5, 5, 2.5, 0]))  # a straight line
    assert j == 0 and "no clear knee" in reason


def test_cli_sweep_writes_table_plot_grid_and_suggests(cli, tmp_path):
    out = tmp_path / "out"
    res = cli("sweep", *TARGETS, "--wr", "0,1e-2,1", "--steps", "20", "--starts", "1", "--loss", "mse", "-o", out)
    assert res.exit_code == 0, res.stderr
    assert "one run of 6 samples" in res.stdout and "suggested w_r=" in res.stdout
    with open(out / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and set(REQUIRED) <= set(rows[0])
    assert [(r["target"], float(r["wr"])) for r in rows[:3]] == [("face_00", 0), ("face_00", 0.01), ("face_00", 1)]
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape[1] == 4 * 64 + 3 * 2 and grid.shape[0] > 2 * 64 + 2  # target + 3 w_r, header
    assert Image.open(out / "sweep.png").size[0] > 500


def test_cli_edit_sweep_from_latents_with_a_mask(cli, tmp_path):
    mask = tmp_path / "mask.png"
    m = np.zeros((64, 64), np.uint8)
    m[8:32, 16:48] = 255
    Image.fromarray(m).save(mask)
    res = cli(
        "sweep",
        *TARGETS,
        "--init",
        SAMPLES / "latents",
        "--mask",
        mask,
        "--wr",
        "1e-3,1e-1",
        "--steps",
        "20",
        "--loss",
        "mse",
        "-o",
        tmp_path / "out",
    )
    assert res.exit_code == 0, res.stderr
    with open(tmp_path / "out" / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {"mask_mse_before", "mask_mse_after", "outside_change"} <= set(rows[0])


@pytest.mark.parametrize("wr", ["x", "1e-3,,1", "-1", "inf"])
def test_cli_sweep_bad_wr(cli, tmp_path, wr):
    res = cli("sweep", TARGETS[0], "--wr", wr, "--steps", "2", "-o", tmp_path / "out")
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --wr"), res.stderr


def test_cli_sweep_init_from_another_generator(cli, tmp_path):
    other = tmp_path / "other.npz"
    write_latent_file(
        other, latent=np.zeros(100, np.float32), space="z", generator="some-other-gan", generator_sha256="0" * 64
    )
    res = cli("sweep", TARGETS[0], "--init", other, "--steps", "2", "-o", tmp_path / "out")
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(other) in lines[0] and "some-other-gan" in lines[0], res.stderr
