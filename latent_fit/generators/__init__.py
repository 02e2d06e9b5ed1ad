"""Finding and loading generators: bundled names, network pickles, TorchScript files, `module:callable`."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ArgumentError, LatentFitError
from ..files import file_sha256
from .base import Generator

BUNDLED = {"digiface-dcgan64": "digiface-dcgan64.safetensors"}
DEFAULT_GENERATOR = "digiface-dcgan64"


def weights_dir() -> Path:
    """weights/ inside the installed package, else beside it in a source checkout."""
    here = Path(__file__).resolve().parents[1]
    for d in (here / "weights", here.parent / "weights"):
        if d.is_dir():
            return d
    raise LatentFitError(f"bundled weights folder not found next to {here}; reinstall latent-fit")


def check_bundled(path: Path, want: str, way_out: str = "") -> str:
    """The sha256 of a bundled weights file, or one line if it is missing or is not the file of
    its model card (`want`). way_out: what else the user can do, for the message."""
    if not path.is_file():
        raise LatentFitError(f"{path}: bundled weights missing; reinstall latent-fit{way_out}")
    sha = file_sha256(path)
    if sha != want:
        raise LatentFitError(
            f"{path}: sha256 {sha[:12]}… does not match the model card "
            f"({want[:12]}…); the file is corrupt, reinstall latent-fit{way_out}"
        )
    return sha


def _load_bundled(name: str) -> Generator:
    from safetensors.torch import load_file

    from . import dcgan

    path = weights_dir() / BUNDLED[name]
    sha = check_bundled(path, dcgan.SHA256)  # before a corrupt file is parsed
    return dcgan.DCGAN(load_file(path), name=name, sha256=sha)


TORCHSCRIPT_SUFFIXES = (".ts", ".torchscript")


def load_generator(
    spec: str = DEFAULT_GENERATOR,
    device: str | torch.device = "cpu",
    *,
    network_key: str = "G_ema",
    latent_dim: int | None = None,
    resolution: int | None = None,
    num_classes: int | None = None,
    torchscript: bool = False,
    tuned: str | Path | None = None,
) -> Generator:
    """Load a generator from a bundled name, a .pkl/.pt network file, a TorchScript file
    or `module:callable` (an nn.Module mapping [N, latent_dim] to [N, 3, H, W] or grayscale
    [N, 1, H, W] in [-1, 1]). num_classes: a TorchScript/callable module is conditional, called
    as module(z, c) with one-hot c [N, num_classes] (default: its `c_dim` attribute, else 0).

    Network pickles and checkpoints are read without running anything stored in them.
    TorchScript runs code stored in the file, and `module:callable` runs your code: a file is
    read as TorchScript only when its name ends in .ts / .torchscript or with torchscript=True.
    tuned: a `<stem>.tuned.safetensors` file; its weight change is applied once the file is
    checked to come from this generator (generators.tuned.apply_tuned).
    """
    from .wrapped import Wrapped, from_callable, from_torchscript

    spec = str(spec)
    path = Path(spec)
    if spec in BUNDLED:
        G = _load_bundled(spec)
    elif path.suffix in (".pkl", ".pt", ".pth", *TORCHSCRIPT_SUFFIXES) or path.exists() or torchscript:
        if not path.is_file():
            missing = f"generator file not found (bundled names: {', '.join(BUNDLED)})"
            raise LatentFitError(f"{spec}: " + ("not a regular file" if path.exists() else missing))
        if torchscript or path.suffix in TORCHSCRIPT_SUFFIXES:
            G = from_torchscript(path, latent_dim, resolution, num_classes)
        else:  # network pickles and rosinality checkpoints
            from .pickles import load_stylegan

            G = load_stylegan(path, network_key=network_key)
    elif ":" in spec:
        G = from_callable(spec, latent_dim, resolution, num_classes)
    else:
        raise LatentFitError(
            f"{spec}: unknown generator; give a bundled name ({', '.join(BUNDLED)}), "
            "a .pkl/.pt network, a .ts TorchScript file, module:callable or file.py:callable"
        )
    if num_classes is not None and not isinstance(G, Wrapped):
        own = f"only for TorchScript and module:callable generators; {spec} has {G.c_dim} classes of its own"
        raise ArgumentError("num_classes", num_classes, own)
    if tuned is not None:
        from .tuned import apply_tuned

        G = apply_tuned(G, tuned)
    return G.to(device).freeze()


__all__ = ["Generator", "load_generator", "BUNDLED", "DEFAULT_GENERATOR"]
