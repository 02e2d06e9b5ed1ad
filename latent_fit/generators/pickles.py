"""Reading StyleGAN2 and StyleGAN3 network files without running anything stored in them.

Network pickles (stylegan2-ada-pytorch, and the StyleGAN2 and StyleGAN3 networks of the stylegan3 repo) are in the
torch_utils.persistence format: each network is pickled as `_reconstruct_persistent_obj(meta)` with
its class name, module source code and module state (`__dict__`). The official loader executes that
source; here an Unpickler resolves only an allowlist of globals, the reconstructor becomes a stand-in
that keeps the state, and the weights are gathered from the pickled `_parameters`, `_buffers` and
`_modules`. rosinality/stylegan2-pytorch checkpoints (torch.save with 'g_ema') are read with
torch.load(weights_only=True) and renamed onto the official parameter names.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import LatentFitError
from .stylegan2 import StyleGAN2Generator, lowpass_filter
from .stylegan3 import StyleGAN3Generator

try:
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _multiarray

_LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # first object of a torch.save file in the legacy format
_GENERATOR_ARGS = {"z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs"}
STYLEGAN3_REPO_CONV_CLAMP = 256   # the default of the stylegan3 repo's StyleGAN2 (stylegan2-ada-pytorch: None)


class _Persistent:
    """Stand-in for a torch_utils.persistence object: class name and pickled state; source never run."""

    def __init__(self, meta):
        if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
            raise pickle.UnpicklingError("malformed persistent object")
        self.class_name, self.state = meta.get("class_name"), meta["state"]
        self.module_src = meta.get("module_src") if isinstance(meta.get("module_src"), str) else ""


class _EasyDict(dict):
    """Stand-in for dnnlib.EasyDict."""


def _tensor(storage, offset, size, stride, *_):  # torch._utils._rebuild_tensor(_v2); hooks dropped
    return torch.empty(0, dtype=storage.dtype).set_(storage, offset, size, stride)


def _parameter(data, *_):  # torch._utils._rebuild_parameter(_with_state): the plain tensor
    return data


def _storage(data):  # torch.storage._load_from_bytes, without its weights_only=False
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _latin1(text, encoding="latin1"):  # _codecs.encode: how protocol-2 pickles store bytes
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"unexpected encoding {encoding!r}")
    return text.encode("latin1")


_ALLOWED = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _Persistent,
    ("torch._utils", "_rebuild_tensor"): _tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _tensor,
    ("torch._utils", "_rebuild_parameter"): _parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _parameter,
    ("torch.storage", "_load_from_bytes"): _storage,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("_codecs", "encode"): _latin1,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    **{(m, "scalar"): _multiarray.scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_reconstruct"): _multiarray._reconstruct for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
}


class _NetworkUnpickler(pickle.Unpickler):
    """Resolves only the globals of `_ALLOWED`; anything else ends the load."""

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        if module.startswith("dnnlib.tflib"):
            raise LatentFitError("a TensorFlow-era StyleGAN pickle; convert it with legacy.py of "
                                 "stylegan2-ada-pytorch first")
        raise LatentFitError(f"refusing to load global '{module}.{name}' (not a network-pickle type)")


def load_stylegan(path: str | Path, network_key: str = "G_ema") -> StyleGAN2Generator:
    """The StyleGAN2 or StyleGAN3 generator `network_key` ('G_ema' or 'G') of a network pickle or
    of a rosinality/stylegan2-pytorch checkpoint; named after the file stem, with the file's sha256."""
    path = Path(path)
    try:
        data = path.read_bytes()
        init_kwargs, state_dict, untracked_w_avg = _read_generator(data, network_key)
        cls = StyleGAN3Generator if _is_stylegan3(state_dict) else StyleGAN2Generator
        G = cls.from_state_dict(init_kwargs, state_dict, name=path.stem, sha256=hashlib.sha256(data).hexdigest())
    except OSError as e:
        raise LatentFitError(f"{path}: cannot read the file ({e.strerror or e})") from None
    except LatentFitError as e:
        raise LatentFitError(f"{path}: {e}") from None
    if untracked_w_avg:  # estimate it as the stylegan2-ada projector does
        z = torch.randn(10_000, G.z_dim, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            G.mapping.w_avg.copy_(G.mapping(z)[:, 0].mean(dim=0))
    return G


def _read_generator(data: bytes, network_key: str) -> tuple[dict, dict, bool]:
    """(init_kwargs, state_dict, whether w_avg is missing) of the generator in a file's bytes."""
    if data[:4] == b"PK\x03\x04":  # torch.save zip file
        return _rosinality_generator(_torch_load(data), network_key)
    try:
        obj = _NetworkUnpickler(io.BytesIO(data)).load()
    except LatentFitError:
        raise
    except Exception as e:  # whatever a damaged or foreign file makes the unpickler raise
        raise LatentFitError(f"not a network pickle or torch checkpoint ({_one_line(e)})") from None
    if isinstance(obj, int) and obj == _LEGACY_TORCH_MAGIC:
        return _rosinality_generator(_torch_load(data), network_key)
    if not isinstance(obj, dict):
        raise LatentFitError(f"not a network pickle (it holds a {type(obj).__name__}, not a dict of networks)")
    return (*_pickled_generator(obj, network_key), False)


def _pickled_generator(networks: dict, key: str) -> tuple[dict, dict]:
    if key not in networks:
        raise LatentFitError(f"has no network {key!r} (it has: {', '.join(map(str, networks))})")
    net = networks[key]
    if not isinstance(net, _Persistent):
        raise LatentFitError(f"{key!r} is not a network")
    if net.class_name != "Generator":
        raise LatentFitError(f"network {key!r} is a {net.class_name}, not a generator; use G_ema or G")
    state_dict = _module_state_dict(net)
    if net.state.get("_init_args"):
        raise LatentFitError("the generator was built with positional arguments; expected keyword arguments")
    init_kwargs = _plain(net.state.get("_init_kwargs", {}))
    if not _is_stylegan3(state_dict) and _by_stylegan3_repo(init_kwargs, net.module_src):
        init_kwargs = {"conv_clamp": STYLEGAN3_REPO_CONV_CLAMP, **init_kwargs}   # unless the pickle sets it
    return init_kwargs, state_dict


def _is_stylegan3(state_dict: dict) -> bool:
    return any(k.startswith("synthesis.input.") for k in state_dict)


def _by_stylegan3_repo(init_kwargs: dict, module_src: str) -> bool:
    """Whether a StyleGAN2 pickle was written by the stylegan3 repo (training.networks_stylegan2),
    whose defaults differ from stylegan2-ada-pytorch's (training.networks). Its Generator takes the
    synthesis settings flat where the other takes a synthesis_kwargs dict; with no settings at all,
    its stored source (read as text, never run) has the option fused_modconv_default that only it has."""
    if "synthesis_kwargs" in init_kwargs:
        return False
    return bool(set(init_kwargs) - _GENERATOR_ARGS) or "fused_modconv_default" in module_src


def _module_state_dict(obj: _Persistent, prefix: str = "") -> dict[str, torch.Tensor]:
    """What module.state_dict() gives, from the pickled state of a module and its children."""
    state = obj.state
    skip = state.get("_non_persistent_buffers_set") or ()
    out = {prefix + k: v for k, v in (state.get("_parameters") or {}).items() if v is not None}
    out.update({prefix + k: v for k, v in (state.get("_buffers") or {}).items() if v is not None and k not in skip})
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, _Persistent):
            raise LatentFitError(f"module {prefix + name!r} is not a network module")
        out.update(_module_state_dict(child, f"{prefix}{name}."))
    return out


def _plain(x):
    """EasyDicts (and the containers holding them) as plain dicts."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_plain(v) for v in x)
    return x


def _torch_load(data: bytes):
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):  # rosinality saves its args
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file, or one holding more than tensors and plain containers
        raise LatentFitError(f"not a readable torch checkpoint ({_one_line(e)})") from None


def _one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]


def _rosinality_generator(ckpt, network_key: str) -> tuple[dict, dict, bool]:
    key = network_key.lower()
    if key not in ("g_ema", "g"):
        raise LatentFitError(f"network {network_key!r} is not a generator; use G_ema or G")
    if not isinstance(ckpt, dict) or key not in ckpt:
        has = ", ".join(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise LatentFitError(f"not a rosinality stylegan2-pytorch checkpoint: no {key!r} (it has: {has})")
    w_avg = ckpt.get("latent_avg")
    return (*rosinality_to_stylegan2(ckpt[key], w_avg), w_avg is None)


def rosinality_to_stylegan2(sd: dict, w_avg: torch.Tensor | None = None) -> tuple[dict, dict]:
    """(init_kwargs, official state_dict) for the state dict of rosinality's Generator.

    Sizes (resolution, style_dim, n_mlp, channels) come from the tensor shapes; mapping.w_avg is
    `w_avg` (the checkpoint's latent_avg), zeros when None. Weights keep their values: both codes apply
    the same equalized-lr gains at run time; only names and shapes differ.
    """
    rest = dict(sd)

    def take(key):
        try:
            return rest.pop(key)
        except KeyError:
            raise LatentFitError(f"not a rosinality stylegan2-pytorch generator (no {key!r})") from None

    def count(prefix):  # the numbered modules in nn.Sequential / nn.ModuleList `prefix`
        return len({k.split(".")[1] for k in sd if k.startswith(prefix + ".")})

    n_mlp, n_up = max(1, count("style")), count("to_rgbs")
    res = 4 * 2 ** n_up
    out = {}
    for i in range(n_mlp):
        out[f"mapping.fc{i}.weight"] = take(f"style.{i + 1}.weight")
        out[f"mapping.fc{i}.bias"] = take(f"style.{i + 1}.bias")
    z_dim, w_dim = out["mapping.fc0.weight"].shape[1], out[f"mapping.fc{n_mlp - 1}.weight"].shape[0]
    out["mapping.w_avg"] = torch.zeros(w_dim) if w_avg is None else w_avg.reshape(-1)
    out["synthesis.b4.const"] = take("input.input")[0]

    def modulated(ours, theirs):
        out[f"{ours}.weight"] = take(f"{theirs}.conv.weight")[0]
        out[f"{ours}.affine.weight"] = take(f"{theirs}.conv.modulation.weight")
        out[f"{ours}.affine.bias"] = take(f"{theirs}.conv.modulation.bias")

    def conv(ours, theirs, noise_index):
        modulated(ours, theirs)
        out[f"{ours}.bias"] = take(f"{theirs}.activate.bias")
        out[f"{ours}.noise_strength"] = take(f"{theirs}.noise.weight").reshape(())
        out[f"{ours}.noise_const"] = take(f"noises.noise_{noise_index}")[0, 0]
        out[f"{ours}.resample_filter"] = lowpass_filter()

    def torgb(ours, theirs):
        modulated(ours, theirs)
        out[f"{ours}.bias"] = take(f"{theirs}.bias").reshape(-1)

    out["synthesis.b4.resample_filter"] = lowpass_filter()
    conv("synthesis.b4.conv1", "conv1", 0)
    torgb("synthesis.b4.torgb", "to_rgb1")
    for k in range(n_up):
        block = f"synthesis.b{8 << k}"
        out[f"{block}.resample_filter"] = lowpass_filter()
        conv(f"{block}.conv0", f"convs.{2 * k}", 2 * k + 1)
        conv(f"{block}.conv1", f"convs.{2 * k + 1}", 2 * k + 2)
        torgb(f"{block}.torgb", f"to_rgbs.{k}")
    unused = [k for k in rest if not k.endswith(".kernel")]  # rosinality's copies of the blur filter
    if unused:
        raise LatentFitError(f"unexpected tensor {unused[0]!r} for a rosinality stylegan2-pytorch generator")
    init_kwargs = dict(
        z_dim=z_dim, c_dim=0, w_dim=w_dim, img_resolution=res, img_channels=3,
        mapping_kwargs=dict(num_layers=n_mlp),
        synthesis_kwargs=dict(channel_base=out[f"synthesis.b{res}.conv1.weight"].shape[0] * res,
                              channel_max=out["synthesis.b4.const"].shape[0]))
    return init_kwargs, out
