"""Tuned weights files (`project --tune`): one target's weight change Δθ as .safetensors, with
the generator it was tuned from, the settings that made it and its metrics; reading one back,
checked to fit a generator, and applying it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from ..errors import LatentFitError
from ..fields import FLOATS, misfits, parse_json, regular_file
from ..files import atomic_write
from .base import Generator

FORMAT = "latent-fit-tuned"
FORMAT_VERSION = 1


def save_tuned(
    path: str | Path,
    delta: dict[str, torch.Tensor],
    G: Generator,
    settings: dict,
    metrics: dict | None = None,
    dtype: torch.dtype = torch.float16,
) -> None:
    """Write one target's Δθ (parameter name -> tensor) as .safetensors, atomically, with the
    generator's name and sha256, the settings that made it (tune_reg, tune_locality, tune_steps, ...) and its
    metrics (plain numbers). Half precision by default: it halves the file and changes the
    tuned image by less than one 8-bit level (docs, "Real photos and tuning")."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in delta.items()}
    meta = {
        "format": FORMAT,
        "version": str(FORMAT_VERSION),
        "generator": G.name,
        "generator_sha256": G.sha256,
        "settings": json.dumps(settings, sort_keys=True),
        "metrics": json.dumps(metrics or {}, sort_keys=True, default=float),
    }
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_tuned(path: str | Path, G: Generator | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """(Δθ as float32 tensors, metadata with settings and metrics parsed) of a file save_tuned
    wrote: a regular file, its settings and metrics JSON objects (fields.parse_json), its tensors
    floats and finite. With G, the file must be tuned from G (same sha256, or same name where G
    has none) and hold exactly G's tunable weights, shape for shape, checked before any is read."""
    from safetensors import SafetensorError, safe_open

    path = regular_file(path, "tuned-weights file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = _tuned_meta(path, dict(f.metadata() or {}), G)
            _check_tensors(path, {k: f.get_slice(k) for k in f.keys()}, G)
            delta = {k: f.get_tensor(k).float() for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise LatentFitError(f"{path}: not a .safetensors file ({e})") from None
    bad = [k for k, d in delta.items() if not torch.isfinite(d).all()]
    if bad:
        raise LatentFitError(f"{path}: weight change {bad[0]!r} holds values that are not finite")
    return delta, meta


def _tuned_meta(path: Path, meta: dict[str, str], G: Generator | None) -> dict:
    """A tuned file's metadata: its FORMAT record and (G given) its generator checked, its
    settings and metrics parsed."""
    if meta.get("format") != FORMAT:
        raise LatentFitError(f"{path}: not a latent-fit tuned-weights file (no {FORMAT!r} record)")
    name, sha = meta.get("generator", ""), meta.get("generator_sha256", "")
    if G is not None and not (sha == G.sha256 if G.sha256 else name == G.name):
        raise LatentFitError(
            f"{path}: tuned from generator {name!r} (sha256 {sha[:12] or '-'}), "
            f"not {G.name!r} (sha256 {G.sha256[:12] or '-'}); load it with the generator it was tuned from"
        )
    return meta | {key: parse_json(meta.get(key, "{}"), f"{path}: {key}") for key in ("settings", "metrics")}


def _check_tensors(path: Path, slices: dict, G: Generator | None) -> None:
    """Refuse tensors that are not floats, or (G given) names or shapes other than G's tunable weights."""
    for k, sl in slices.items():
        if sl.get_dtype() not in FLOATS:
            raise LatentFitError(f"{path}: weight change {k!r} is {sl.get_dtype()}, not floats")
    bad = [] if G is None else misfits(slices, {k: v.shape for k, v in G.tunable().items()})
    if bad:
        raise LatentFitError(
            f"{path}: weight {bad[0]!r} does not fit generator {G.name!r}; load it with the generator it was tuned from"
        )


def apply_tuned(G: Generator, path: str | Path) -> Generator:
    """A copy of G with the Δθ of `path` added to its weights, after checking that the file was
    tuned from this very generator (same sha256, or same name where G has no sha256)."""
    delta = load_delta(G, path)
    tuned = copy.deepcopy(G)
    params = dict(tuned.named_parameters())
    with torch.no_grad():
        for k, d in delta.items():
            params[k].add_(d.to(params[k].device))
    return tuned


def load_delta(G: Generator, path: str | Path) -> dict[str, torch.Tensor]:
    """The Δθ of a tuned file (float32, on G's device), once checked to be tuned from G and to fit
    its tunable weights (read_tuned); else one LatentFitError line naming the file."""
    return {k: d.to(G.device) for k, d in read_tuned(path, G)[0].items()}
