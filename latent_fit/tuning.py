"""Pivotal tuning: fine-tune the generator's weights around a found latent (the pivot), per target.

After projection, a photo outside the generator's domain is still far from G(pivot). Tuning holds
the pivot fixed and moves the weights θ = θ0 + Δθ instead (PTI, Roich et al. 2021), each target
its own Δθ, minimizing per target

    L(Δθ) = MSE(G_θ(pivot), x) [+ LPIPS] + reg·Σ Δθ² + locality·mean_k MSE(G_θ(z_k), G_θ0(z_k))

reg·ΣΔθ² is weight decay toward θ0, the weight-space twin of w_r·‖Δz‖²; the locality term keeps
LOCALITY_SAMPLES prior samples z_k per target (keyed by seed and target name, the same at every
step) rendering as before. Fresh samples each step made it worse: Adam's per-weight steps follow the
sampling noise, so ‖Δθ‖ grew and both the reconstruction and the held-out locality fell.
All targets run together through `torch.func.vmap` (one set of weights per target); every term is
per target, so a target's result does not depend on its batch (bit for bit with `exact`, see tune).
Pure tensors in, tensors out, apart
from `save_tuned` / `read_tuned` / `apply_tuned`, the .safetensors side.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from .errors import ArgumentError, LatentFitError
from .fields import FLOATS, misfits, parse_json, regular_file
from .generators.base import Generator
from .images import atomic_write
from .objective import LPIPS, pixel_mse, psnr, resolve_loss
from .optimize import Result, plain_cpu_kernels
from .rng import keyed_normal, name_key

FORMAT = "latent-fit-tuned"
FORMAT_VERSION = 1
TUNE_DEFAULTS = {"steps": 300, "lr": 3e-4, "reg": 1e-3, "locality": 2.0}
LOCALITY_SAMPLES = 4        # fixed prior samples per target for the locality term
EVAL_SAMPLES = 16           # held-out prior samples per target for locality_psnr
_KEY_START = 1 << 30        # name_key start index of tuning's random numbers (projection uses 0..starts)
_EVAL_COUNTER = 1 << 40     # keyed_normal counter of the held-out samples (training's use 0)


@dataclass(frozen=True)
class Tuning:
    """The settings of `project --tune` (tune()'s steps, lr, reg and locality), named as the CLI's
    --tune-* flags and the record keys; loss, LPIPS weight, seed and exact come from the Config."""

    tune_steps: int = TUNE_DEFAULTS["steps"]
    tune_lr: float = TUNE_DEFAULTS["lr"]
    tune_reg: float = TUNE_DEFAULTS["reg"]
    tune_locality: float = TUNE_DEFAULTS["locality"]

    def replace(self, **changes) -> "Tuning":
        """A copy with `changes` (None values are left out), validated."""
        new = dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})
        for name, ok, need in (("tune_steps", new.tune_steps >= 1, ">= 1"), ("tune_lr", new.tune_lr > 0, "> 0"),
                               ("tune_reg", new.tune_reg >= 0, ">= 0"),
                               ("tune_locality", new.tune_locality >= 0, ">= 0")):
            if not ok:
                raise ArgumentError(name, getattr(new, name), f"must be {need}")
        return new

    def kwargs(self) -> dict:
        """tune()'s keyword arguments."""
        return {"steps": self.tune_steps, "lr": self.tune_lr, "reg": self.tune_reg, "locality": self.tune_locality}

    @staticmethod
    def record(tuning: "Tuning | None") -> dict:
        """The record entries of a target: these settings, or all None without tuning (so a
        rerun with or without --tune differs from the other, and older records match the latter)."""
        fields = [f.name for f in dataclasses.fields(Tuning)]
        return {"tune": None if tuning is None else True} | {
            k: None if tuning is None else getattr(tuning, k) for k in fields}


TUNE_COLUMNS = ["psnr_pivot", "dtheta_norm", "locality_psnr"]   # what tuning adds to a target's metrics


@dataclass
class TuneResult:
    """Tuning of N targets (row i belongs to names[i])."""

    names: list[str]
    space: str
    delta: dict[str, torch.Tensor]   # parameter name -> Δθ [N, *parameter shape]
    images: torch.Tensor             # [N, 3, H, W] G_θ0+Δθ(pivot) in [-1, 1]
    metrics: dict[str, np.ndarray]   # [N] each: mse, psnr, psnr_pivot, lpips (nan if unused),
                                     # dtheta_norm, locality_psnr
    settings: dict                   # steps, lr, reg, locality, ... as used
    seconds: float                   # wall time of the whole batch


def tuning_bytes(G: Generator, image_bytes: int) -> int:
    """Memory one target's tuning needs: five copies of the tuned weights (Δθ, its gradient,
    Adam's two moments, θ0 + Δθ) and the step memory of its 1 + LOCALITY_SAMPLES images
    (image_bytes each, as one projection step of one image needs)."""
    weights = sum(p.numel() * p.element_size() for p in tunable(G).values())
    return 5 * weights + (1 + LOCALITY_SAMPLES) * image_bytes


def tunable(G: Generator) -> dict[str, torch.Tensor]:
    """The parameters tuning moves: StyleGAN's synthesis network (its mapping stays fixed),
    every parameter of any other generator."""
    params = dict(G.named_parameters())
    if hasattr(G, "synthesis") and hasattr(G, "mapping"):
        params = {k: v for k, v in params.items() if k.startswith("synthesis.")}
    if not params:
        raise LatentFitError(f"generator {G.name!r} has no parameters to tune")
    return {k: v.detach() for k, v in params.items()}


class _Synthesis(nn.Module):
    """G.synthesize as a forward(), so that torch.func.functional_call can swap G's weights."""

    def __init__(self, G: Generator, space: str):
        super().__init__()
        self.G, self.space = G, space

    def forward(self, latent, c, noise):
        return self.G.synthesize(latent, self.space, c, noise)


def render_tuned(G: Generator, delta: dict[str, torch.Tensor], latents: torch.Tensor, space: str,
                 c: torch.Tensor | None = None, noise: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Images [N, R, 3, H, W]: target i's latents [R, *shape] (of `latents` [N, R, *shape]) rendered
    with its own weights θ0 + delta[i]. c: [N, R, c_dim]; noise: maps [N, R, 1, h, w] (or None)."""
    theta0 = tunable(G)
    module = _Synthesis(G, space)

    def one(d, lat, cc, nn_):
        params = {f"G.{k}": theta0[k] + d[k] for k in d}
        return functional_call(module, params, (lat, cc, nn_), strict=False)
    dims = (0, 0, None if c is None else 0, None if noise is None else 0)
    return vmap(one, in_dims=dims)(delta, latents, c, noise)


def _rows(pivot: torch.Tensor, samples: torch.Tensor | None) -> torch.Tensor:
    """[N, 1 + K, *shape]: each target's pivot, then its K prior samples."""
    rows = pivot[:, None]
    return rows if samples is None else torch.cat([rows, samples], 1)


def _prior(G: Generator, keys: torch.Tensor, counter: int, k: int, space: str,
           c: torch.Tensor | None) -> torch.Tensor:
    """k prior latents per target in `space`, keyed by (target key, counter): [N, k, *shape]."""
    n = len(keys)
    z = keyed_normal(keys, counter, (k, G.z_dim)).to(G.device).flatten(0, 1)
    cc = None if c is None else c.repeat_interleave(k, 0)
    return G.from_z(z, space, cc).view(n, k, *G.latent_shape(space))


def _inputs(G, pivot, samples, c, noise):
    """Per-target rows for render_tuned: latents, labels and noise maps (the pivot's own maps,
    the generator's constant ones for the prior samples)."""
    n, r = pivot.shape[0], 1 + (0 if samples is None else samples.shape[1])
    cr = None if c is None else c[:, None].expand(n, r, c.shape[1])
    if noise is None:
        return _rows(pivot, samples), cr, None
    const = [m.noise_const.expand(n, r - 1, 1, *m.noise_const.shape) for m in G.synthesis.noise_layers]
    nr = [torch.cat([p[:, None], q], 1) for p, q in zip(noise, const)]
    return _rows(pivot, samples), cr, nr


def _originals(G: Generator, lat: torch.Tensor, cr: torch.Tensor | None, space: str) -> torch.Tensor:
    """The original generator's images [N * K, 3, H, W] of every target's prior samples (rows 1:)."""
    return G.synthesize(lat[:, 1:].flatten(0, 1), space, None if cr is None else cr[:, 1:].flatten(0, 1))


def _check(G, latents, targets, space, n):
    shape = G.latent_shape(space)
    if tuple(latents.shape[1:]) != shape:
        raise LatentFitError(f"pivots have shape {list(latents.shape[1:])}, the {space} space of "
                             f"{G.name!r} needs {list(shape)}")
    if targets.shape != (n, G.img_channels, G.resolution, G.resolution):
        raise LatentFitError(f"targets must be [{n}, {G.img_channels}, {G.resolution}, {G.resolution}], "
                             f"got {list(targets.shape)}")


def tune(G: Generator, latents: torch.Tensor, targets: torch.Tensor, names: list[str] | None = None, *,
         space: str | None = None, c: torch.Tensor | None = None, noise: list[torch.Tensor] | None = None,
         steps: int = TUNE_DEFAULTS["steps"], lr: float = TUNE_DEFAULTS["lr"],
         reg: float | torch.Tensor = TUNE_DEFAULTS["reg"],
         locality: float | torch.Tensor = TUNE_DEFAULTS["locality"],
         loss: str = "auto", lpips_weight: float = 1.0, seed: int = 0, exact: bool = False,
         check_every: int = 25, progress=None) -> TuneResult:
    """Tune one copy of G's weights per target so that G_θ(pivot) reconstructs it.

    latents: the pivots [N, *latent_shape] in `space` (held fixed); targets [N, 3, H, W] in [-1, 1];
    names key the locality samples; c: [N, c_dim] labels; noise: the pivots' StyleGAN noise maps
    ([N, 1, h, w] each, as projection returns them). reg, locality: scalars or [N] per target
    (grids in one run). exact: CPU kernels whose rounding does not depend on the batch size, so a
    target's Δθ is bit-identical however it is batched (Adam's sign-like steps on weights magnify
    the fast kernels' ~1e-7 differences). progress: callable(step, best_loss).
    """
    t_start = time.perf_counter()
    space = G.check_space(space or G.default_space)
    dev, n = G.device, latents.shape[0]
    names = list(names) if names is not None else [str(i) for i in range(n)]
    _check(G, latents, targets, space, n)
    reg_t, loc_t = (torch.as_tensor(v, dtype=torch.float32, device=dev).expand(n) for v in (reg, locality))
    if steps < 1 or lr <= 0 or bool((reg_t < 0).any()) or bool((loc_t < 0).any()):
        raise LatentFitError(f"tuning needs steps >= 1, lr > 0, reg >= 0 and locality >= 0 "
                             f"(got {steps}, {lr}, {reg}, {locality})")
    pivot, targets = latents.to(dev, torch.float32), targets.to(dev, torch.float32)
    c = None if c is None else c.to(dev, torch.float32)
    noise = None if noise is None else [m.to(dev, torch.float32) for m in noise]
    use_mse, use_lpips = resolve_loss(loss)
    lpips_net = LPIPS().to(dev) if use_lpips else None
    keys = torch.tensor([name_key(seed, s, _KEY_START) for s in names], device=dev)
    delta = {k: torch.zeros(n, *v.shape, device=dev, requires_grad=True) for k, v in tunable(G).items()}
    opt = _adam(list(delta.values()), lr)   # element-wise: rows stay independent
    k = LOCALITY_SAMPLES if bool((loc_t > 0).any()) else 0   # a 0 weight zeroes its target's term

    with plain_cpu_kernels() if exact else contextlib.nullcontext():
        lat, cr, nr = _inputs(G, pivot, _prior(G, keys, 0, k, space, c) if k else None, c, noise)
        with torch.no_grad():
            before = _originals(G, lat, cr, space) if k else None
        for step in range(steps):
            images = render_tuned(G, delta, lat, space, cr, nr)
            total = reg_t * _sq_norm(delta)
            if use_mse:
                total = total + pixel_mse(images[:, 0], targets)
            if lpips_net is not None:
                total = total + lpips_weight * lpips_net(images[:, 0], targets)
            if k:
                total = total + loc_t * pixel_mse(images[:, 1:].flatten(0, 1), before).view(n, k).mean(1)
            opt.zero_grad(set_to_none=True)
            total.sum().backward()
            opt.step()
            if progress is not None and ((step + 1) % check_every == 0 or step == steps - 1):
                progress(step + 1, float(total.detach().min()))
        delta = {key: d.detach() for key, d in delta.items()}
        metrics = _metrics(G, delta, pivot, targets, space, c, noise, keys, lpips_net)
    settings = {"steps": steps, "lr": lr, "reg": _plain(reg), "locality": _plain(locality), "space": space,
                "seed": seed, "locality_samples": k, "exact": exact,
                "terms": (["mse"] if use_mse else []) + (["lpips"] if use_lpips else [])}
    return TuneResult(names=names, space=space, delta=delta, images=metrics.pop("images"), metrics=metrics,
                      settings=settings, seconds=time.perf_counter() - t_start)


def with_tuning(res: Result, tuned: TuneResult) -> Result:
    """The projection `res` as its tuned generators render it: their images, and metrics whose
    mse / psnr / lpips are the tuned ones, plus TUNE_COLUMNS (psnr_pivot is res's own psnr
    up to rounding)."""
    keep = ("mse", "psnr", "lpips", *TUNE_COLUMNS)
    return dataclasses.replace(res, images=tuned.images,
                               metrics=dict(res.metrics) | {k: tuned.metrics[k] for k in keep})


def render_blended(G: Generator, delta_a: dict[str, torch.Tensor] | None, delta_b: dict[str, torch.Tensor] | None,
                   t: torch.Tensor, latents: torch.Tensor, space: str, c: torch.Tensor | None = None,
                   chunk: int = 8) -> torch.Tensor:
    """Frames [F, C, H, W] between two tuned targets: latents[i] ([F, *shape]) rendered with
    θ0 + (1 − t[i])·Δa + t[i]·Δb (Δ None: untuned), so the ends are both targets' own
    reconstructions. c: [F, c_dim]. Weights are built `chunk` frames at a time."""
    zero = {k: torch.zeros_like(v) for k, v in tunable(G).items()}
    a, b = delta_a or zero, delta_b or zero
    t = t.to(G.device, torch.float32)
    out = []
    with torch.no_grad():
        for i in range(0, len(t), chunk):
            ti = t[i:i + chunk]
            d = {k: (1 - ti).view(-1, *[1] * a[k].ndim) * a[k].to(ti) + ti.view(-1, *[1] * a[k].ndim) * b[k].to(ti)
                 for k in zero}
            cc = None if c is None else c[i:i + chunk, None].to(G.device)
            out.append(render_tuned(G, d, latents[i:i + chunk, None].to(G.device), space, cc)[:, 0].clamp(-1, 1))
    return torch.cat(out)


def _adam(params: list[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam fused into one kernel per step where this torch has that for the device (CPU: torch
    >= 2.4; it cut a CPU tuning step by a fifth), else the plain one."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except RuntimeError:
        return torch.optim.Adam(params, lr=lr)


def _plain(x):
    """A setting as JSON-ready Python: a float as given, or a list for per-target tensors."""
    return float(x) if isinstance(x, (int, float)) else torch.as_tensor(x).tolist()


def _sq_norm(delta: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ Δθ² per target, [N]."""
    return sum(d.pow(2).reshape(d.shape[0], -1).sum(1) for d in delta.values())


@torch.no_grad()
def _metrics(G, delta, pivot, targets, space, c, noise, keys, lpips_net) -> dict:
    """Reconstruction before and after, ‖Δθ‖ and the median PSNR of EVAL_SAMPLES held-out prior
    samples rendered by the tuned generator against the original (all per target)."""
    n = pivot.shape[0]
    samples = _prior(G, keys, _EVAL_COUNTER, EVAL_SAMPLES, space, c)
    lat, cr, nr = _inputs(G, pivot, samples, c, noise)
    after = render_tuned(G, delta, lat, space, cr, nr).clamp(-1, 1)
    before_piv = G.synthesize(pivot, space, c, noise).clamp(-1, 1)
    before = _originals(G, lat, cr, space).clamp(-1, 1)
    mse = pixel_mse(after[:, 0], targets)
    loc = psnr(pixel_mse(after[:, 1:].flatten(0, 1), before)).view(n, EVAL_SAMPLES)
    lp = lpips_net(after[:, 0], targets) if lpips_net is not None else torch.full_like(mse, math.nan)
    return {"images": after[:, 0], "mse": mse.cpu().numpy(), "psnr": psnr(mse).cpu().numpy(),
            "psnr_pivot": psnr(pixel_mse(before_piv, targets)).cpu().numpy(), "lpips": lp.cpu().numpy(),
            "dtheta_norm": _sq_norm(delta).sqrt().cpu().numpy(),
            "locality_psnr": loc.median(1).values.cpu().numpy()}


# --- files ------------------------------------------------------------------------------------

def save_tuned(path: str | Path, delta: dict[str, torch.Tensor], G: Generator, settings: dict,
               metrics: dict | None = None, dtype: torch.dtype = torch.float16) -> None:
    """Write one target's Δθ (parameter name -> tensor) as .safetensors, atomically, with the
    generator's name and sha256, the settings that made it (reg, locality, steps, ...) and its
    metrics (plain numbers). Half precision by default: it halves the file and changes the
    tuned image by less than one 8-bit level (README, "Real photos: tuning the generator")."""
    from safetensors.torch import save_file
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in delta.items()}
    meta = {"format": FORMAT, "version": str(FORMAT_VERSION), "generator": G.name,
            "generator_sha256": G.sha256, "settings": json.dumps(settings, sort_keys=True),
            "metrics": json.dumps(metrics or {}, sort_keys=True, default=float)}
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
            f"not {G.name!r} (sha256 {G.sha256[:12] or '-'}); load it with the generator it was tuned from")
    return meta | {key: parse_json(meta.get(key, "{}"), f"{path}: {key}") for key in ("settings", "metrics")}


def _check_tensors(path: Path, slices: dict, G: Generator | None) -> None:
    """Refuse tensors that are not floats, or (G given) names or shapes other than G's tunable weights."""
    for k, sl in slices.items():
        if sl.get_dtype() not in FLOATS:
            raise LatentFitError(f"{path}: weight change {k!r} is {sl.get_dtype()}, not floats")
    bad = [] if G is None else misfits(slices, {k: v.shape for k, v in tunable(G).items()})
    if bad:
        raise LatentFitError(f"{path}: weight {bad[0]!r} does not fit generator {G.name!r}; "
                             "load it with the generator it was tuned from")


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
