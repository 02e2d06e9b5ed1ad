"""StyleGAN2: NVIDIA's reference outputs, safe reading of network files, batch independence."""

import argparse
import builtins
import hashlib
import os
import pickle
import re
import shlex
import subprocess
import sys
import types
from collections import OrderedDict
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from latent_fit.errors import LatentFitError
from latent_fit.generators.pickles import load_stylegan, rosinality_to_stylegan2
from latent_fit.generators.stylegan2 import StyleGAN2Generator, lowpass_filter

from conftest import module_tree

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden" / "stylegan2"
ATOL = 1e-4
# A tiny conditional generator: clamping active, fp16 option (no effect in fp32), noise everywhere.
TINY = dict(
    z_dim=8,
    c_dim=3,
    w_dim=16,
    img_resolution=16,
    img_channels=3,
    mapping_kwargs=dict(num_layers=2),
    synthesis_kwargs=dict(channel_base=128, channel_max=16, num_fp16_res=2, conv_clamp=0.5),
)


def max_diff(a, b):
    return (a - b).abs().max().item()


def golden(name):
    path = GOLDEN / f"{name}_ref.pt"
    if not path.is_file():
        pytest.skip(f"reference tensors not found in {GOLDEN}")
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module", params=["sg2ada_uncond64", "sg2ada_cond32_clamp"])
def ref_and_G(request):
    ref = golden(request.param)
    return ref, StyleGAN2Generator.from_state_dict(ref["init_kwargs"], ref["state_dict"], name=request.param)


def random_generator(init_kwargs=TINY, seed=0):
    """A generator whose every weight and buffer (noise strengths, w_avg too) is random."""
    torch.manual_seed(seed)
    G = StyleGAN2Generator(**init_kwargs)
    with torch.no_grad():
        for name, t in G.state_dict().items():
            if not name.endswith("resample_filter"):
                t.normal_()
    return G.freeze()


# ---------------------------------------------------------------- NVIDIA's reference outputs


def test_mapping_matches_reference(ref_and_G):
    ref, G = ref_and_G
    with torch.no_grad():
        assert max_diff(G.mapping(ref["z"], ref["c"]), ref["ws"]) <= ATOL
        assert max_diff(G.mapping(ref["z"], ref["c"], truncation_psi=0.7), ref["ws_trunc"]) <= ATOL


def test_images_match_reference(ref_and_G):
    ref, G = ref_and_G
    with torch.no_grad():
        assert max_diff(G.synthesis(ref["ws"], noise_mode="const"), ref["img_const"]) <= ATOL
        assert max_diff(G.synthesis(ref["ws"], noise_mode="none"), ref["img_none"]) <= ATOL
        assert max_diff(G.synthesis(ref["ws"], fused_modconv=False), ref["img_const_nonfused"]) <= ATOL
        assert max_diff(G(ref["z"], ref["c"], truncation_psi=0.7), ref["img_G_call"]) <= ATOL
        assert max_diff(G.synthesize(ref["ws"], "w+"), ref["img_const"]) <= ATOL


def test_given_noise_replaces_the_buffers(ref_and_G):
    ref, G = ref_and_G
    consts = [t for k, t in ref["state_dict"].items() if k.endswith("noise_const")]
    assert G.noise_shapes == tuple((1, *t.shape) for t in consts)
    with torch.no_grad():
        img = G.synthesize(ref["ws"], "w+", noise=[t.expand(4, 1, *t.shape) for t in consts])
        assert max_diff(img, ref["img_const"]) <= ATOL
        img = G.synthesize(ref["ws"], "w+", noise=[torch.zeros(4, *s) for s in G.noise_shapes])
        assert max_diff(img, ref["img_none"]) <= ATOL


def test_latent_spaces():
    G = random_generator()
    assert (G.spaces, G.default_space, G.resolution, G.z_dim, G.c_dim) == (("w", "w+", "z"), "w", 16, 8, 3)
    assert [G.latent_shape(s) for s in G.spaces] == [(16,), (G.num_ws, 16), (8,)]
    assert torch.equal(G.mean_latent("w"), G.mapping.w_avg[None])
    assert torch.equal(G.mean_latent("w+"), G.mapping.w_avg.expand(1, G.num_ws, 16))
    assert torch.equal(G.mean_latent("z"), torch.zeros(1, 8))
    c = torch.eye(3)[[0, 2]]
    z = torch.randn(2, 8)
    with torch.no_grad():
        img = G.synthesize(z, "z", c)
        assert img.shape == (2, 3, 16, 16)
        assert torch.equal(G.synthesize(G.from_z(z, "w", c), "w"), img)
        assert torch.equal(G.synthesize(G.from_z(z, "w+", c), "w+"), img)
        assert torch.equal(G(z, c), img)
    with pytest.raises(LatentFitError, match="conditional"):
        G.from_z(z, "w")
    with pytest.raises(LatentFitError, match="must have shape"):
        G.synthesize(z, "w")


@pytest.mark.parametrize("architecture", ["orig", "resnet"])
def test_other_architectures_fused_equals_nonfused(architecture):
    G = random_generator({**TINY, "synthesis_kwargs": {**TINY["synthesis_kwargs"], "architecture": architecture}})
    assert not any("torgb" in k for k in G.state_dict() if not k.startswith("synthesis.b16."))
    assert any(".skip." in k for k in G.state_dict()) == (architecture == "resnet")
    ws = G.from_z(torch.randn(3, 8), "w+", torch.eye(3))
    with torch.no_grad():
        assert max_diff(G.synthesis(ws), G.synthesis(ws, fused_modconv=False)) <= 1e-5


def test_samples_of_a_batch_are_independent(ref_and_G):
    ref, G = ref_and_G
    gen = torch.Generator().manual_seed(1)
    ws = ref["ws"] + 0.5 * torch.randn(ref["ws"].shape, generator=gen)
    noise = [torch.randn(4, *s, generator=gen) for s in G.noise_shapes]
    # Convolutions of other batch sizes round differently: NVIDIA's own code differs by up to 1.1e-5
    # between a batch and single samples (golden/stylegan3/README.md); a real dependence shows at 1e-1.
    with torch.no_grad():
        together = G.synthesize(ws, "w+", noise=noise)
        alone = torch.cat([G.synthesize(ws[i : i + 1], "w+", noise=[n[i : i + 1] for n in noise]) for i in range(4)])
        assert max_diff(together, alone) <= 5e-5
        together = G.synthesize(ref["z"], "z", ref["c"])
        alone = torch.cat([G.synthesize(ref["z"][i : i + 1], "z", ref["c"][i : i + 1]) for i in range(4)])
        assert max_diff(together, alone) <= 5e-5


# ---------------------------------------------------------------- network pickles


def _reconstruct_persistent_obj(meta):
    raise AssertionError("a safe loader never calls the pickled reconstructor")


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"


class EasyDict(dict):
    """Pickles as dnnlib.util.EasyDict."""


EasyDict.__module__ = "dnnlib.util"


class TFNetwork:
    """Pickles as the dnnlib.tflib.network.Network of TensorFlow-era StyleGAN2 pickles."""


TFNetwork.__module__, TFNetwork.__qualname__ = "dnnlib.tflib.network", "Network"


class Persistent:
    """Pickles like a torch_utils.persistence object: reconstructor(meta) with source and state."""

    def __init__(self, class_name, state, module_src):
        self.class_name, self.state, self.module_src = class_name, state, module_src

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src=self.module_src, class_name=self.class_name, state=self.state)
        return _reconstruct_persistent_obj, (meta,)


class Payload:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def write_pickle(path, obj):
    """pickle.dump with stand-ins for the upstream modules whose names the pickle records."""
    fakes = {
        "torch_utils": {},
        "torch_utils.persistence": {"_reconstruct_persistent_obj": _reconstruct_persistent_obj},
        "dnnlib": {},
        "dnnlib.util": {"EasyDict": EasyDict},
        "dnnlib.tflib": {},
        "dnnlib.tflib.network": {"Network": TFNetwork},
    }
    modules = {}
    for name, attrs in fakes.items():
        modules[name] = types.ModuleType(name)
        modules[name].__dict__.update(attrs)
    with mock.patch.dict(sys.modules, modules):
        path.write_bytes(pickle.dumps(obj))


def easydicts(x):
    return EasyDict({k: easydicts(v) for k, v in x.items()}) if isinstance(x, dict) else x


def persistent_network(state_dict, init_kwargs, module_src, class_name="Generator"):
    """The pickled form of an official network: nested module states holding its tensors."""

    def module(node, class_name, init_kwargs):
        state = dict(
            training=False,
            _parameters=OrderedDict(),
            _buffers=OrderedDict(),
            _modules=OrderedDict(),
            _non_persistent_buffers_set=set(),
            _forward_hooks=OrderedDict(),
            _init_args=(),
            _init_kwargs=easydicts(init_kwargs),
            weight_gain=np.float64(0.125),
            act_gain=np.sqrt(2),
        )
        for name, v in node.items():
            if isinstance(v, dict):
                state["_modules"][name] = module(v, "Module", {})
            elif name in ("resample_filter", "noise_const", "w_avg"):
                state["_buffers"][name] = v.clone()
            else:
                state["_parameters"][name] = torch.nn.Parameter(v.clone())
        return Persistent(class_name, state, module_src)

    return module(module_tree(state_dict), class_name, init_kwargs)


def flat_kwargs(init_kwargs):
    """The stylegan3 repo's form: synthesis kwargs beside the others."""
    kw = dict(init_kwargs)
    return {**kw, **kw.pop("synthesis_kwargs")}


@pytest.mark.parametrize("architecture, form", [("skip", dict), ("resnet", flat_kwargs), ("orig", dict)])
def test_network_pickle_round_trip(tmp_path, architecture, form):
    init_kwargs = {**TINY, "synthesis_kwargs": {**TINY["synthesis_kwargs"], "architecture": architecture}}
    G = random_generator(init_kwargs)
    marker = tmp_path / "source-was-executed"
    src = f"open({str(marker)!r}, 'w').close()\n"  # the stored module source; it must never run
    sd = G.state_dict()
    path = tmp_path / "network-snapshot-000123.pkl"
    write_pickle(
        path,
        dict(
            G=persistent_network(sd, form(init_kwargs), src),
            D=persistent_network({"b4.fc.weight": torch.ones(2, 2)}, {"c_dim": 3}, src, "Discriminator"),
            G_ema=persistent_network(sd, form(init_kwargs), src),
            augment_pipe=None,
            training_set_kwargs=EasyDict(path="data.zip", resolution=16),
        ),
    )
    loaded = load_stylegan(path)
    assert not marker.exists()
    assert (loaded.name, loaded.sha256) == (path.stem, hashlib.sha256(path.read_bytes()).hexdigest())
    assert all(torch.equal(t, sd[k]) for k, t in loaded.state_dict().items())
    z, c = torch.randn(4, 8), torch.eye(3)[[0, 1, 2, 0]]
    with torch.no_grad():
        assert torch.equal(loaded.synthesize(z, "z", c), G.synthesize(z, "z", c))
    assert isinstance(load_stylegan(path, network_key="G"), StyleGAN2Generator)
    with pytest.raises(LatentFitError, match=r"network-snapshot-000123\.pkl: network 'D' is a Discriminator"):
        load_stylegan(path, network_key="D")
    with pytest.raises(LatentFitError, match="has no network 'G_emma' .it has: G, D, G_ema, augment_pipe"):
        load_stylegan(path, network_key="G_emma")


@pytest.mark.parametrize(
    "func, args, refused",
    [
        (os.system, lambda marker: (f"touch {shlex.quote(str(marker))}",), f"{os.system.__module__}.system"),
        (builtins.eval, lambda marker: (f"open({str(marker)!r}, 'w').close()",), "builtins.eval"),
        (subprocess.Popen, lambda marker: (["touch", str(marker)],), "subprocess.Popen"),
    ],
)
def test_code_in_a_pickle_is_refused(tmp_path, func, args, refused):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "network.pkl"
    path.write_bytes(pickle.dumps({"G_ema": Payload(func, *args(marker))}))
    with pytest.raises(
        LatentFitError,
        match=rf"network\.pkl: refusing to load global '{refused}' "
        r"\(not a network-pickle type\)",
    ):
        load_stylegan(path)
    assert not marker.exists()
    # The same bytes under plain pickle do run the payload: the refusal is what kept it out.
    result = pickle.loads(path.read_bytes())["G_ema"]
    if isinstance(result, subprocess.Popen):
        result.wait()
    assert marker.exists()


def test_code_hidden_in_a_network_state_is_refused(tmp_path):
    marker = tmp_path / "payload-ran"
    state_dict = random_generator().state_dict()
    net = persistent_network(state_dict, TINY, "")
    net.state["_modules"]["mapping"].state["_init_kwargs"] = Payload(builtins.exec, f"open({str(marker)!r}, 'w')")
    write_pickle(tmp_path / "network.pkl", {"G_ema": net})
    with pytest.raises(LatentFitError, match="refusing to load global 'builtins.exec'"):
        load_stylegan(tmp_path / "network.pkl")
    assert not marker.exists()


def test_wrong_files_are_refused(tmp_path):
    def refused(name, data, match, **kwargs):
        path = tmp_path / name
        if isinstance(data, bytes):
            path.write_bytes(data)
        elif data is not None:
            write_pickle(path, data)
        with pytest.raises(LatentFitError, match=rf"^{re.escape(str(path))}: {match}") as info:
            load_stylegan(path, **kwargs)
        assert "\n" not in str(info.value)

    refused("missing.pkl", None, "cannot read the file")
    refused("garbage.pkl", b"this is no pickle", "not a network pickle or torch checkpoint")
    good = pickle.dumps({"G_ema": [1.0, 2.0, 3.0]})
    refused("truncated.pkl", good[:-5], "not a network pickle or torch checkpoint")
    refused("list.pkl", [1, 2], "not a network pickle")
    refused("tf.pkl", (TFNetwork(), TFNetwork(), TFNetwork()), "a TensorFlow-era StyleGAN pickle")
    sd = {k: t for k, t in random_generator().state_dict().items() if k.startswith("mapping.")}
    sd["synthesis.input.affine.weight"] = torch.zeros(4, 16)
    refused(
        "sg3.pkl",
        {"G_ema": persistent_network(sd, TINY, "")},
        "(weights do not fit a StyleGAN3 generator|init_kwargs describe a network with far more layers)",
    )
    sd = dict(random_generator().state_dict())
    del sd["synthesis.b8.conv0.weight"]
    refused(
        "incomplete.pkl",
        {"G_ema": persistent_network(sd, TINY, "")},
        "weights do not fit a StyleGAN2 generator: .*synthesis.b8.conv0.weight",
    )
    refused(
        "odd.pkl",
        {"G_ema": persistent_network(sd, {**TINY, "img_resolution": 12}, "")},
        "unsupported StyleGAN2 configuration",
    )
    torch.save({"g_ema": {}, "d": {}}, tmp_path / "ckpt.pt")
    refused("ckpt.pt", None, "network 'D' is not a generator", network_key="D")
    refused("ckpt.pt", None, "not a rosinality stylegan2-pytorch generator")
    torch.save({"model": {}}, tmp_path / "other.pt")
    refused("other.pt", None, "not a rosinality stylegan2-pytorch checkpoint: no 'g_ema' .it has: model")


# ---------------------------------------------------------------- rosinality checkpoints


def to_rosinality(sd):
    """rosinality/stylegan2-pytorch's names and layouts for an official G_ema state dict."""
    r = {}
    n_mlp = sum(1 for k in sd if k.startswith("mapping.fc") and k.endswith(".weight"))
    for i in range(n_mlp):
        r[f"style.{i + 1}.weight"], r[f"style.{i + 1}.bias"] = sd[f"mapping.fc{i}.weight"], sd[f"mapping.fc{i}.bias"]
    r["input.input"] = sd["synthesis.b4.const"][None]
    resolutions = sorted(int(k.split(".")[1][1:]) for k in sd if k.endswith(".torgb.bias"))[1:]
    convs = ["synthesis.b4.conv1"] + [f"synthesis.b{res}.conv{j}" for res in resolutions for j in (0, 1)]
    for i, ours in enumerate(convs):
        theirs = "conv1" if i == 0 else f"convs.{i - 1}"
        r[f"{theirs}.conv.weight"] = sd[f"{ours}.weight"][None]
        r[f"{theirs}.conv.modulation.weight"] = sd[f"{ours}.affine.weight"]
        r[f"{theirs}.conv.modulation.bias"] = sd[f"{ours}.affine.bias"]
        r[f"{theirs}.noise.weight"] = sd[f"{ours}.noise_strength"].reshape(1)
        r[f"{theirs}.activate.bias"] = sd[f"{ours}.bias"]
        r[f"noises.noise_{i}"] = sd[f"{ours}.noise_const"][None, None]
        if ours.endswith("conv0"):
            r[f"{theirs}.conv.blur.kernel"] = lowpass_filter() * 4
    for k, res in enumerate([4] + resolutions):
        theirs = "to_rgb1" if res == 4 else f"to_rgbs.{k - 1}"
        r[f"{theirs}.conv.weight"] = sd[f"synthesis.b{res}.torgb.weight"][None]
        r[f"{theirs}.conv.modulation.weight"] = sd[f"synthesis.b{res}.torgb.affine.weight"]
        r[f"{theirs}.conv.modulation.bias"] = sd[f"synthesis.b{res}.torgb.affine.bias"]
        r[f"{theirs}.bias"] = sd[f"synthesis.b{res}.torgb.bias"].reshape(1, -1, 1, 1)
        if res > 4:
            r[f"{theirs}.upsample.kernel"] = lowpass_filter() * 4
    return r


@pytest.mark.parametrize("legacy_format, with_latent_avg", [(False, True), (True, False)])
def test_rosinality_checkpoint(tmp_path, legacy_format, with_latent_avg):
    ref = golden("sg2ada_uncond64")  # its conv_clamp (256) is never reached, as rosinality's lack of one
    sd = ref["state_dict"]
    init_kwargs, converted = rosinality_to_stylegan2(to_rosinality(sd), sd["mapping.w_avg"])
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in sd.items()}
    assert all(torch.equal(converted[k], v) for k, v in sd.items())
    assert init_kwargs["synthesis_kwargs"] == dict(channel_base=4096, channel_max=128)

    ckpt = {"g_ema": to_rosinality(sd), "args": argparse.Namespace(size=64, n_mlp=8)}
    if with_latent_avg:
        ckpt["latent_avg"] = sd["mapping.w_avg"]
    torch.save(ckpt, tmp_path / "550000.pt", _use_new_zipfile_serialization=not legacy_format)
    G = load_stylegan(tmp_path / "550000.pt")
    assert (G.name, G.resolution, G.num_ws) == ("550000", 64, 10)
    with torch.no_grad():
        assert max_diff(G.synthesize(ref["ws"], "w+"), ref["img_const"]) <= ATOL
        if with_latent_avg:
            assert torch.equal(G.mapping.w_avg, sd["mapping.w_avg"])
        else:  # estimated from samples of w
            w = G.from_z(torch.randn(2000, 512, generator=torch.Generator().manual_seed(5)), "w")
            assert max_diff(G.mapping.w_avg, w.mean(0)) <= 5 * w.std(0).max().item() / 2000**0.5
