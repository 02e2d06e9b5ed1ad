"""Tuned weights files (`project --tune`): one target's weight change Δθ as .safetensors, with
the generator it was tuned from, its rank, the settings that made it and its metrics; reading one
back, checked to fit a generator, and applying it.

Version 2 records `rank`: a low-rank change Δ = A·B of weight NAME is stored as NAME.lora_a (A)
and NAME.lora_b (B), other changes under NAME (lowrank.file_shapes). Version 1 files (no rank)
hold full changes and still load."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from ..errors import LatentFitError
from ..fields import FLOATS, misfits, parse_json, regular_file
from ..files import atomic_write
from ..lowrank import FULL, SUFFIXES, dense, each, file_shapes, rank_of
from .base import Generator

FORMAT = "latent-fit-tuned"
FORMAT_VERSION = 2


def save_tuned(
    path: str | Path,
    delta: dict,
    G: Generator,
    settings: dict,
    metrics: dict | None = None,
    dtype: torch.dtype = torch.float16,
) -> None:
    """Write one target's Δθ (parameter name -> tensor or low-rank pair) as .safetensors,
    atomically, with the generator's name and sha256, its rank, the settings that made it
    (tune_reg, tune_locality, tune_steps, ...) and its metrics (plain numbers). Half precision by
    default: it halves the file and changes the tuned image by less than one 8-bit level (docs,
    "Real photos and tuning")."""
    from safetensors.torch import save_file

    named = {}
    for k, v in delta.items():
        named |= dict(zip((k + s for s in SUFFIXES), v)) if isinstance(v, tuple) else {k: v}
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in named.items()}
    meta = {
        "format": FORMAT,
        "version": str(FORMAT_VERSION),
        "rank": str(rank_of(delta)),
        "generator": G.name,
        "generator_sha256": G.sha256,
        "settings": json.dumps(settings, sort_keys=True),
        "metrics": json.dumps(metrics or {}, sort_keys=True, default=float),
    }
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_tuned(path: str | Path, G: Generator | None = None) -> tuple[dict, dict]:
    """(Δθ as float32 tensors and low-rank pairs, metadata with rank, settings and metrics parsed)
    of a file save_tuned wrote: a regular file, its settings and metrics JSON objects
    (fields.parse_json), its tensors floats and finite. With G, the file must be tuned from G
    (same sha256, or same name where G has none) and hold exactly G's tunable weights at its rank,
    shape for shape, checked before any is read."""
    from safetensors import SafetensorError, safe_open

    path = regular_file(path, "tuned-weights file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = _tuned_meta(path, dict(f.metadata() or {}), G)
            _check_tensors(path, {k: f.get_slice(k) for k in f.keys()}, G, meta["rank"])
            tensors = {k: f.get_tensor(k).float() for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise LatentFitError(f"{path}: not a .safetensors file ({e})") from None
    bad = [k for k, d in tensors.items() if not torch.isfinite(d).all()]
    if bad:
        raise LatentFitError(f"{path}: weight change {bad[0]!r} holds values that are not finite")
    return _pairs(tensors), meta


def _pairs(tensors: dict[str, torch.Tensor]) -> dict:
    """A file's tensors as a delta: NAME.lora_a and NAME.lora_b as the pair of NAME."""
    a, b = SUFFIXES
    out = {k: v for k, v in tensors.items() if not k.endswith(SUFFIXES)}
    return out | {k[: -len(a)]: (v, tensors[k[: -len(a)] + b]) for k, v in tensors.items() if k.endswith(a)}


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
    rank = meta.get("rank", FULL)  # version 1: full changes
    if not (rank == FULL or rank.isdigit() and int(rank) >= 1):
        raise LatentFitError(f'{path}: rank {rank!r} is neither "full" nor a positive integer')
    parsed = {key: parse_json(meta.get(key, "{}"), f"{path}: {key}") for key in ("settings", "metrics")}
    return meta | parsed | {"rank": rank if rank == FULL else int(rank)}


def _check_tensors(path: Path, slices: dict, G: Generator | None, rank: int | str) -> None:
    """Refuse tensors that are not floats, half a low-rank pair, or (G given) names or shapes
    other than G's tunable weights at `rank`."""
    for k, sl in slices.items():
        if sl.get_dtype() not in FLOATS:
            raise LatentFitError(f"{path}: weight change {k!r} is {sl.get_dtype()}, not floats")
    a, b = SUFFIXES
    halves = [k for k in slices if k.endswith(a) and k[: -len(a)] + b not in slices]
    halves += [k for k in slices if k.endswith(b) and k[: -len(b)] + a not in slices]
    if halves:
        raise LatentFitError(f"{path}: {halves[0]!r} is half of a low-rank change whose other half is missing")
    ranks = {k[: -len(a)]: sl.get_shape()[-1] for k, sl in slices.items() if k.endswith(a)}  # a layer's may be lower
    top = max(ranks.values(), default=FULL)
    if top != rank:
        raise LatentFitError(f"{path}: rank {rank} recorded, but its largest change has rank {top}")
    bad = [] if G is None else misfits(slices, file_shapes(G.tunable(), {k: ranks.get(k, FULL) for k in G.tunable()}))
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
            params[k].add_(dense(d, tuple(params[k].shape)).to(params[k].device))
    return tuned


def load_delta(G: Generator, path: str | Path) -> dict:
    """The Δθ of a tuned file (float32 tensors and low-rank pairs, on G's device), once checked to
    be tuned from G and to fit its tunable weights (read_tuned); else one LatentFitError line
    naming the file."""
    return each(read_tuned(path, G)[0], lambda t: t.to(G.device))
