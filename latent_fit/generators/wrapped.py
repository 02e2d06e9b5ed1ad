"""Adapters for any module mapping a latent [N, d] to images [N, 3, H, W] (RGB) or [N, 1, H, W]
(grayscale) in [-1, 1]: a TorchScript file, or a `module:callable` / `path/to/file.py:callable`
factory returning an nn.Module. A conditional module (a `c_dim` attribute, or num_classes) is
called as module(z, c) with one-hot labels c [N, c_dim]. All of these run the user's code
(network pickles never run anything)."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from ..errors import LatentFitError
from .base import Generator

PROBE_DIMS = (100, 128, 512, 256, 64, 120, 200, 32)


class _Shape(NamedTuple):
    """What the probe found: the module's latent size and input layout, image size and channels."""

    latent_dim: int
    resolution: int
    four_d: bool  # the module wants [N, d, 1, 1]
    channels: int  # 3: RGB, 1: grayscale
    c_dim: int  # classes of a conditional module (0: unconditional)


class Wrapped(Generator):
    """A plain latent -> image module with a N(0, I) prior in space `z`; conditional when c_dim > 0."""

    def __init__(self, module: nn.Module, name: str, sha256: str, shape: _Shape):
        super().__init__()
        self.module = module
        self.name, self.sha256 = name, sha256
        self.z_dim, self.resolution, self.four_d = shape.latent_dim, shape.resolution, shape.four_d
        self.img_channels, self.c_dim = shape.channels, shape.c_dim
        self.freeze()

    def synthesize(self, latent, space="z", c=None, noise=None):
        self.check_space(space)
        x = latent.view(latent.shape[0], -1, 1, 1) if self.four_d else latent
        if not self.c_dim:
            return self.module(x)
        if c is None:
            raise LatentFitError(f"generator {self.name!r} is conditional ({self.c_dim} classes): give a class")
        return self.module(x, c.to(x).expand(x.shape[0], -1))


def _first_layer_width(module: nn.Module) -> list[int]:
    """Input width of the first layer with a weight (Linear: in_features; ConvTranspose: in_channels)."""
    for _, sub in module.named_modules():
        w = getattr(sub, "weight", None)
        if isinstance(w, torch.Tensor) and w.ndim >= 2:
            kind = getattr(sub, "original_name", type(sub).__name__)
            return [w.shape[0] if kind.startswith("ConvTranspose") else w.shape[1]]
    return []


def _class_count(module: nn.Module, name: str, num_classes: int | None) -> int:
    """num_classes when given, else the module's `c_dim` attribute (0: unconditional)."""
    c_dim = num_classes if num_classes is not None else getattr(module, "c_dim", 0)
    if isinstance(c_dim, bool) or not isinstance(c_dim, int) or c_dim < 0:
        raise LatentFitError(
            f"{name}: c_dim {c_dim!r} is not a number of classes; give a whole number "
            "(0: unconditional) or pass --num-classes"
        )
    return c_dim


def _probe(
    module: nn.Module, name: str, latent_dim: int | None, resolution: int | None, num_classes: int | None = None
) -> _Shape:
    """Find the latent size (and whether the module wants [N, d, 1, 1]) by trying inputs:
    the first layer's width, then common sizes; a conditional module also gets labels [2, c_dim]."""
    module.eval()
    c_dim = _class_count(module, name, num_classes)
    dims = [latent_dim] if latent_dim else list(dict.fromkeys(_first_layer_width(module) + list(PROBE_DIMS)))
    labels = (torch.eye(c_dim)[torch.arange(2) % c_dim],) if c_dim else ()
    with torch.no_grad():
        for d in dims:
            for four_d in (False, True):
                x = torch.zeros(2, d, 1, 1) if four_d else torch.zeros(2, d)
                try:
                    y = module(x, *labels)
                except Exception:
                    continue
                if (
                    isinstance(y, torch.Tensor)
                    and y.ndim == 4
                    and y.shape[0] == 2
                    and y.shape[1] in (1, 3)
                    and y.shape[2] == y.shape[3]
                ):
                    if resolution and y.shape[-1] != resolution:
                        raise LatentFitError(
                            f"{name}: makes {y.shape[-1]} px images, not the {resolution} px asked for"
                        )
                    return _Shape(d, y.shape[-1], four_d, y.shape[1], c_dim)
    called = (
        f"module(z, c) with one-hot c [N, {c_dim}]"
        if c_dim
        else "module(z) (a conditional module needs a c_dim attribute or --num-classes)"
    )
    raise LatentFitError(
        f"{name}: could not find a latent size that makes [N, 3 or 1, H, H] images from {called}; pass --latent-dim"
    )


def from_torchscript(path: Path, latent_dim=None, resolution=None, num_classes=None) -> Generator:
    from ..files import file_sha256

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise LatentFitError(
            f"{path}: not a TorchScript generator ({type(e).__name__}); "
            "save one with torch.jit.save(torch.jit.script(G), path)"
        ) from None
    shape = _probe(module, str(path), latent_dim, resolution, num_classes)
    return Wrapped(module, path.stem, file_sha256(path), shape)


@contextlib.contextmanager
def _first_on_path(folder: Path):
    """`folder` first on sys.path while a user module is imported, as `python` puts the script's
    folder (a console script does not put the current folder there)."""
    entry = str(folder)
    sys.path.insert(0, entry)
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path.remove(entry)


def _import_module(where: str):
    """A module by name (found in the current folder first, then on sys.path), or a .py file
    (run under a private module name; its folder comes first on the path while it is imported)."""
    if not where.endswith(".py"):
        with _first_on_path(Path.cwd()):
            return importlib.import_module(where)
    path = Path(where).expanduser().resolve()
    if not path.is_file():
        raise ImportError(f"no file {where}")
    name = f"latent_fit_user_file_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # so that the file's dataclasses, pickling etc. find their module
    try:
        with _first_on_path(path.parent):
            module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def from_callable(spec: str, latent_dim=None, resolution=None, num_classes=None) -> Generator:
    """Call the factory `module:callable` or `path/to/file.py:callable` (an nn.Module is used as is)."""
    where, _, attr = spec.rpartition(":")
    try:
        factory = getattr(_import_module(where), attr)
    except (ImportError, AttributeError) as e:
        raise LatentFitError(f"{spec}: cannot import the generator factory ({e})") from None
    module = factory() if not isinstance(factory, nn.Module) else factory
    if not isinstance(module, nn.Module):
        raise LatentFitError(f"{spec}: returned {type(module).__name__}, not a torch.nn.Module")
    return Wrapped(module, attr, "", _probe(module, spec, latent_dim, resolution, num_classes))
