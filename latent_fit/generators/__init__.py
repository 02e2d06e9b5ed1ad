"""Finding and loading generators: bundled names, TorchScript files, `module:callable`, pickles."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import torch

from ..errors import LatentFitError
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


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_bundled(name: str) -> Generator:
    from safetensors.torch import load_file

    from . import dcgan
    path = weights_dir() / BUNDLED[name]
    if not path.is_file():
        raise LatentFitError(f"{path}: bundled weights missing; reinstall latent-fit")
    sha = file_sha256(path)
    if sha != dcgan.SHA256:
        raise LatentFitError(f"{path}: sha256 {sha[:12]}… does not match the model card "
                             f"({dcgan.SHA256[:12]}…); the file is corrupt, reinstall latent-fit")
    return dcgan.DCGAN(load_file(path), name=name, sha256=sha)


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files holding a code/ folder."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.split("/")[1:2] == ["code"] for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_generator(spec: str = DEFAULT_GENERATOR, device: str | torch.device = "cpu", *,
                   network_key: str = "G_ema", latent_dim: int | None = None,
                   resolution: int | None = None, tuned: str | Path | None = None) -> Generator:
    """Load a generator from a bundled name, a .pkl/.pt network file, a TorchScript file
    or `module:callable` (an nn.Module mapping [N, latent_dim] to [N, 3, H, W] in [-1, 1]).
    tuned: a `<stem>.tuned.safetensors` file; its weight change is applied once the file is
    checked to come from this generator (tuning.apply_tuned).
    """
    from .wrapped import from_callable, from_torchscript
    spec = str(spec)
    if spec in BUNDLED:
        G = _load_bundled(spec)
    elif Path(spec).suffix in (".pkl", ".pt", ".pth", ".ts") or Path(spec).exists():
        path = Path(spec)
        if not path.is_file():
            raise LatentFitError(f"{spec}: generator file not found (bundled names: {', '.join(BUNDLED)})")
        if _is_torchscript(path):
            G = from_torchscript(path, latent_dim, resolution)
        else:   # network pickles and rosinality checkpoints
            from .pickles import load_stylegan
            G = load_stylegan(path, network_key=network_key)
    elif ":" in spec:
        G = from_callable(spec, latent_dim, resolution)
    else:
        raise LatentFitError(f"{spec}: unknown generator; give a bundled name ({', '.join(BUNDLED)}), "
                             "a .pkl/.pt/TorchScript file or module:callable")
    if tuned is not None:
        from ..tuning import apply_tuned
        G = apply_tuned(G, tuned)
    return G.to(device).freeze()


__all__ = ["Generator", "load_generator", "BUNDLED", "DEFAULT_GENERATOR"]
