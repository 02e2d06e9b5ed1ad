"""w_r in units of the generator's local Lipschitz constant: the Hutchinson estimate, its
invariance under a rescaled latent, per-sample independence, and jacobian_norm."""

import numpy as np
import pytest
import torch
from torch import nn

from latent_fit import LatentFitError, project, sweep
from latent_fit.generators.base import Generator
from latent_fit.jacobian import (jacobian_norm, jacobian_sq_norm, prior_sq_norm_median, relative_wr,
                                 unit_metrics, wr_factor)


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


class Rescaled(Generator):
    """G'(z) = G(z / a) with prior N(0, a^2 I): the same model, its latent scaled by a."""

    def __init__(self, G, a):
        super().__init__()
        self.G, self.a = G, a
        self.z_dim, self.resolution, self.name = G.z_dim, G.resolution, f"{G.name}/{a}"

    def from_z(self, z, space, c=None):
        return self.a * z

    def synthesize(self, latent, space="z", c=None, noise=None):
        return self.G.synthesize(latent / self.a, space, c, noise)


def exact_sq_norm(G, z):
    return torch.stack([torch.autograd.functional.jacobian(
        lambda v: G.synthesize(v[None]).flatten(), x).pow(2).sum() for x in z])


def test_hutchinson_matches_the_exact_jacobian():
    G = Tiny()
    z = G.sample(6, seed=5)
    exact = exact_sq_norm(G, z)
    est = jacobian_sq_norm(G, z, "z", projections=512)
    assert ((est / exact - 1).abs() < 0.10).all(), est / exact
    default = torch.stack([jacobian_sq_norm(G, z, "z", seed=s) for s in range(8)])   # [seeds, N]
    assert ((default.mean(0) / exact - 1).abs() < 0.10).all()    # unbiased at the default K


def test_factor_is_per_sample_and_keyed_by_name(G):
    z0 = G.sample(5, seed=77)
    names = [f"t{i}" for i in range(5)]
    raw, factor = relative_wr(G, 0.3, z0, names=names)
    for i in (0, 3):
        alone, f1 = relative_wr(G, 0.3, z0[i:i + 1], names=names[i:i + 1])
        assert torch.allclose(alone, raw[i:i + 1], rtol=1e-5) and torch.allclose(f1, factor[i:i + 1], rtol=1e-5)
    flipped = wr_factor(G, z0.flip(0), names=names[::-1])
    assert torch.allclose(flipped.flip(0), factor, rtol=1e-5)
    assert torch.allclose(raw, 0.3 * factor)
    # the factor is local: it differs between starts by more than the estimator's noise
    assert factor.max() / factor.min() > 1.3


def test_rescaled_latent_divides_the_factor_by_a_squared_and_keeps_the_images(G):
    a = 3.0
    G2 = Rescaled(G, a)
    z_true = G.sample(2, seed=31)
    targets = G.synthesize(z_true).detach()
    z0 = z_true + 0.5 * G.sample(2, seed=32)          # nearby starts, mapped to a * z0 for G'
    raw, factor = relative_wr(G, 1.0, z0, names=["a", "b"])
    raw2, factor2 = relative_wr(G2, 1.0, a * z0, names=["a", "b"])
    assert torch.allclose(factor2 * a ** 2, factor, rtol=1e-3)
    # rows 0-1: relative w_r = 1 on each; rows 2-3: raw w_r on G', and a^2 times it on G.
    # Adam's steps are in latent units, so lr * a on G' takes the same steps in G's units.
    names, t, init = ["a", "b", "a2", "b2"], targets.repeat(2, 1, 1, 1), z0.repeat(2, 1)
    opts = dict(steps=80, loss="mse", latent_noise=0.0)
    res = project(G, t, names, init=init, wr=torch.cat([raw, raw * a ** 2]), lr=0.05, **opts)
    res2 = project(G2, t, names, init=a * init, wr=torch.cat([raw2, raw]), lr=0.05 * a, **opts)
    assert (res.images - res2.images).abs().max() < 1e-2
    assert np.allclose(res2.metrics["dz_norm"] / a, res.metrics["dz_norm"], rtol=1e-2)
    # raw units: the same w_r weighs a^2 times more on G' (a smaller step in G's units)
    assert (res2.metrics["dz_norm"][2:] / a < res2.metrics["dz_norm"][:2] / a).all()


def test_jacobian_norm_is_one_at_typical_latents_and_invariant_to_rescaling():
    G = Tiny(seed=1)
    z = G.sample(64, seed=9)
    rel = jacobian_norm(G, z, "z")
    assert 0.85 < float(rel.median()) < 1.15
    G2 = Rescaled(G, 3.0)
    assert prior_sq_norm_median(G2, "z") == pytest.approx(prior_sq_norm_median(G, "z") / 9, rel=1e-3)
    assert torch.allclose(jacobian_norm(G2, 3 * z[:4], "z"), rel[:4], rtol=1e-3)


def test_unit_metrics_and_bad_units():
    G = Tiny(seed=2)
    z0 = G.sample(2, seed=41)
    m = unit_metrics(G, z0 + 0.1, z0, torch.tensor([0.1, 1.0]), "relative", names=["p", "q"])
    assert set(m) == {"wr_factor", "wr_effective", "jacobian_norm"} and m["wr_factor"].shape == (2,)
    assert m["wr_effective"] == pytest.approx([0.1 * m["wr_factor"][0], m["wr_factor"][1]], rel=1e-6)
    assert (unit_metrics(G, z0, z0, 0.5, "raw")["wr_effective"] == 0.5).all()
    with pytest.raises(LatentFitError, match="--wr-units 'meters'"):
        unit_metrics(G, z0, z0, 0.5, "meters")


def test_sweep_reports_jacobian_norm():
    G = Tiny(seed=3)
    targets = G.synthesize(G.sample(2, seed=51)).detach()
    sw = sweep(G, targets, [0, 1.0], ["u", "v"], steps=10, starts=1, loss="mse")
    assert sw.metrics["jacobian_norm"].shape == (2, 2) and (sw.metrics["jacobian_norm"] > 0).all()
    assert "jacobian_norm" in sw.rows()[0]
