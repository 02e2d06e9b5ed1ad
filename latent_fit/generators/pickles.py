"""Reading StyleGAN2 and StyleGAN3 network files without running anything stored in them.

Network pickles (stylegan2-ada-pytorch, and the StyleGAN2 and StyleGAN3 networks of the stylegan3 repo) are in the
torch_utils.persistence format: each network is pickled as `_reconstruct_persistent_obj(meta)` with
its class name, module source code and module state (`__dict__`). The official loader executes that
source; here an Unpickler resolves only an allowlist of globals (see untrusted.py), the
reconstructor becomes a stand-in that keeps the state, and the weights are gathered from the
pickled `_parameters`, `_buffers` and `_modules`, each module once. rosinality/stylegan2-pytorch
checkpoints (torch.save with 'g_ema') are read by the same means and renamed onto the official
parameter names. Everything a load makes is charged to one budget set from the file's size, with
stand-ins made for that load alone (untrusted.Budget). A network is built only within bounds
taken from the file: the size of its tensors (no more bytes than the file holds), the whole
numbers of its init_kwargs, and a budget of tensor numbers and layers checked before each
allocation, so init_kwargs describing terabytes stop at once.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import pickle
from pathlib import Path

import torch
from torch.nn.modules import module as nn_module
from torch.overrides import TorchFunctionMode

from ..errors import LatentFitError
from .stylegan2 import StyleGAN2Generator, lowpass_filter
from .stylegan3 import StyleGAN3Generator
from .untrusted import (
    LEGACY_TORCH_MAGIC,
    Budget,
    NDArray,
    Refused,
    describe,
    load_storage_bytes,
    numpy_globals,
    read_capped,
    read_torch_file,
    torch_globals,
    unpickle,
)

MAX_FILE_BYTES = 8 * 2**30  # read no more of a network file than this
MAX_NETWORK_NUMBERS = 2**29  # 2 GiB of float32 in the generator's tensors
MAX_INIT_INT = 2**20  # resolutions, channels, dims and counts in init_kwargs
MAX_INIT_ITEMS = 64  # items of a list or dict in init_kwargs
MAX_INIT_VALUES = 4096  # values in all of init_kwargs (a real one has about 40)
_GENERATOR_ARGS = {"z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs"}
STYLEGAN3_REPO_CONV_CLAMP = 256  # the default of the stylegan3 repo's StyleGAN2 (stylegan2-ada-pytorch: None)


class _Persistent:
    """Stand-in for a torch_utils.persistence object: class name and pickled state; source never run."""

    def __init__(self, class_name: str, state: dict, module_src: str = ""):
        self.class_name, self.state, self.module_src = class_name, state, module_src


def _persistent(meta):  # torch_utils.persistence._reconstruct_persistent_obj
    if (
        not isinstance(meta, dict)
        or meta.get("type") != "class"
        or not isinstance(meta.get("state"), dict)
        or not isinstance(meta.get("class_name"), str)
        or len(meta["class_name"]) > 100
    ):
        raise pickle.UnpicklingError("malformed persistent object")
    src = meta.get("module_src")
    return _Persistent(meta["class_name"], meta["state"], src if isinstance(src, str) else "")


class _EasyDict(dict):
    """Stand-in for dnnlib.EasyDict."""

    takes_pickled_state = True


class _Namespace:
    """Stand-in for the argparse.Namespace of rosinality checkpoints: kept, never used."""

    takes_pickled_state = True


def _network_globals(budget: Budget) -> dict:
    """The globals a network pickle may name, with stand-ins made for this load alone."""

    def latin1(text, encoding="latin1"):  # _codecs.encode: how protocol-2 pickles store bytes
        if not isinstance(text, str) or encoding != "latin1":
            raise pickle.UnpicklingError("unexpected string encoding")
        budget.spend_bytes(len(text))
        return text.encode("latin1")

    def storage(data):  # torch.storage._load_from_bytes
        if not isinstance(data, bytes):
            raise pickle.UnpicklingError("malformed tensor storage")
        return load_storage_bytes(data, budget)

    return {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent,
        ("torch.storage", "_load_from_bytes"): storage,
        ("dnnlib.util", "EasyDict"): type("EasyDict", (_EasyDict,), {}),
        **{(m, t.__name__): t for m in ("builtins", "__builtin__") for t in (set, frozenset, slice)},
        ("_codecs", "encode"): latin1,
        **torch_globals(),
        **numpy_globals(budget),
    }


def _checkpoint_globals() -> dict:
    return {**torch_globals(), ("argparse", "Namespace"): type("Namespace", (_Namespace,), {})}


def _finder(globals_: dict):
    """find_class(module, name) resolving only the globals of `globals_`; anything else ends the load."""

    def find_class(module: str, name: str):
        if (module, name) in globals_:
            return globals_[module, name]
        if module.startswith("dnnlib.tflib"):
            raise Refused("a TensorFlow-era StyleGAN pickle; convert it with legacy.py of stylegan2-ada-pytorch first")
        raise Refused(f"refusing to load global '{module[:60]}.{name[:60]}' (not a network-pickle type)")

    return find_class


def load_stylegan(path: str | Path, network_key: str = "G_ema") -> StyleGAN2Generator:
    """The StyleGAN2 or StyleGAN3 generator `network_key` ('G_ema' or 'G') of a network pickle or
    of a rosinality/stylegan2-pytorch checkpoint; named after the file stem, with the file's sha256.
    Whatever the file holds, a failure is one LatentFitError line naming it."""
    path = Path(path)
    try:
        data = read_capped(path, MAX_FILE_BYTES)
        init_kwargs, state_dict, untracked_w_avg = _read_generator(data, network_key, Budget(len(data)))
        cls = StyleGAN3Generator if _is_stylegan3(state_dict) else StyleGAN2Generator
        _check_size(init_kwargs, state_dict, len(data))
        G = _build(cls, init_kwargs, state_dict, name=path.stem, sha256=hashlib.sha256(data).hexdigest())
        if untracked_w_avg:
            _estimate_w_avg(G)
        return G
    except OSError as e:
        raise LatentFitError(f"{path}: cannot read the file ({e.strerror or e})") from None
    except LatentFitError as e:
        raise LatentFitError(f"{path}: {e}") from None
    except Exception as e:  # a file we did not foresee must still end in one line
        raise LatentFitError(f"{path}: not a usable network file ({describe(e)})") from None


def _estimate_w_avg(G: StyleGAN2Generator, n: int = 10_000) -> None:
    """w_avg as the stylegan2-ada projector estimates it, from n samples of the mapping (in
    chunks of about 16 MB, whatever z_dim the file declares)."""
    gen = torch.Generator().manual_seed(0)
    chunk = max(1, 2**22 // max(G.z_dim, G.w_dim))
    total = torch.zeros(G.w_dim)
    with torch.no_grad():
        for i in range(0, n, chunk):
            total += G.mapping(torch.randn(min(chunk, n - i), G.z_dim, generator=gen))[:, 0].sum(dim=0)
        G.mapping.w_avg.copy_(total / n)


def _read_generator(data: bytes, network_key: str, budget: Budget) -> tuple[dict, dict, bool]:
    """(init_kwargs, state_dict, whether w_avg is missing) of the generator in a file's bytes,
    everything it makes charged to `budget`."""
    if data[:4] == b"PK\x03\x04":  # torch.save zip file
        return _rosinality_generator(read_torch_file(data, _checkpoint_globals(), budget), network_key)
    try:
        obj = unpickle(data, _finder(_network_globals(budget)), budget=budget)[0]
    except Refused:
        raise
    except LatentFitError as e:
        raise LatentFitError(f"not a network pickle or torch checkpoint ({e})") from None
    if type(obj) is int and obj == LEGACY_TORCH_MAGIC:
        return _rosinality_generator(read_torch_file(data, _checkpoint_globals(), budget), network_key)
    if not isinstance(obj, dict):
        raise LatentFitError(f"not a network pickle (it holds a {type(obj).__name__}, not a dict of networks)")
    return (*_pickled_generator(obj, network_key, budget), False)


def _pickled_generator(networks: dict, key: str, budget: Budget) -> tuple[dict, dict]:
    if key not in networks:
        names = ", ".join(str(k)[:40] for k in list(networks)[:10] if isinstance(k, str))
        raise LatentFitError(f"has no network {key!r} (it has: {names})")
    net = networks[key]
    if not isinstance(net, _Persistent):
        raise LatentFitError(f"{key!r} is not a network")
    if net.class_name != "Generator":
        raise LatentFitError(f"network {key!r} is a {net.class_name}, not a generator; use G_ema or G")
    state_dict = _module_state_dict(net, budget, set())
    if net.state.get("_init_args"):
        raise LatentFitError("the generator was built with positional arguments; expected keyword arguments")
    init_kwargs = _plain(net.state.get("_init_kwargs", {}), [MAX_INIT_VALUES])
    if not _is_stylegan3(state_dict) and _by_stylegan3_repo(init_kwargs, net.module_src):
        init_kwargs = {"conv_clamp": STYLEGAN3_REPO_CONV_CLAMP, **init_kwargs}  # unless the pickle sets it
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


def _module_state_dict(obj: _Persistent, budget: Budget, seen: set, prefix: str = "") -> dict[str, torch.Tensor]:
    """What module.state_dict() gives, from the pickled state of a module and its children:
    each module visited once (a module met twice is refused), each tensor charged to `budget`."""
    if prefix.count(".") > 16:
        raise LatentFitError(f"modules nested too deeply at {prefix[:60]!r}")
    if id(obj) in seen:
        raise LatentFitError(f"module {prefix[:60]!r} appears twice in the network (a shared module)")
    seen.add(id(obj))
    state = obj.state
    parameters, buffers, modules = (state.get(k) or {} for k in ("_parameters", "_buffers", "_modules"))
    skip = state.get("_non_persistent_buffers_set") or set()
    if not (
        isinstance(parameters, dict)
        and isinstance(buffers, dict)
        and isinstance(modules, dict)
        and isinstance(skip, (set, frozenset))
    ):
        raise LatentFitError(f"module {prefix[:60]!r} has malformed parameters, buffers or children")
    budget.spend(1 + len(parameters) + len(buffers) + len(modules))
    out = {}
    for k, v in [*parameters.items(), *((k, v) for k, v in buffers.items() if k not in skip)]:
        if v is not None:
            if not (isinstance(k, str) and isinstance(v, torch.Tensor)):
                raise LatentFitError(f"{prefix}{str(k)[:40]} is not a tensor")
            out[prefix + k] = v
    for name, child in modules.items():
        if child is None:
            continue
        if not (isinstance(name, str) and isinstance(child, _Persistent)):
            raise LatentFitError(f"module {prefix}{str(name)[:40]!r} is not a network module")
        out.update(_module_state_dict(child, budget, seen, f"{prefix}{name}."))
    return out


def _plain(x, left: list[int], depth: int = 0):
    """EasyDicts (and the containers holding them) as plain dicts, pickled numpy arrays as
    arrays; refused past `left[0]` values in all or 8 levels, so a graph of shared lists is
    never copied along its many paths (_check_size then applies the finer limits)."""
    left[0] -= 1
    if depth > 8 or left[0] < 0:
        raise LatentFitError("init_kwargs nested too deeply or too large")
    if isinstance(x, dict):
        return {k: _plain(v, left, depth + 1) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_plain(v, left, depth + 1) for v in x)
    return x.array if isinstance(x, NDArray) else x


def _check_size(init_kwargs: dict, state_dict: dict, file_bytes: int) -> None:
    """Refuse a network too large to build, before anything is built: by the total size of the
    file's tensors (each number backed by its own bytes of the file) and by every whole number
    in init_kwargs."""
    total = sum(t.numel() for t in state_dict.values())
    if total > MAX_NETWORK_NUMBERS:
        raise LatentFitError(
            f"its tensors hold {total:,} numbers, more than the {MAX_NETWORK_NUMBERS:,} latent-fit loads"
        )
    nbytes = sum(t.numel() * t.element_size() for t in state_dict.values())
    if nbytes > file_bytes + 2**20:  # a rosinality file gains a few filters and w_avg
        raise LatentFitError(
            f"its tensors hold {nbytes:,} bytes, more than the {file_bytes:,} of the file "
            "(tensors that share their data)"
        )

    def check(x, where, depth=0):
        if depth > 4 or (isinstance(x, (list, tuple, dict)) and len(x) > MAX_INIT_ITEMS):
            raise LatentFitError(f"init_kwargs {where} is nested too deeply or too long")
        if isinstance(x, dict):
            for k, v in x.items():
                check(v, f"{where}.{str(k)[:40]}".lstrip("."), depth + 1)
        elif isinstance(x, (list, tuple)):
            for v in x:
                check(v, where, depth + 1)
        elif isinstance(x, numbers.Integral) and not 0 <= x <= MAX_INIT_INT:
            raise LatentFitError(
                f"init_kwargs {where} = {x if abs(x) < 10**20 else 'huge'} is out of range (0..{MAX_INIT_INT})"
            )

    if not isinstance(init_kwargs, dict):
        raise LatentFitError("its init_kwargs are not a dict")
    check(init_kwargs, "")


class _Budget(TorchFunctionMode):
    """While a network is built: refuses a tensor factory call (randn, zeros, full, ...) before
    it allocates, once the numbers created would pass `limit`."""

    def __init__(self, limit: int):
        super().__init__()
        self.left = limit

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _FACTORIES:  # the size: ints, one sequence, or size=
            size = kwargs.get("size", args[0] if args and not isinstance(args[0], numbers.Integral) else args)
            try:
                self.left -= math.prod(int(n) for n in size)
            except (TypeError, ValueError):
                pass  # not a size: the factory itself says so
            if self.left < 0:
                raise LatentFitError("init_kwargs describe a network larger than the file's tensors")
        return func(*args, **kwargs)


_FACTORIES = {torch.empty, torch.zeros, torch.ones, torch.full, torch.randn, torch.rand}


def _build(cls, init_kwargs: dict, state_dict: dict, name: str, sha256: str):
    """cls.from_state_dict(init_kwargs, state_dict), built within a budget checked before each
    allocation: about twice the file's numbers, and a few layers per tensor of the file. (No
    filter is designed from init_kwargs: StyleGAN3's are allocated through that budget and filled
    from the file, so a huge or radial filter size is refused before numpy sees it.)"""
    registrations, limit = [0], 4 * len(state_dict) + 64

    def count(*_):  # a network with far more layers than the file has weights: stop early
        registrations[0] += 1
        if registrations[0] > limit:
            raise LatentFitError(
                f"init_kwargs describe a network with far more layers than the file's {len(state_dict)} tensors"
            )

    hooks = [
        nn_module.register_module_module_registration_hook(count),
        nn_module.register_module_parameter_registration_hook(count),
    ]
    try:
        with _Budget(2 * sum(t.numel() for t in state_dict.values()) + 2**24):
            return cls.from_state_dict(init_kwargs, state_dict, name=name, sha256=sha256)
    except LatentFitError:
        raise
    except Exception as e:  # the constructor given odd values: ZeroDivisionError, ...
        kind = cls.__name__.removesuffix("Generator")
        raise LatentFitError(f"unsupported {kind} configuration ({describe(e)})") from None
    finally:
        for h in hooks:
            h.remove()


def _rosinality_generator(ckpt, network_key: str) -> tuple[dict, dict, bool]:
    key = network_key.lower()
    if key not in ("g_ema", "g"):
        raise LatentFitError(f"network {network_key!r} is not a generator; use G_ema or G")
    if not isinstance(ckpt, dict) or key not in ckpt:
        has = (
            ", ".join(k[:40] for k in list(ckpt)[:10] if isinstance(k, str))
            if isinstance(ckpt, dict)
            else type(ckpt).__name__
        )
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
    res = 4 * 2**n_up
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
    return _rosinality_kwargs(out, z_dim, w_dim, res, n_mlp), out


def _rosinality_kwargs(sd: dict, z_dim: int, w_dim: int, res: int, n_mlp: int) -> dict:
    """NVIDIA's init_kwargs of a converted rosinality generator (channel widths from its convs)."""
    return dict(
        z_dim=z_dim,
        c_dim=0,
        w_dim=w_dim,
        img_resolution=res,
        img_channels=3,
        mapping_kwargs=dict(num_layers=n_mlp),
        synthesis_kwargs=dict(
            channel_base=sd[f"synthesis.b{res}.conv1.weight"].shape[0] * res,
            channel_max=sd["synthesis.b4.const"].shape[0],
        ),
    )
