"""Low-rank tuning (`--tune-rank`): dense products equal dense weights, a gain on a photo in a file
20x smaller, old full-rank files, batch independence, StyleGAN2 in w and w+ with noise maps."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from latent_fit import LatentFitError, project
from latent_fit.generators.stylegan2 import StyleGAN2Generator
from latent_fit.generators.tuned import apply_tuned, read_tuned, save_tuned
from latent_fit.images import load_image
from latent_fit.lowrank import (
    aligned_pair,
    dense,
    dense_delta,
    input_cols,
    layer_change,
    layer_moments,
    output_change,
    pick,
)
from latent_fit.tuning import render_blended, render_tuned, tune, tuning_bytes

from conftest import SMALL_STYLEGAN2

PHOTO = Path(__file__).resolve().parents[1] / "samples" / "photos" / "grace_hopper.png"
FAST = dict(loss="mse", tune_steps=60)


@pytest.fixture(scope="module")
def photo_pivot(G):
    x = load_image(PHOTO, G.resolution)[None]
    return x, project(G, x, ["grace_hopper"], steps=100, starts=2, loss="mse").latent


@pytest.mark.parametrize(
    "layer, x",
    [
        (nn.Linear(6, 5), torch.randn(3, 6)),
        (nn.Conv2d(4, 5, 3, stride=2, padding=1), torch.randn(3, 4, 9, 9)),
        (nn.ConvTranspose2d(4, 5, 4, stride=2, padding=1), torch.randn(3, 4, 7, 7)),
        (nn.ConvTranspose2d(6, 5, 4), torch.randn(3, 6, 1, 1)),
    ],
)
def test_a_layers_low_rank_change_equals_its_dense_weight_change(layer, x):
    w = layer.weight
    a, b, db = torch.randn(w.shape[0], 2), torch.randn(2, w[0].numel()), torch.randn(layer.bias.shape)
    with torch.no_grad():
        expected = torch.func.functional_call(layer, {"weight": w + dense((a, b), w.shape), "bias": layer.bias + db}, x)
        got = layer_change(layer, x, layer(x), a, b, db)
    assert torch.allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize(
    "layer, side",
    [(nn.ConvTranspose2d(6, 5, 4, stride=2, padding=1), 0), (nn.Conv2d(6, 5, 1), 1), (nn.Linear(6, 5), 1)],
)
def test_a_plain_layers_start_lies_on_the_directions_of_its_input(layer, side):
    """Inputs of rank 2 per target: the input side's first two directions span them and the output
    side is zero (Δ = 0)."""
    gen = torch.Generator().manual_seed(0)
    cols = torch.randn(2, 6, 2, generator=gen) @ torch.randn(2, 2, 9, generator=gen)  # [N, 6, 9] of rank 2
    x = cols.mT if isinstance(layer, nn.Linear) else cols.view(2, 6, 3, 3)
    pair = aligned_pair(layer, input_cols(layer, x), 3, lambda shape: torch.randn(2, *shape, generator=gen))
    inp = pair[side] if side == 1 else pair[side].mT  # [N, 3, 6]
    assert pair[1 - side].abs().max() == 0 and inp.shape == (2, 3, 6)
    q = torch.nn.functional.normalize(inp[:, :2], dim=2).mT
    assert torch.allclose(q @ (q.mT @ cols), cols, atol=1e-4) and inp[:, 2].abs().min() > 0


@pytest.mark.parametrize(
    "layer, x",
    [
        (nn.Linear(6, 5), torch.randn(40, 6)),
        (nn.Conv2d(4, 5, 3, stride=2, padding=1), torch.randn(40, 4, 9, 9)),
        (nn.ConvTranspose2d(4, 5, 4, stride=2, padding=1), torch.randn(40, 4, 7, 7)),
    ],
)
def test_the_layers_locality_is_each_layers_output_change_over_prior_inputs(layer, x):
    """output_change: E‖Δθ x‖² / E‖y‖² over the inputs (x: prior samples), for a pair and for its
    dense change alike; a transposed convolution's per input pixel (before the overlaps add)."""
    gen = torch.Generator().manual_seed(0)
    w = layer.weight
    a, b = torch.randn(2, w.shape[0], 3, generator=gen), torch.randn(2, 3, w[0].numel(), generator=gen)
    with torch.no_grad():
        y = layer(x)
        moments = {"m.weight": layer_moments(layer, x, y)}
        full = dense((a, b), tuple(w.shape))  # [2, *w.shape]
        mats = full.flatten(2) if isinstance(layer, nn.ConvTranspose2d) else full.flatten(2).mT  # [2, dim, rest]
        change = torch.stack([(input_cols(layer, x).mT @ m).pow(2).sum((1, 2)).mean() for m in mats])
        expected = change / y.pow(2).flatten(1).sum(1).mean()
        for delta in ({"m.weight": (a, b)}, {"m.weight": full}):
            assert torch.allclose(output_change(delta, moments), expected, rtol=1e-4)
        bias = torch.randn(2, w.shape[1] if isinstance(layer, nn.ConvTranspose2d) else w.shape[0], generator=gen)
        got = output_change({"m.bias": bias}, moments)
        assert torch.allclose(got, bias.pow(2).sum(1) * y[0, 0].numel() / y.pow(2).flatten(1).sum(1).mean())


def test_low_rank_renders_as_its_dense_weights_through_vmap(G):
    tunable = G.tunable()
    gen = torch.Generator().manual_seed(0)
    delta = {
        k: (torch.randn(2, v.shape[0], 3, generator=gen) * 1e-2, torch.randn(2, 3, v[0].numel(), generator=gen))
        if v.ndim > 1
        else torch.randn(2, *v.shape, generator=gen) * 1e-2
        for k, v in tunable.items()
    }
    lat = G.sample(4, seed=1).view(2, 2, -1)
    with torch.no_grad():
        fast, slow = render_tuned(G, delta, lat, "z"), render_tuned(G, dense_delta(delta, tunable), lat, "z")
    assert (fast - slow).abs().max() < 1e-4 and (fast - render_tuned(G, {}, lat, "z")).abs().max() > 1e-2


def test_low_rank_tuning_gains_on_a_photo_in_a_20x_smaller_file(G, photo_pivot, tmp_path):
    x, pivot = photo_pivot
    low = tune(G, pivot, x, ["gh"], tune_rank=8, **FAST)
    full = tune(G, pivot, x, ["gh"], tune_rank="full", loss="mse", tune_steps=1)  # for its file's size
    assert all(isinstance(v, tuple) for k, v in low.delta.items() if k.endswith("weight"))
    assert low.delta["net.0.weight"][0].shape[-1] == 1  # it sees the 1 x 1 latent: one direction per pivot
    assert low.delta["net.2.weight"][0].shape[-1] == 8
    assert low.settings["locality"] == "layers" and low.settings["locality_samples"] == 0
    assert (
        low.settings["tune_reg"] == 0 and full.settings["tune_reg"] == 1e-3 and full.settings["locality"] == "samples"
    )
    assert low.metrics["psnr"][0] > low.metrics["psnr_pivot"][0] + 6, low.metrics  # measured +8.6 dB
    assert low.metrics["locality_psnr"][0] > 30, low.metrics  # measured 33.8 dB
    paths = {}
    for tag, res in (("full", full), ("low", low)):
        paths[tag] = tmp_path / f"{tag}.tuned.safetensors"
        save_tuned(paths[tag], pick(res.delta, 0), G, res.settings)
    assert paths["full"].stat().st_size > 20 * paths["low"].stat().st_size
    delta, meta = read_tuned(paths["low"], G)
    assert meta["rank"] == meta["settings"]["tune_rank"] == 8 and meta["version"] == "2"
    assert read_tuned(paths["full"], G)[1]["rank"] == "full"
    with torch.no_grad():
        img = apply_tuned(G, paths["low"]).synthesize(pivot, "z").clamp(-1, 1)
    assert (img - low.images).abs().max() < 2e-2


def test_version_1_full_rank_files_still_load(G, tmp_path):
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    delta = {k: torch.randn(v.shape, generator=gen) * 1e-3 for k, v in G.tunable().items()}
    path = tmp_path / "old.tuned.safetensors"
    meta = {"format": "latent-fit-tuned", "version": "1", "generator": G.name, "generator_sha256": G.sha256}
    save_file({k: v.half() for k, v in delta.items()}, str(path), metadata=meta | {"settings": json.dumps({})})
    assert read_tuned(path, G)[1]["rank"] == "full"
    z = G.sample(2, seed=3)
    with torch.no_grad():
        expected = render_tuned(G, {k: v.half().float()[None] for k, v in delta.items()}, z[None], "z")[0]
        assert (apply_tuned(G, path).synthesize(z, "z") - expected).abs().max() < 1e-4


def test_a_tuned_file_whose_factors_do_not_fit_is_refused(G, photo_pivot, tmp_path):
    x, pivot = photo_pivot
    res = tune(G, pivot, x, ["gh"], loss="mse", tune_steps=1, tune_rank=2)
    path = tmp_path / "x.tuned.safetensors"
    save_tuned(path, pick(res.delta, 0), G, res.settings)
    meta = read_tuned(path)[1]
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    raw = {k: meta[k] for k in ("format", "generator", "generator_sha256")} | {"version": "2", "rank": "1"}
    save_file(tensors, str(path), metadata=raw)  # claims rank 1, holds rank 2
    with pytest.raises(LatentFitError, match="rank 1 recorded, but its largest change has rank 2"):
        apply_tuned(G, path)
    tensors["net.2.weight.lora_b"] = tensors["net.2.weight.lora_b"][:, :-1].contiguous()
    save_file(tensors, str(path), metadata=raw | {"rank": "2"})  # a factor one column short
    with pytest.raises(LatentFitError, match="does not fit generator"):
        apply_tuned(G, path)


def test_batched_low_rank_tuning_equals_tuning_one_at_a_time(G, in_domain, photo_pivot):
    x, pivot = photo_pivot
    targets, pivots, names = torch.cat([x, in_domain[0][:1]]), torch.cat([pivot, G.sample(1, seed=7)]), ["p", "q"]
    kw = dict(tune_steps=8, seed=3, exact=True, loss="mse", tune_lr=1e-3)
    together = dense_delta(tune(G, pivots, targets, names, **kw).delta, G.tunable())
    alone = [
        dense_delta(tune(G, pivots[i : i + 1], targets[i : i + 1], names[i : i + 1], **kw).delta, G.tunable())
        for i in range(2)
    ]
    for key, d in together.items():
        assert torch.allclose(d, torch.cat([a[key] for a in alone]), rtol=0, atol=1e-6), key


@pytest.mark.parametrize("space", ["w", "w+"])
def test_stylegan2_low_rank_tuning_in_w_and_w_plus_with_noise_maps(space, tmp_path):
    torch.manual_seed(0)
    G = StyleGAN2Generator(**SMALL_STYLEGAN2)
    with torch.no_grad():
        for name, t in G.state_dict().items():
            if not name.endswith("resample_filter"):
                t.normal_(0, 0.5)
    G.freeze()
    lat = G.sample(2, seed=1, space=space)
    noise = [torch.randn(2, *s, generator=torch.Generator().manual_seed(i)) for i, s in enumerate(G.noise_shapes)]
    with torch.no_grad():
        x = G.synthesize(G.sample(2, seed=5, space=space), space).clamp(-1, 1)
    kw = dict(space=space, loss="mse", tune_lr=1e-2, tune_steps=20, tune_rank=2)
    res = tune(G, lat, x, ["a", "b"], noise=noise, **kw)
    assert any(isinstance(v, tuple) for v in res.delta.values())
    assert res.settings["locality"] == "samples"  # modulated convolutions: the layers' moments do not apply
    assert np.all(res.metrics["psnr"] > res.metrics["psnr_pivot"] + 1), res.metrics
    alone = tune(G, lat[1:], x[1:], ["b"], noise=[n[1:] for n in noise], **kw)
    assert torch.allclose(alone.images[0], res.images[1], atol=1e-3)
    path = tmp_path / "sg2.tuned.safetensors"
    save_tuned(path, pick(res.delta, 0), G, res.settings, dtype=torch.float32)
    with torch.no_grad():
        img = apply_tuned(G, path).synthesize(lat[:1], space, None, [n[:1] for n in noise]).clamp(-1, 1)
    assert (img - res.images[:1]).abs().max() < 1e-3


def test_bad_tune_rank_is_clear(G, photo_pivot):
    x, pivot = photo_pivot
    for bad in (0, "low", 2.5):
        with pytest.raises(LatentFitError, match="tune_rank"):
            tune(G, pivot, x, tune_steps=1, tune_rank=bad, loss="mse")


def test_interpolation_ends_and_memory_plan_take_low_rank_changes(G):
    gen = torch.Generator().manual_seed(1)
    pair = {
        k: (torch.randn(v.shape[0], 2, generator=gen) * 1e-2, torch.randn(2, v[0].numel(), generator=gen))
        for k, v in G.tunable().items()
        if v.ndim > 1
    }
    z = G.sample(2, seed=2)
    with torch.no_grad():
        ends = render_blended(G, pair, None, torch.tensor([0.0, 1.0]), z, "z")
        own = render_tuned(
            G, pick({k: tuple(t[None] for t in v) for k, v in pair.items()}, slice(None)), z[:1, None], "z"
        )
    assert (ends[0] - own[0, 0].clamp(-1, 1)).abs().max() < 1e-4
    assert (ends[1] - G.synthesize(z[1:], "z")[0].clamp(-1, 1)).abs().max() < 1e-5
    assert tuning_bytes(G, 0, 8) < tuning_bytes(G, 0, "full") / 10  # auto batch size plans more targets
