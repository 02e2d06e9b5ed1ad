"""StyleGAN3 -T / -R and the stylegan3 repo's StyleGAN2: NVIDIA's reference outputs, network
pickles, batch independence, and projection, edits and sweeps through the Generator interface."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_stylegan2 import max_diff, persistent_network, write_pickle

from latent_fit import project, read_latent_file
from latent_fit.errors import LatentFitError
from latent_fit.generators.pickles import load_stylegan
from latent_fit.generators.stylegan2 import StyleGAN2Generator
from latent_fit.generators.stylegan3 import StyleGAN3Generator

from conftest import TINY_SG3

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden" / "stylegan3"
ATOL = 1e-4
# Tiny StyleGAN3s: few layers and channels, 16 px; the -R form with 1x1 convolutions and radial filters.
TINY_T = dict(TINY_SG3, magnitude_ema_beta=0.999)
TINY_R = dict(TINY_T, c_dim=3, conv_kernel=1, use_radial_filters=True)
# The stored module source of a pickle; a safe loader never runs it.
SOURCE = "raise SystemExit('the stored source was run')\n"


def golden(name):
    path = GOLDEN / f"{name}_ref.pt"
    if not path.is_file():
        pytest.skip(f"reference tensors not found in {GOLDEN}")
    return torch.load(path, weights_only=True)


def network_pickle(path, init_kwargs, state_dict, source=SOURCE):
    net = persistent_network(state_dict, init_kwargs, source)
    write_pickle(path, dict(G=net, G_ema=net))
    return path


def random_stylegan3(init_kwargs, seed=0):
    """Every weight random; magnitudes, w_avg and a rotating, shifting user transform too."""
    torch.manual_seed(seed)
    G = StyleGAN3Generator(**init_kwargs)
    with torch.no_grad():
        for p in G.parameters():
            p.normal_()
        for layer in G.synthesis.children():
            if hasattr(layer, "magnitude_ema"):
                layer.magnitude_ema.uniform_(0.5, 2)
        G.mapping.w_avg.normal_()
        a = math.radians(20)
        G.synthesis.input.transform.copy_(
            torch.tensor([[math.cos(a), -math.sin(a), 0.1], [math.sin(a), math.cos(a), -0.2], [0, 0, 1]])
        )
    return G.freeze()


# ---------------------------------------------------------------- NVIDIA's reference outputs


@pytest.fixture(scope="module", params=["sg3t_64", "sg3r_64"])
def ref_and_G(request, tmp_path_factory):
    """The reference tensors, and the generator read from a network pickle made of them."""
    ref = golden(request.param)
    path = tmp_path_factory.mktemp("pkl") / f"{request.param}.pkl"
    return ref, load_stylegan(network_pickle(path, ref["init_kwargs"], ref["state_dict"]))


def test_stylegan3_matches_reference(ref_and_G):
    ref, G = ref_and_G
    assert isinstance(G, StyleGAN3Generator) and (G.num_ws, G.resolution, G.noise_shapes) == (16, 64, ())
    with torch.no_grad():
        assert max_diff(G.mapping(ref["z"], ref["c"]), ref["ws"]) <= ATOL
        assert max_diff(G.mapping(ref["z"], ref["c"], truncation_psi=0.7), ref["ws_trunc"]) <= ATOL
        assert max_diff(G.synthesize(ref["ws"], "w+"), ref["img_const"]) <= ATOL
        assert max_diff(G.synthesis(ref["ws"], noise_mode="none"), ref["img_none"]) <= ATOL
        assert max_diff(G(ref["z"], ref["c"], truncation_psi=0.7), ref["img_G_call"]) <= ATOL


@pytest.mark.parametrize("name", ["sg3t_64", "sg3r_64"])
def test_designed_filters_are_the_stored_ones(name):
    """The Kaiser (and, for -R, radial) filters built from the kwargs alone equal NVIDIA's."""
    ref = golden(name)
    built = StyleGAN3Generator(**ref["init_kwargs"]).state_dict()
    filters = {k: t for k, t in ref["state_dict"].items() if k.endswith("_filter")}
    assert set(filters) == {k for k in built if k.endswith("_filter")}
    assert any(t.ndim == 2 for t in filters.values()) == (name == "sg3r_64")
    assert max(max_diff(built[k], t) for k, t in filters.items()) <= 1e-6


def test_stylegan3_repo_stylegan2_takes_its_default_clamp(tmp_path):
    """Its kwargs leave conv_clamp unset: the stylegan3 repo's default 256 applies, which cuts
    activations here; stylegan2-ada-pytorch's layout of the same kwargs means no clamp."""
    ref = golden("sg3_stylegan2_clamp")
    kw, sd = ref["init_kwargs"], ref["state_dict"]
    G = load_stylegan(network_pickle(tmp_path / "sg3_sg2.pkl", kw, sd))
    assert type(G) is StyleGAN2Generator
    with torch.no_grad():
        assert max_diff(G.mapping(ref["z"], ref["c"], truncation_psi=0.7), ref["ws_trunc"]) <= ATOL
        assert max_diff(G.synthesize(ref["ws"], "w+"), ref["img_const"]) <= ATOL
        assert max_diff(G.synthesis(ref["ws"], noise_mode="none"), ref["img_none"]) <= ATOL
        assert max_diff(G.synthesis(ref["ws"], fused_modconv=False), ref["img_const_nonfused"]) <= ATOL
        assert max_diff(G(ref["z"], ref["c"], truncation_psi=0.7), ref["img_G_call"]) <= ATOL
    base = {k: v for k, v in kw.items() if k not in ("channel_base", "channel_max", "fused_modconv_default")}
    ada = dict(base, synthesis_kwargs=dict(channel_base=kw["channel_base"], channel_max=kw["channel_max"]))
    set_by_pickle = dict(kw, conv_clamp=None)
    for i, layout in enumerate([ada, set_by_pickle]):
        G = load_stylegan(network_pickle(tmp_path / f"{i}.pkl", layout, sd))
        with torch.no_grad():
            assert max_diff(G.synthesize(ref["ws"], "w+"), ref["img_const_noclamp"]) <= ATOL


def test_kwargs_without_synthesis_settings_go_by_the_stored_source(tmp_path):
    """No synthesis setting names the code base: the stored source (text, never run) does."""
    kw = dict(z_dim=4, c_dim=0, w_dim=4, img_resolution=8, img_channels=3, mapping_kwargs=dict(num_layers=1))
    sd = StyleGAN2Generator(**kw).state_dict()
    sources = {"# stylegan2-ada-pytorch\n" + SOURCE: None, "fused_modconv_default = True\n" + SOURCE: 256}
    for i, (source, clamp) in enumerate(sources.items()):
        G = load_stylegan(network_pickle(tmp_path / f"{i}.pkl", kw, sd, source))
        assert {m.conv_clamp for m in G.synthesis.modules() if hasattr(m, "conv_clamp")} == {clamp}


# ---------------------------------------------------------------- the implementation itself


@pytest.mark.parametrize("init_kwargs", [TINY_T, TINY_R])
def test_samples_of_a_batch_are_independent(init_kwargs):
    G = random_stylegan3(init_kwargs)
    c = torch.eye(3)[[0, 1, 2, 0]] if G.c_dim else None
    ws = G.from_z(torch.randn(4, 8, generator=torch.Generator().manual_seed(1)), "w+", c)
    with torch.no_grad():
        together = G.synthesize(ws, "w+")
        alone = torch.cat([G.synthesize(ws[i : i + 1], "w+") for i in range(4)])
        assert max_diff(together, alone) <= 5e-5
        assert max_diff(G.synthesis(ws, fused_modconv=False), together) <= 5e-5
    assert together.shape == (4, 3, 16, 16) and together.abs().max() > 0.1


def test_latent_spaces_and_no_noise():
    G = random_stylegan3(TINY_R)
    assert (G.spaces, G.default_space, G.noise_shapes, G.num_ws) == (("w", "w+", "z"), "w", (), 8)
    assert [G.latent_shape(s) for s in G.spaces] == [(8,), (8, 8), (8,)]
    assert torch.equal(G.mean_latent("w+"), G.mapping.w_avg.expand(1, 8, 8))
    z, c = torch.randn(2, 8), torch.eye(3)[[0, 2]]
    with torch.no_grad():
        img = G.synthesize(z, "z", c)
        assert torch.equal(G.synthesize(G.from_z(z, "w", c), "w"), img)
        assert torch.equal(G.synthesize(G.from_z(z, "w+", c), "w+", noise=[]), img)
    with pytest.raises(LatentFitError, match="has 0 noise inputs"):
        G.synthesize(z, "z", c, noise=[torch.zeros(2, 1, 4, 4)])


# ---------------------------------------------------------------- projection, edits, sweeps


@pytest.mark.parametrize("space", ["w", "w+"])
def test_projection_gets_closer(space):
    G = random_stylegan3(TINY_T, seed=3)
    with torch.no_grad():
        G.synthesis.input.affine.weight.mul_(0.1)  # a smoother net: the loss falls fast
        w = G.mapping.w_avg + torch.randn(2, 8, generator=torch.Generator().manual_seed(7))
        targets = G.synthesize(w, "w").clamp(-1, 1)
        start_mse = (G.synthesize(G.mean_latent("w"), "w") - targets).square().mean(dim=(1, 2, 3))
    r = project(G, targets, ["a", "b"], space=space, loss="mse", steps=40, check_every=10)
    assert r.latent.shape == (2, *G.latent_shape(space)) and r.noise is None
    assert (torch.from_numpy(r.metrics["mse"]) < 0.3 * start_mse).all(), (r.metrics["mse"], start_mse)


def test_cli_project_edit_sweep(cli, tmp_path):
    G = random_stylegan3(TINY_T)
    pkl = network_pickle(tmp_path / "sg3.pkl", TINY_T, G.state_dict())
    img = tmp_path / "x.png"
    Image.new("RGB", (20, 20), (90, 120, 200)).save(img)
    r = cli("project", img, "-g", pkl, "-o", tmp_path / "out", "--steps", "4", "--loss", "mse")
    assert r.exit_code == 0, r.stderr
    d = read_latent_file(tmp_path / "out" / "x.npz")
    assert d["space"] == "w" and d["latent"].shape == (8,)
    assert d["w"].shape == (1, 8, 8) and np.allclose(d["w"][0], d["latent"][None])
    assert not any(k.startswith("noise_") for k in d)
    r = cli("project", img, "-g", pkl, "-o", tmp_path / "plus", "--steps", "4", "--loss", "mse", "--space", "w+")
    assert r.exit_code == 0, r.stderr
    assert read_latent_file(tmp_path / "plus" / "x.npz")["latent"].shape == (8, 8)
    r = cli(
        "edit",
        tmp_path / "plus" / "x.npz",
        "-g",
        pkl,
        "--target",
        img,
        "--steps",
        "3",
        "--loss",
        "mse",
        "-o",
        tmp_path / "edited",
    )
    assert r.exit_code == 0, r.stderr
    r = cli("sweep", img, "-g", pkl, "--wr", "0,0.1", "--steps", "3", "--loss", "mse", "-o", tmp_path / "sweep")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "sweep" / "sweep.csv").read_text().count("\n") == 3
