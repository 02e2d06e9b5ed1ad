"""Adapters for any module mapping a latent [N, d] to images [N, 3, H, W] in [-1, 1]:
a TorchScript file, or a `module:callable` / `path/to/file.py:callable` factory returning an
nn.Module. All of these run the user's code (network pickles never run anything)."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import LatentFitError
from .base import Generator

PROBE_DIMS = (100, 128, 512, 256, 64, 120, 200, 32)


class Wrapped(Generator):
    """A plain latent -> image module with a N(0, I) prior in space `z`."""

    def __init__(self, module: nn.Module, name: str, sha256: str, latent_dim: int, resolution: int,
                 four_d: bool):
        super().__init__()
        self.module = module
        self.name, self.sha256 = name, sha256
        self.z_dim, self.resolution, self.four_d = latent_dim, resolution, four_d
        self.freeze()

    def synthesize(self, latent, space="z", c=None, noise=None):
        x = latent.view(latent.shape[0], -1, 1, 1) if self.four_d else latent
        return self.module(x)


def _first_layer_width(module: nn.Module) -> list[int]:
    """Input width of the first layer with a weight (Linear: in_features; ConvTranspose: in_channels)."""
    for _, sub in module.named_modules():
        w = getattr(sub, "weight", None)
        if isinstance(w, torch.Tensor) and w.ndim >= 2:
            kind = getattr(sub, "original_name", type(sub).__name__)
            return [w.shape[0] if kind.startswith("ConvTranspose") else w.shape[1]]
    return []


def _probe(module: nn.Module, name: str, latent_dim: int | None, resolution: int | None):
    """Find the latent size (and whether the module wants [N, d, 1, 1]) by trying inputs:
    the first layer's width, then common sizes."""
    module.eval()
    dims = [latent_dim] if latent_dim else list(dict.fromkeys(_first_layer_width(module) + list(PROBE_DIMS)))
    with torch.no_grad():
        for d in dims:
            for four_d in (False, True):
                x = torch.zeros(2, d, 1, 1) if four_d else torch.zeros(2, d)
                try:
                    y = module(x)
                except Exception:
                    continue
                if isinstance(y, torch.Tensor) and y.ndim == 4 and y.shape[0] == 2 and y.shape[1] == 3 \
                        and y.shape[2] == y.shape[3]:
                    if resolution and y.shape[-1] != resolution:
                        raise LatentFitError(f"{name}: makes {y.shape[-1]} px images, not --resolution {resolution}")
                    return d, y.shape[-1], four_d
    raise LatentFitError(f"{name}: could not find a latent size that makes [N, 3, H, H] images "
                         f"(tried {dims}); pass --latent-dim")


def from_torchscript(path: Path, latent_dim=None, resolution=None) -> Generator:
    from . import file_sha256
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)   # torch.jit.load's deprecation notice
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise LatentFitError(f"{path}: not a TorchScript generator ({type(e).__name__}); "
                             "save one with torch.jit.save(torch.jit.script(G), path)") from None
    d, res, four_d = _probe(module, str(path), latent_dim, resolution)
    return Wrapped(module, path.stem, file_sha256(path), d, res, four_d)


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
    sys.modules[name] = module   # so that the file's dataclasses, pickling etc. find their module
    try:
        with _first_on_path(path.parent):
            module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def from_callable(spec: str, latent_dim=None, resolution=None) -> Generator:
    """Call the factory `module:callable` or `path/to/file.py:callable` (an nn.Module is used as is)."""
    where, _, attr = spec.rpartition(":")
    try:
        factory = getattr(_import_module(where), attr)
    except (ImportError, AttributeError) as e:
        raise LatentFitError(f"{spec}: cannot import the generator factory ({e})") from None
    module = factory() if not isinstance(factory, nn.Module) else factory
    if not isinstance(module, nn.Module):
        raise LatentFitError(f"{spec}: returned {type(module).__name__}, not a torch.nn.Module")
    d, res, four_d = _probe(module, spec, latent_dim, resolution)
    return Wrapped(module, attr, "", d, res, four_d)
