"""w_r in units of the generator's local Lipschitz constant (--wr-units relative): the Hutchinson
estimate, its invariance under a rescaled latent, per-sample independence, jacobian_norm, and the
units through project, edit, sweep and the CLI."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from latent_fit import edit, project, sweep
from latent_fit.errors import ArgumentError
from latent_fit.generators.base import Generator
from latent_fit.jacobian import jacobian_norm, jacobian_sq_norm, prior_sq_norm_median, wr_factor

from conftest import Rescaled

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


class Tiny(Generator):
    """A small ReLU MLP from z [16] to 3 x 8 x 8 images in [-1, 1]."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.z_dim, self.resolution, self.name = 16, 8, "tiny"
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 192), nn.Tanh())
        self.freeze()

    def synthesize(self, latent, space="z", c=None, noise=None):
        return self.net(latent).view(-1, 3, 8, 8)


def exact_sq_norm(G, z):
    return torch.stack(
        [torch.autograd.functional.jacobian(lambda v: G.synthesize(v[None]).flatten(), x).pow(2).sum() for x in z]
    )


def test_hutchinson_matches_the_exact_jacobian():
    G = Tiny()
    z = G.sample(6, seed=5)
    exact = exact_sq_norm(G, z)
    est = jacobian_sq_norm(G, z, "z", projections=512)
    assert ((est / exact - 1).abs() < 0.10).all(), est / exact
    default = torch.stack([jacobian_sq_norm(G, z, "z", seed=s) for s in range(8)])  # [seeds, N]
    assert ((default.mean(0) / exact - 1).abs() < 0.10).all()  # unbiased at the default K


def test_factor_is_per_sample_and_keyed_by_name(G):
    z0 = G.sample(5, seed=77)
    names = [f"t{i}" for i in range(5)]
    factor = wr_factor(G, z0, names=names)
    for i in (0, 3):
        assert torch.allclose(wr_factor(G, z0[i : i + 1], names=names[i : i + 1]), factor[i : i + 1], rtol=1e-5)
    flipped = wr_factor(G, z0.flip(0), names=names[::-1])
    assert torch.allclose(flipped.flip(0), factor, rtol=1e-5)
    # the factor is local: it differs between starts by more than the estimator's noise
    assert factor.max() / factor.min() > 1.3


def test_relative_units_in_the_loop_are_per_sample(G):
    """project(wr_units="relative"): each target's w_r times wr_factor at its own start, the same
    in a batch as alone; raw units report the factor too and use w_r as given."""
    z0 = G.sample(4, seed=78)
    x = G.synthesize(G.sample(4, seed=79)).detach()
    names = ["p", "q", "r", "s"]
    opts = dict(steps=2, loss="mse", init=z0, wr=0.5)
    rel = project(G, x, names, wr_units="relative", **opts).metrics
    assert np.allclose(rel["wr_effective"], 0.5 * rel["wr_factor"], rtol=1e-6)
    assert np.allclose(rel["wr_factor"], wr_factor(G, z0, names=names).numpy(), rtol=1e-5)
    for i in (1, 3):
        alone = project(G, x[i : i + 1], names[i : i + 1], wr_units="relative", **opts | {"init": z0[i : i + 1]})
        assert alone.metrics["wr_effective"][0] == pytest.approx(rel["wr_effective"][i], rel=1e-5)
    raw = project(G, x, names, **opts).metrics
    assert (raw["wr_effective"] == 0.5).all() and np.allclose(raw["wr_factor"], rel["wr_factor"], rtol=1e-5)
    assert set(raw) >= {"wr", "wr_factor", "wr_effective", "jacobian_norm"}
    off = project(G, x, names, jacobian_metrics=False, **opts).metrics  # as bench times the loop
    assert {"wr_factor", "jacobian_norm"}.isdisjoint(off) and (off["wr_effective"] == 0.5).all()
    rel_off = project(G, x, names, wr_units="relative", jacobian_metrics=False, **opts).metrics
    assert np.allclose(rel_off["wr_effective"], rel["wr_effective"], rtol=1e-5) and "jacobian_norm" not in rel_off
    with pytest.raises(ArgumentError, match="wr_units"):
        project(G, x, names, wr_units="meters", **opts)


def test_relative_units_warn_where_the_generator_is_flat(G):
    """The bundled DCGAN's z = 0 is a dead point of its ReLUs: relative w_r cannot act there."""
    x = G.synthesize(G.sample(1, seed=80)).detach()
    with pytest.warns(UserWarning, match="does not change with the latent at the start of flat"):
        res = project(G, x, ["flat"], init=torch.zeros(1, G.z_dim), steps=1, wr=1.0, wr_units="relative")
    assert res.metrics["wr_effective"][0] == 0


def test_rescaled_latent_divides_the_factor_by_a_squared_and_keeps_the_images(G):
    a = 3.0
    G2 = Rescaled(G, a)
    z_true = G.sample(2, seed=31)
    targets = G.synthesize(z_true).detach()
    z0 = z_true + 0.5 * G.sample(2, seed=32)  # nearby starts, mapped to a * z0 for G'
    factor, factor2 = wr_factor(G, z0, names=["a", "b"]), wr_factor(G2, a * z0, names=["a", "b"])
    assert torch.allclose(factor2 * a**2, factor, rtol=1e-3)
    # relative w_r = 1 on both. Adam's steps are in latent units, so lr * a on G' takes the same
    # steps in G's units. jacobian_norm is not asserted here: off, so G' (no weights hash) does
    # not estimate its own prior median (test_jacobian_norm_is_one_... covers it).
    opts = dict(steps=80, loss="mse", latent_noise=0.0, wr=1.0, wr_units="relative", jacobian_metrics=False)
    res = project(G, targets, ["a", "b"], init=z0, lr=0.05, **opts)
    res2 = project(G2, targets, ["a", "b"], init=a * z0, lr=0.05 * a, **opts)
    assert np.allclose(res2.metrics["wr_factor"] * a**2, res.metrics["wr_factor"], rtol=1e-3)
    assert (res.images - res2.images).abs().max() < 1e-2
    assert np.allclose(res2.metrics["dz_norm"] / a, res.metrics["dz_norm"], rtol=1e-2)
    # raw units: the same raw w_r weighs a^2 times more on G' (a smaller step in G's units)
    raw = dict(opts, wr=float(res.metrics["wr_effective"].mean()), wr_units="raw")
    on_g = project(G, targets, ["a", "b"], init=z0, lr=0.05, **raw)
    on_g2 = project(G2, targets, ["a", "b"], init=a * z0, lr=0.05 * a, **raw)
    assert (on_g2.metrics["dz_norm"] / a < 0.9 * on_g.metrics["dz_norm"]).all()


def test_jacobian_norm_is_one_at_typical_latents_and_invariant_to_rescaling():
    G = Tiny(seed=1)
    z = G.sample(64, seed=9)
    rel = jacobian_norm(G, z, "z")
    assert 0.85 < float(rel.median()) < 1.15
    G2 = Rescaled(G, 3.0)
    assert prior_sq_norm_median(G2, "z") == pytest.approx(prior_sq_norm_median(G, "z") / 9, rel=1e-3)
    assert torch.allclose(jacobian_norm(G2, 3 * z[:4], "z"), rel[:4], rtol=1e-3)


def test_sweep_and_edit_in_relative_units():
    G = Tiny(seed=3)
    targets = G.synthesize(G.sample(2, seed=51)).detach()
    sw = sweep(G, targets, None, ["u", "v"], steps=10, starts=1, loss="mse", wr_units="relative")
    assert list(sw.wrs) == [0, 0.01, 0.1, 1, 10, 100]  # the relative default grid
    assert sw.metrics["jacobian_norm"].shape == (2, 6) and (sw.metrics["jacobian_norm"] > 0).all()
    row = sw.rows()[7]  # target v at w_r 0.01
    assert row["wr_units"] == "relative" and row["wr_effective"] == pytest.approx(0.01 * row["wr_factor"])
    z0 = G.sample(2, seed=52)
    ed = edit(G, z0, targets, names=["u", "v"], wr=2.0, wr_units="relative", steps=5)
    assert np.allclose(ed.metrics["wr_effective"], 2.0 * ed.metrics["wr_factor"])


def test_cli_relative_units_are_recorded_and_a_change_redoes(cli, tmp_path):
    out = tmp_path / "o"
    fast = (
        SAMPLES / "targets" / "face_00.png",
        "-o",
        out,
        "--steps",
        "5",
        "--loss",
        "mse",
        "--encoder",
        "none",
        "--starts",
        "1",
        "--wr",
        "0.1",
    )
    r = cli("project", *fast, "--wr-units", "relative")
    assert r.exit_code == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())[0]
    assert m["wr_units"] == "relative" and m["wr_effective"] == pytest.approx(0.1 * m["wr_factor"])
    again = cli("project", *fast)
    assert again.exit_code == 0 and "wr_units 'relative' → 'raw'" in again.stdout
    row = next(csv.DictReader(open(out / "metrics.csv")))
    assert row["wr_units"] == "raw" and float(row["wr_effective"]) == 0.1
    bad = cli("project", *fast, "--wr-units", "meters")
    assert bad.exit_code == 2 and "--wr-units" in bad.stderr
    ed = cli(
        "edit",
        SAMPLES / "latents" / "face_00.npz",
        "--target",
        SAMPLES / "targets" / "face_01.png",
        "--steps",
        "3",
        "--loss",
        "mse",
        "--wr-units",
        "relative",
        "-o",
        tmp_path / "e",
    )
    assert ed.exit_code == 0, ed.stderr
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())[0]
    assert (m["wr"], m["wr_units"]) == (2.0, "relative")  # edits' relative default
