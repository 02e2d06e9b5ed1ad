"""Pivotal tuning: gain on a real photo, the reg trade-off, batch independence, the tuned file."""

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from latent_fit import LatentFitError, load_generator, project
from latent_fit.generators.tuned import apply_tuned, read_tuned, save_tuned
from latent_fit.images import load_image
from latent_fit.tuning import render_tuned, tune

PHOTO = Path(__file__).resolve().parents[1] / "samples" / "targets" / "astronaut.png"
FAST = dict(loss="mse", tune_lr=1e-3)  # few steps in tests: a higher lr than the default 3e-4


@pytest.fixture(scope="module")
def photo_pivot(G):
    """The real photo and a short projection of it (the pivot)."""
    x = load_image(PHOTO, G.resolution)[None]
    r = project(G, x, ["astronaut"], steps=100, starts=2, loss="mse")
    return x, r.latent


def test_tuning_beats_the_pivot_on_a_real_photo(G, photo_pivot):
    x, pivot = photo_pivot
    res = tune(G, pivot, x, ["astronaut"], tune_steps=30, **FAST)
    m = res.metrics
    assert m["psnr"][0] >= m["psnr_pivot"][0] + 8, m
    assert m["dtheta_norm"][0] > 0 and np.isfinite(m["locality_psnr"][0]), m
    assert torch.equal(res.images, render_tuned(G, res.delta, pivot[:, None], "z")[:, 0].clamp(-1, 1))


def test_a_larger_reg_gives_a_smaller_change_and_better_locality(G, photo_pivot):
    """One batched run: the same target at every reg, without the locality term."""
    x, pivot = photo_pivot
    grid = [0.0, 1e-2, 1e-1, 1.0]
    res = tune(
        G,
        pivot.expand(4, -1),
        x.expand(4, -1, -1, -1),
        ["a"] * 4,
        tune_steps=20,
        tune_reg=torch.tensor(grid),
        tune_locality=0.0,
        **FAST,
    )
    dtheta, loc, rec = res.metrics["dtheta_norm"], res.metrics["locality_psnr"], res.metrics["psnr"]
    assert np.all(np.diff(dtheta) < -0.1 * dtheta[1:]), dtheta
    assert np.all(np.diff(loc) > 0.5), loc
    assert np.all(np.diff(rec) < 0), rec


def test_batched_tuning_equals_tuning_one_at_a_time(G, in_domain, photo_pivot):
    """Together, reversed or alone: the same Δθ. (`exact` picks kernels whose rounding does not
    depend on the batch size; Adam's sign-like steps would magnify the fast kernels' ~1e-7.)"""
    x, pivot = photo_pivot
    targets = torch.cat([x, in_domain[0][:2]])
    pivots = torch.cat([pivot, G.sample(2, seed=7)])
    names = ["p", "q", "r"]
    kw = dict(tune_steps=8, seed=3, exact=True, tune_rank="full", **FAST)  # low rank: test_lowrank.py
    together = tune(G, pivots, targets, names, **kw)
    reordered = tune(G, pivots.flip(0), targets.flip(0), names[::-1], **kw)
    alone = [tune(G, pivots[i : i + 1], targets[i : i + 1], names[i : i + 1], **kw) for i in range(3)]
    for key, d in together.delta.items():
        assert torch.allclose(d, reordered.delta[key].flip(0), rtol=0, atol=1e-6), key
        assert torch.allclose(d, torch.cat([a.delta[key] for a in alone]), rtol=0, atol=1e-6), key
    for i, a in enumerate(alone):
        for key in ("psnr", "locality_psnr", "dtheta_norm"):
            assert together.metrics[key][i] == pytest.approx(a.metrics[key][0], abs=1e-3), key
    assert len(set(together.metrics["locality_psnr"].tolist())) == 3  # each its own samples


def test_tuned_file_round_trips_and_is_refused_by_another_generator(G, photo_pivot, tmp_path):
    x, pivot = photo_pivot
    res = tune(G, pivot, x, ["astronaut"], tune_steps=10, tune_rank="full", **FAST)  # low rank: test_lowrank.py
    path = tmp_path / "astronaut.tuned.safetensors"
    save_tuned(
        path, {k: v[0] for k, v in res.delta.items()}, G, res.settings, {k: float(v[0]) for k, v in res.metrics.items()}
    )
    delta, meta = read_tuned(path)
    assert meta["generator_sha256"] == G.sha256 and meta["settings"]["tune_steps"] == 10
    assert meta["metrics"]["psnr"] == pytest.approx(float(res.metrics["psnr"][0]))
    assert set(delta) == set(G.tunable()) and next(iter(delta.values())).dtype == torch.float32
    assert path.stat().st_size < 0.55 * 4 * sum(v.numel() for v in delta.values())  # half precision
    for tuned in (apply_tuned(G, path), load_generator("digiface-dcgan64", tuned=path)):
        with torch.no_grad():
            img = tuned.synthesize(pivot, "z").clamp(-1, 1)
        assert (img - res.images).abs().max() < 2e-2
    with torch.no_grad():  # the original generator is left as it was
        assert (G.synthesize(pivot, "z") - res.images).abs().max() > 0.1

    other = copy.deepcopy(G)
    other.name, other.sha256 = "other-dcgan", "0" * 64
    with pytest.raises(LatentFitError) as e:
        apply_tuned(other, path)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 300 and str(path) in msg and "other-dcgan" in msg


def test_unreadable_tuned_files_are_clear(G, tmp_path):
    bad = tmp_path / "bad.tuned.safetensors"
    bad.write_bytes(b"not safetensors")
    for path in (bad, tmp_path / "missing.safetensors"):
        with pytest.raises(LatentFitError, match=str(path.name)):
            apply_tuned(G, path)


def test_stylegan2_tunes_synthesis_with_its_noise_maps_and_keeps_mapping():
    sys.path.insert(0, str(Path(__file__).parent))
    from test_stylegan2 import random_generator

    G = random_generator()
    c = torch.eye(G.c_dim)[:2]
    w = G.sample(2, seed=1, space="w", c=c)
    noise = [torch.randn(2, *s, generator=torch.Generator().manual_seed(i)) for i, s in enumerate(G.noise_shapes)]
    with torch.no_grad():
        x = G.synthesize(G.sample(2, seed=5, space="w", c=c), "w", c).clamp(-1, 1)
    res = tune(G, w, x, ["a", "b"], space="w", c=c, noise=noise, tune_steps=20, loss="mse", tune_lr=1e-2)
    assert set(res.delta) == set(G.tunable()) and all(k.startswith("synthesis.") for k in res.delta)
    assert np.all(res.metrics["psnr"] > res.metrics["psnr_pivot"] + 1), res.metrics
    alone = tune(
        G,
        w[1:],
        x[1:],
        ["b"],
        space="w",
        c=c[1:],
        noise=[n[1:] for n in noise],
        tune_steps=20,
        loss="mse",
        tune_lr=1e-2,
    )
    assert torch.allclose(alone.images[0], res.images[1], atol=1e-3)


def test_torchscript_generator_tunes_its_parameters(G, tmp_path):
    path = tmp_path / "dcgan.ts"
    torch.jit.save(torch.jit.script(G.net), str(path))
    Gt = load_generator(str(path))
    z = G.sample(1, seed=3)
    with torch.no_grad():
        x = G.synthesize(G.sample(1, seed=4))
    res = tune(Gt, z, x, ["t"], tune_steps=10, **FAST)
    assert set(res.delta) == {k for k, _ in Gt.named_parameters()}
    assert res.metrics["psnr"][0] > res.metrics["psnr_pivot"][0] + 3, res.metrics


def test_bad_tuning_arguments_are_clear(G, photo_pivot):
    x, pivot = photo_pivot
    with pytest.raises(LatentFitError, match="reg >= 0"):
        tune(G, pivot, x, tune_steps=1, tune_reg=-1.0, loss="mse")
    with pytest.raises(LatentFitError, match="pivots have shape"):
        tune(G, pivot[:, :10], x, tune_steps=1, loss="mse")
