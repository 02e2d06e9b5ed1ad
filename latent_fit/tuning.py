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
At a tune_rank each weight's Δθ is a product A·B (lowrank), added beside plain layers as dense
batched matrix products instead of per-target weights; a plain layer's factors start on the
directions of the pivot's own input to it (lowrank.aligned_pair).
Pure tensors in, tensors out; the .safetensors side is generators/tuned.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from . import lowrank
from .config import TUNING_DEFAULTS, Tuning
from .errors import LatentFitError
from .generators.base import Generator
from .objective import Inputs, Objective, pixel_mse, psnr, weight_sq_norm
from .optimize import Result, plain_cpu_kernels
from .rng import keyed_normal, name_key

LOCALITY_SAMPLES = 4  # fixed prior samples per target for the locality term
EVAL_SAMPLES = 16  # held-out prior samples per target for locality_psnr
RAMPDOWN = 0.25  # at a low rank, the fraction of the steps, the last, over which tune_lr falls to 0
# (cosine): factors at a constant rate swung up to 3 dB between steps; full changes did not (measured)
MOMENT_SAMPLES = 128  # prior samples of the layers' moments (locality "layers")
_KEY_START = 1 << 30  # name_key start index of tuning's random numbers (projection uses 0..starts)
_EVAL_COUNTER = 1 << 40  # keyed_normal counter of the held-out samples (training's use 0)
_INIT_COUNTER = 1 << 41  # keyed_normal counters of the low-rank factors' start (one per weight)
_MOMENT_COUNTER = 1 << 42  # keyed_normal counter of the layers' moment samples


TUNE_COLUMNS = ["psnr_pivot", "dtheta_norm", "locality_psnr"]  # what tuning adds to a target's metrics


@dataclass
class TuneResult:
    """Tuning of N targets (row i belongs to names[i])."""

    names: list[str]
    space: str
    delta: dict  # parameter name -> Δθ [N, *parameter shape] or a low-rank pair (A, B) (lowrank)
    images: torch.Tensor  # [N, 3, H, W] G_θ0+Δθ(pivot) in [-1, 1]
    metrics: dict[str, np.ndarray]  # [N] each: mse, psnr, psnr_pivot, lpips (nan if unused),
    # dtheta_norm, locality_psnr
    settings: dict  # steps, lr, reg, locality, ... as used
    seconds: float  # wall time of the whole batch


def tuning_bytes(G: Generator, image_bytes: int, rank: int | str = lowrank.FULL) -> int:
    """Memory one target's tuning at `rank` needs: four copies of its change (Δθ or its factors,
    the gradient, Adam's two moments), θ0 + Δθ of every weight not rendered beside a plain layer
    (lowrank.plain_layers), and the step memory of its image and its LOCALITY_SAMPLES (none with
    the layers' locality term), image_bytes each, as one projection step of one image needs.
    Layers' ranks below `rank` (lowrank.capped) count at `rank`: an upper bound."""
    tunable = G.tunable()
    stored = sum(math.prod(s) for s in lowrank.file_shapes(tunable, rank).values())
    plain = lowrank.plain_at(G, rank)
    formed = sum(v.numel() for k, v in tunable.items() if k not in plain)
    samples = 0 if locality_term(G, rank) == "layers" else LOCALITY_SAMPLES
    return 4 * (4 * stored + formed) + (1 + samples) * image_bytes


class _Synthesis(nn.Module):
    """G.synthesize as a forward(), so that torch.func.functional_call can swap G's weights."""

    def __init__(self, G: Generator, space: str):
        super().__init__()
        self.G, self.space = G, space

    def forward(self, latent, c, noise):
        return self.G.synthesize(latent, self.space, c, noise)


def render_tuned(
    G: Generator,
    delta: dict,
    latents: torch.Tensor,
    space: str,
    c: torch.Tensor | None = None,
    noise: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Images [N, R, 3, H, W]: target i's latents [R, *shape] (of `latents` [N, R, *shape]) rendered
    with its own weights θ0 + delta[i] (full or low-rank changes, see lowrank). c: [N, R, c_dim];
    noise: maps [N, R, 1, h, w] (or None). A plain layer's low-rank change is added beside it as
    dense products (lowrank.layer_change); every other change through per-target weights."""
    theta0 = G.tunable()
    module = _Synthesis(G, space)
    plain = lowrank.plain_layers(G, [k for k, v in delta.items() if isinstance(v, tuple)])
    bias_of = {k: k.rpartition(".")[0] + ".bias" for k in plain}
    hooked = set(plain) | set(bias_of.values())

    def one(d, lat, cc, nn_):
        params = {f"G.{k}": theta0[k] + lowrank.dense(v, theta0[k].shape) for k, v in d.items() if k not in hooked}
        hooks = [
            m.register_forward_hook(
                lambda m, x, y, ab=d[k], db=d.get(bias_of[k]): lowrank.layer_change(m, x[0], y, *ab, db)
            )
            for k, m in plain.items()
        ]
        try:
            return functional_call(module, params, (lat, cc, nn_), strict=False)
        finally:
            for h in hooks:
                h.remove()

    dims = (0, 0, None if c is None else 0, None if noise is None else 0)
    return vmap(one, in_dims=dims)(delta, latents, c, noise)


def _rows(pivot: torch.Tensor, samples: torch.Tensor | None) -> torch.Tensor:
    """[N, 1 + K, *shape]: each target's pivot, then its K prior samples."""
    rows = pivot[:, None]
    return rows if samples is None else torch.cat([rows, samples], 1)


def _prior(G: Generator, keys: torch.Tensor, counter: int, k: int, space: str, c: torch.Tensor | None) -> torch.Tensor:
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
    const = [m.expand(n, r - 1, *m.shape) for m in G.const_noise()]
    nr = [torch.cat([p[:, None], q], 1) for p, q in zip(noise, const)]
    return _rows(pivot, samples), cr, nr


def _originals(G: Generator, lat: torch.Tensor, cr: torch.Tensor | None, space: str) -> torch.Tensor:
    """The original generator's images [N * K, 3, H, W] of every target's prior samples (rows 1:)."""
    return G.synthesize(lat[:, 1:].flatten(0, 1), space, None if cr is None else cr[:, 1:].flatten(0, 1))


def _check(G, latents, targets, space, n):
    shape = G.latent_shape(space)
    if tuple(latents.shape[1:]) != shape:
        raise LatentFitError(
            f"pivots have shape {list(latents.shape[1:])}, the {space} space of {G.name!r} needs {list(shape)}"
        )
    if targets.shape != (n, G.img_channels, G.resolution, G.resolution):
        raise LatentFitError(
            f"targets must be [{n}, {G.img_channels}, {G.resolution}, {G.resolution}], got {list(targets.shape)}"
        )


def tune(
    G: Generator,
    latents: torch.Tensor,
    targets: torch.Tensor,
    names: list[str] | None = None,
    *,
    tuning: Tuning | None = None,
    space: str | None = None,
    c: torch.Tensor | None = None,
    noise: list[torch.Tensor] | None = None,
    loss: str = "auto",
    lpips_weight: float = 1.0,
    seed: int = 0,
    exact: bool = False,
    check_every: int = 25,
    progress=None,
    **changes,
) -> TuneResult:
    """Tune one copy of G's weights per target so that G_θ(pivot) reconstructs it.

    latents: the pivots [N, *latent_shape] in `space` (held fixed); targets [N, 3, H, W] in [-1, 1];
    names key the locality samples; c: [N, c_dim] labels; noise: the pivots' StyleGAN noise maps
    ([N, 1, h, w] each, as projection returns them). tuning: the settings (default Tuning(),
    with `changes`, its fields; tune_reg and tune_locality may be [N] tensors: grids in one run).
    The loss is an Objective of `loss` (with lpips_weight), the weight L2 and the locality terms.
    exact: CPU kernels whose rounding does not depend on the batch size, so a target's Δθ is
    bit-identical however it is batched (Adam's sign-like steps on weights magnify the fast
    kernels' ~1e-7 differences). progress: callable(step, best_loss).
    """
    t_start = time.perf_counter()
    tuning = (tuning or Tuning()).replace(**changes)
    space = G.check_space(space or G.default_space)
    dev, n = G.device, latents.shape[0]
    names = list(names) if names is not None else [str(i) for i in range(n)]
    _check(G, latents, targets, space, n)
    pivot, targets = latents.to(dev, torch.float32), targets.to(dev, torch.float32)
    c = None if c is None else c.to(dev, torch.float32)
    noise = None if noise is None else [m.to(dev, torch.float32) for m in noise]
    keys = torch.tensor([name_key(seed, s, _KEY_START) for s in names], device=dev)
    tuning = resolved(G, tuning)
    reg, loc = (
        torch.as_tensor(v, dtype=torch.float32, device=dev).expand(n) for v in (tuning.tune_reg, tuning.tune_locality)
    )
    locality = locality_term(G, tuning.tune_rank) if bool((loc > 0).any()) else None  # 0 zeroes a target's term
    k = LOCALITY_SAMPLES if locality == "samples" else 0
    objective = Objective.build(loss, lpips_weight=lpips_weight, reg=None, tuning=True, locality=locality, device=dev)
    with plain_cpu_kernels() if exact else contextlib.nullcontext():
        moments = _moments(G, space, seed) if locality == "layers" else None
        delta = _start(G, tuning.tune_rank, keys, (pivot, space, c, noise))
        lat, cr, nr = _inputs(G, pivot, _prior(G, keys, 0, k, space, c) if k else None, c, noise)
        with torch.no_grad():
            before = _originals(G, lat, cr, space) if k else None
        rows = Inputs(images=None, targets=targets, tune_reg=reg, tune_locality=loc, originals=before, moments=moments)
        _descend(G, objective, delta, rows, (lat, cr, nr, space), tuning, check_every, progress)
        delta = lowrank.each(delta, torch.Tensor.detach)
        metrics = _metrics(G, delta, pivot, targets, space, c, noise, keys, objective)
    settings = _settings(tuning, objective, space=space, seed=seed, locality=locality, locality_samples=k, exact=exact)
    images, seconds = metrics.pop("images"), time.perf_counter() - t_start
    return TuneResult(names, space, delta, images, metrics, settings, seconds)


def _inputs_of(G: Generator, layers: dict[str, nn.Module], *synthesis) -> dict[str, tuple]:
    """(input, output) of each of `layers` (name -> module) in one no-grad G.synthesize(*synthesis)."""
    seen = {}

    def keep(k):  # a forward hook keeping the layer's first call; it returns None: the output stays
        def hook(m, x, y):
            seen.setdefault(k, (x[0], y))

        return hook

    hooks = [m.register_forward_hook(keep(k)) for k, m in layers.items()]
    try:
        with torch.no_grad():
            if layers:
                G.synthesize(*synthesis)
    finally:
        for h in hooks:
            h.remove()
    return seen


def plain_only(G: Generator) -> bool:
    """Whether every tuned weight of G belongs to a plain layer (lowrank.plain_layers) and G takes
    no labels: where a low-rank tuning's locality term can be the layers' own."""
    tunable = G.tunable()
    plain = lowrank.plain_layers(G, [k for k in tunable if k.endswith(".weight")])
    return not G.c_dim and all(k.rpartition(".")[0] + ".weight" in plain for k in tunable)


def locality_term(G: Generator, rank: int | str) -> str:
    """The locality term tuning G at `rank` uses: "layers" (lowrank.output_change, no samples
    rendered) at a low rank where plain_only(G); "samples" (LOCALITY_SAMPLES rendered prior
    samples per target) otherwise."""
    return "layers" if rank != lowrank.FULL and plain_only(G) else "samples"


def resolved(G: Generator, tuning: Tuning) -> Tuning:
    """`tuning` with its unset tune_rank, tune_reg and tune_locality filled in from TUNING_DEFAULTS:
    the rank of G's kind (20 where plain_only(G), else full), then the weights of the locality term
    that rank uses (what the record and the tuned file hold)."""
    rank = tuning.tune_rank
    if rank is None:
        rank = TUNING_DEFAULTS["layers" if plain_only(G) else "samples"]["tune_rank"]
    defaults = TUNING_DEFAULTS[locality_term(G, rank)]
    unset = {k: v for k, v in defaults.items() if getattr(tuning, k) is None}
    return dataclasses.replace(tuning, **unset | {"tune_rank": rank})


def _moments(G: Generator, space: str, seed: int) -> dict:
    """Each plain layer's lowrank.Moments over MOMENT_SAMPLES prior samples, keyed by seed alone
    (the same for every target), for the locality term "layers"."""
    plain = lowrank.plain_layers(G, [k for k in G.tunable() if k.endswith(".weight")])
    key = torch.tensor([name_key(seed, "locality moments", _KEY_START)])
    z = keyed_normal(key, _MOMENT_COUNTER, (MOMENT_SAMPLES, G.z_dim))[0].to(G.device)
    latents = G.from_z(z, space)
    return {k: lowrank.layer_moments(plain[k], x, y) for k, (x, y) in _inputs_of(G, plain, latents, space).items()}


def _start(G: Generator, rank: int | str, keys: torch.Tensor, pivots: tuple) -> dict:
    """The delta tuning starts from (lowrank.zeros): a plain layer's pair at its capped rank,
    aligned with what the pivots (latents, space, labels, noise) feed it (lowrank.aligned_pair),
    other pairs random."""
    tunable = G.tunable()
    index = {k: i for i, k in enumerate(tunable)}

    def init(i: int, shape: tuple[int, ...]) -> torch.Tensor:  # weight i's random numbers
        return keyed_normal(keys, _INIT_COUNTER + i, shape)

    plain = lowrank.plain_at(G, rank)
    cols = {  # a layer that saw other rows than one per target (a reshaped batch) starts random
        k: lowrank.input_cols(plain[k], x) for k, (x, _) in _inputs_of(G, plain, *pivots).items() if len(x) == len(keys)
    }
    ranks = {k: lowrank.capped(rank, cols[k]) if k in cols else rank for k in tunable}
    starts = {
        k: lowrank.aligned_pair(plain[k], c, ranks[k], lambda shape, i=index[k]: init(i, shape))
        for k, c in cols.items()
    }
    return lowrank.zeros(tunable, ranks, len(keys), init, starts)


def _settings(tuning: Tuning, objective: Objective, **used) -> dict:
    """What a tuned file records as its settings: the Tuning's fields, `used` (space, seed, ...)
    and the reconstruction terms."""
    fields = {f.name: _plain(getattr(tuning, f.name)) for f in dataclasses.fields(tuning)}
    return fields | used | {"terms": [t for t in objective.names if t in ("mse", "lpips")]}


def _descend(
    G: Generator,
    objective: Objective,
    delta: dict,
    rows: Inputs,
    render: tuple,
    tuning: Tuning,
    check_every: int,
    progress,
) -> None:
    """tuning.tune_steps Adam steps on every target's Δθ (in place), at a low rank with tune_lr
    ramped down to 0 over the last RAMPDOWN of them; rows: the objective's per-target inputs but the images; render:
    render_tuned's (latents, labels, noise, space)."""
    lat, cr, nr, space = render
    opt = _adam(lowrank.leaves(delta), tuning.tune_lr)  # element-wise: rows stay independent
    rampdown = 0 if tuning.tune_rank == lowrank.FULL else RAMPDOWN
    for step in range(tuning.tune_steps):
        if rampdown:
            ramp = min(1.0, (1 - step / tuning.tune_steps) / rampdown)
            opt.param_groups[0]["lr"] = tuning.tune_lr * (0.5 - 0.5 * math.cos(ramp * math.pi))
        images = render_tuned(G, delta, lat, space, cr, nr)
        total = objective(dataclasses.replace(rows, images=images[:, 0], delta=delta, samples=images[:, 1:]))
        opt.zero_grad(set_to_none=True)
        total.sum().backward()
        opt.step()
        if progress is not None and ((step + 1) % check_every == 0 or step == tuning.tune_steps - 1):
            progress(step + 1, float(total.detach().min()))


def tune_projection(
    G: Generator, res: Result, targets: torch.Tensor, c: torch.Tensor | None, tuning: Tuning, cfg, progress=None
) -> tuple[Result, TuneResult]:
    """Tune G around every pivot of `res` (its latents and noise maps; loss, LPIPS weight, seed
    and exact from the Config `cfg`): (res as the tuned generators render it, the tuning). Its
    seconds include the tuning's."""
    tres = tune(
        G,
        res.latent,
        targets.to(G.device),
        res.names,
        tuning=tuning,
        space=res.space,
        c=c,
        noise=res.noise,
        loss=cfg.loss,
        lpips_weight=cfg.lpips_weight,
        seed=cfg.seed,
        exact=cfg.exact,
        progress=progress,
    )
    tuned = with_tuning(res, tres)
    tuned.seconds += tres.seconds
    return tuned, tres


def with_tuning(res: Result, tuned: TuneResult) -> Result:
    """The projection `res` as its tuned generators render it: their images, and metrics whose
    mse / psnr / lpips are the tuned ones, plus TUNE_COLUMNS (psnr_pivot is res's own psnr
    up to rounding)."""
    keep = ("mse", "psnr", "lpips", *TUNE_COLUMNS)
    return dataclasses.replace(
        res, images=tuned.images, metrics=dict(res.metrics) | {k: tuned.metrics[k] for k in keep}
    )


def render_blended(
    G: Generator,
    delta_a: dict | None,
    delta_b: dict | None,
    t: torch.Tensor,
    latents: torch.Tensor,
    space: str,
    c: torch.Tensor | None = None,
    chunk: int = 8,
    noise: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Frames [F, C, H, W] between two tuned targets: latents[i] ([F, *shape]) rendered with
    θ0 + (1 − t[i])·Δa + t[i]·Δb (Δ None: untuned), so the ends are both targets' own
    reconstructions. c: [F, c_dim]; noise: maps [F, *noise_shape] per noise input (None: the
    constant maps). Weights are built `chunk` frames at a time."""
    tunable = G.tunable()
    zero = {k: torch.zeros_like(v) for k, v in tunable.items()}
    a, b = (zero | lowrank.dense_delta(d or {}, tunable) for d in (delta_a, delta_b))
    t = t.to(G.device, torch.float32)
    out = []
    with torch.no_grad():
        for i in range(0, len(t), chunk):
            ti = t[i : i + chunk]
            d = {
                k: (1 - ti).view(-1, *[1] * a[k].ndim) * a[k].to(ti) + ti.view(-1, *[1] * a[k].ndim) * b[k].to(ti)
                for k in zero
            }
            cc = None if c is None else c[i : i + chunk, None].to(G.device)
            nz = None if noise is None else [m[i : i + chunk, None].to(G.device, torch.float32) for m in noise]
            out.append(render_tuned(G, d, latents[i : i + chunk, None].to(G.device), space, cc, nz)[:, 0].clamp(-1, 1))
    return torch.cat(out)


def _adam(params: list, lr: float) -> torch.optim.Adam:
    """Adam fused into one kernel per step where this torch has that for the device (CPU: torch
    >= 2.4; it cut a CPU tuning step by a fifth), else the plain one."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except RuntimeError:
        return torch.optim.Adam(params, lr=lr)


def _plain(x):
    """A setting as JSON-ready Python: a number or word ("full") as given, or a list for per-target tensors."""
    return x if isinstance(x, (str, int, float)) else torch.as_tensor(x).tolist()


@torch.no_grad()
def _metrics(G, delta, pivot, targets, space, c, noise, keys, objective: Objective) -> dict:
    """Reconstruction before and after (the objective's metrics), ‖Δθ‖ and the median PSNR of
    EVAL_SAMPLES held-out prior samples rendered by the tuned generator against the original
    (all per target)."""
    n = pivot.shape[0]
    samples = _prior(G, keys, _EVAL_COUNTER, EVAL_SAMPLES, space, c)
    lat, cr, nr = _inputs(G, pivot, samples, c, noise)
    after = render_tuned(G, delta, lat, space, cr, nr).clamp(-1, 1)
    before_piv = G.synthesize(pivot, space, c, noise).clamp(-1, 1)
    before = _originals(G, lat, cr, space).clamp(-1, 1)
    measured = objective.metrics(Inputs(images=after[:, 0], targets=targets))
    loc = psnr(pixel_mse(after[:, 1:].flatten(0, 1), before)).view(n, EVAL_SAMPLES)
    return (
        {"images": after[:, 0]}
        | {k: v.cpu().numpy() for k, v in measured.items()}
        | {
            "psnr_pivot": psnr(pixel_mse(before_piv, targets)).cpu().numpy(),
            "dtheta_norm": weight_sq_norm(delta).sqrt().cpu().numpy(),
            "locality_psnr": loc.median(1).values.cpu().numpy(),
        }
    )
