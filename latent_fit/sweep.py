"""w_r sweeps: every target at every w_r in one batched optimization, and the measures that
trade fidelity against realism. Pure tensors in, tensors and arrays out; files in runs/sweep.py.

Realism measures (per latent):
  dz_norm    ||z - z0||, what w_r penalizes (z0: the start; a random start, the mean, or --init)
  prior_nll  negative log density of z under the prior, in nats: N(0, I) in z; in w / w+ a Gaussian
             fitted to FIT_SAMPLES mapped latents (each w+ row scored as a w). A prior sample
             scores about d/2 * (1 + log 2pi) (d: the number of elements).
  radius     ||u||, the norm of the whitened latent (u = z in z); prior samples lie near sqrt(d)
  realism    |radius - sqrt(d)|: the distance from the prior's typical radius, where nearly all of
             a high-dimensional Gaussian's mass lies (0 is typical, lower is more realistic; a
             prior sample's is about 0.56). NLL alone favours z = 0, which no sample resembles.
  jacobian_norm  ||dG/dz||_F at z over its median at prior latents (jacobian.py): 1 is typical;
             far above 1, G changes abnormally fast there

Tuning sweeps (tune_sweep): every target projected once (its pivot), then the generator tuned
around it at every tune_reg in one batched tune() call: fidelity (psnr) against locality
(locality_psnr, how unchanged the rest of the generator is) and ||Δθ||.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from . import lowrank
from .config import SWEEP_WRS, TUNE_SWEEP_REGS, Config, Tuning, check_weights, projection_config, sweep_config
from .edit import edit
from .generators.base import Generator
from .optimize import Result, plain_cpu_kernels, project
from .tuning import TuneResult, tune

FIT_SAMPLES = 10_000
COLUMNS = [
    "target",
    "wr",
    "wr_units",
    "wr_factor",
    "wr_effective",
    "mse",
    "psnr",
    "lpips",
    "dz_norm",
    "prior_nll",
    "radius",
    "realism",
    "jacobian_norm",
    "steps",
]
EDIT_COLUMNS = ["mask_mse_before", "mask_mse_after", "outside_change"]
FACE_COLUMNS = ["id_similarity"]  # with a face template: each result against its target
TUNE_SWEEP_COLUMNS = ["target", "tune_reg", "psnr", "psnr_pivot", "locality_psnr", "dtheta_norm", "mse", "lpips"]
LOCALITY_FLOOR_DB = 32.0  # suggest_tune_reg: the rest of the generator counts as unchanged above this


@dataclass
class SweepResult:
    """T targets at W values of w_r."""

    names: list[str]  # the T targets
    wrs: np.ndarray  # [W]
    result: Result  # T*W rows: row t*W + j is target t at wrs[j]
    metrics: dict[str, np.ndarray]  # [T, W] each (see COLUMNS; EDIT_COLUMNS with init; FACE_COLUMNS)

    def rows(self) -> list[dict]:
        """One dict per (target, w_r), the rows of sweep.csv."""
        steps = self.result.steps.reshape(len(self.names), -1)
        keys = [k for k in COLUMNS[3:-1] + EDIT_COLUMNS + FACE_COLUMNS if k in self.metrics]
        units = self.result.config["wr_units"]
        return [
            {"target": name, "wr": float(wr), "wr_units": units}
            | {k: float(self.metrics[k][t, j]) for k in keys}
            | {"steps": int(steps[t, j])}
            for t, name in enumerate(self.names)
            for j, wr in enumerate(self.wrs)
        ]


def prior_gaussian(G: Generator, space: str, n: int = FIT_SAMPLES) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(mean, Cholesky factor) of a Gaussian fitted to the rows of n prior latents in `space`
    (float64; all classes of a conditional generator alike, so a sample's score never depends
    on its batch); None in z, whose prior is exactly N(0, I)."""
    if G.gaussian_prior(space):
        return None
    x = G.prior_samples(space, n)
    x = x.reshape(-1, x.shape[-1]).double()
    mean = x.mean(0)
    cov = torch.cov(x.T)
    cov += torch.eye(len(cov), dtype=cov.dtype, device=cov.device) * (1e-6 * cov.diagonal().mean())
    return mean, torch.linalg.cholesky(cov)


def realism(G: Generator, latents: torch.Tensor, space: str | None = None) -> dict[str, np.ndarray]:
    """prior_nll, radius and realism of latents [N, *shape] (see the module docstring)."""
    space = G.check_space(space or G.default_space)
    n = latents.shape[0]
    x = latents.detach().double()
    gauss = prior_gaussian(G, space)
    if gauss is None:
        u, logdet = x.reshape(n, -1), 0.0
    else:
        mean, chol = gauss
        rows = (x.reshape(-1, x.shape[-1]) - mean.to(x.device)).T
        u = torch.linalg.solve_triangular(chol.to(x.device), rows, upper=False).T.reshape(n, -1)
        logdet = (u.shape[1] // chol.shape[0]) * chol.diagonal().log().sum().item()
    d = u.shape[1]
    radius = u.norm(dim=1)
    nll = 0.5 * radius**2 + 0.5 * d * math.log(2 * math.pi) + logdet
    return {
        "prior_nll": nll.cpu().numpy(),
        "radius": radius.cpu().numpy(),
        "realism": (radius - math.sqrt(d)).abs().cpu().numpy(),
    }


def sweep(
    G: Generator,
    targets: torch.Tensor,
    wrs=None,
    names: list[str] | None = None,
    *,
    config: Config | None = None,
    init: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    c: torch.Tensor | None = None,
    noise: list[torch.Tensor] | None = None,
    encoder=None,
    progress=None,
    **changes,
) -> SweepResult:
    """Project (or, with init, edit) every target [T, C, H, W] at every w_r (default: the
    SWEEP_WRS grid of the config's wr_units) in ONE batched run of T * W independent samples.

    All w_r samples of a target share its name, hence the same random starts and latent noise.
    Without init the projection config applies (random multi-start in z), so each sample is what
    `project --wr` would give; starts are then picked per sample and dz_norm is measured from
    each one's own start, so the curves may wiggle: starts=1, init_mode='mean' or init give all
    w_r of a target one shared start. mask [T, 1, H, W] limits the targets (mse, psnr and lpips
    are measured inside it). With init [T, *shape] (an edit sweep) the EDIT config applies and
    EDIT_COLUMNS are added; noise: the init latents' StyleGAN noise maps (edit.edit). config:
    config.sweep_config's by default; changes: its fields to replace.
    """
    cfg = sweep_config(config, init=init is not None, encoded=encoder is not None, **changes)
    wr = check_weights(SWEEP_WRS[cfg.wr_units] if wrs is None else wrs)
    t, w = targets.shape[0], len(wr)
    names = list(names) if names is not None else [str(i) for i in range(t)]
    start = None
    if init is None and encoder is not None:  # every w_r of a target starts from E(x)
        cfg = cfg.replace(space=cfg.space or encoder.space)
        with plain_cpu_kernels() if cfg.exact else contextlib.nullcontext():
            start = encoder.start(G, targets, cfg.space, cfg.exact)

    def rep(x):
        return None if x is None else torch.as_tensor(x).to(G.device).repeat_interleave(w, 0)

    rows = dict(
        names=[n for n in names for _ in range(w)],
        c=rep(c),
        progress=progress,
        config=cfg,
        wr=torch.from_numpy(np.tile(wr, t)).float(),
    )
    if init is not None:  # an edit sweep: edit() adds the edit metrics
        res = edit(
            G, rep(init), rep(targets), rep(mask), noise=None if noise is None else [rep(m) for m in noise], **rows
        )
    else:
        res = project(G, rep(targets), mask=rep(mask), init=rep(start), **rows)
    metrics = dict(res.metrics) | realism(G, res.latent, res.space)
    return SweepResult(
        names=names, wrs=wr, result=res, metrics={k: np.asarray(v).reshape(t, w) for k, v in metrics.items()}
    )


def suggest_wr(sw: SweepResult) -> tuple[int, str]:
    """(index into sw.wrs, reason): the knee of the median fidelity-vs-||dz|| curve.

    Both medians (over targets) are scaled to [0, 1] over the sweep; the knee maximizes the PSNR
    kept minus the ||dz|| kept, i.e. the point farthest above the chord from the smallest to the
    largest w_r: past it, PSNR falls faster than ||dz|| shrinks.
    """
    p = np.nanmedian(sw.metrics["psnr"], 0)
    d = np.nanmedian(sw.metrics["dz_norm"], 0)
    lo = int(np.argmin(sw.wrs))
    if len(sw.wrs) < 3 or np.ptp(p) <= 0 or np.ptp(d) <= 0:
        return lo, (
            f"no knee to find among {len(sw.wrs)} w_r value(s) with these medians; "
            f"w_r={sw.wrs[lo]:g} keeps the most fidelity"
        )
    pn = (p - p.min()) / np.ptp(p)
    dn = (d - d.min()) / np.ptp(d)
    score = pn - dn
    j = int(np.argmax(score))
    if score[j] <= 0.05:
        return lo, (
            f"no clear knee: median PSNR falls about as fast as median ||dz|| shrinks; "
            f"w_r={sw.wrs[lo]:g} keeps the most fidelity, pick a larger one if its "
            f"latents look unrealistic"
        )
    return j, (
        f"w_r={sw.wrs[j]:g} is the knee: median PSNR {p[j]:.1f} dB ({pn[j]:.0%} of the "
        f"range {p.min():.1f}..{p.max():.1f} dB) with median ||dz|| {d[j]:.3g} "
        f"({dn[j]:.0%} of the range {d.min():.3g}..{d.max():.3g}); larger w_r lose "
        f"fidelity faster than they shrink ||dz||"
    )


def concat_sweeps(parts: list[SweepResult], names: list[str]) -> SweepResult:
    """One SweepResult of sweeps of disjoint targets at the same w_r (e.g. each through its own
    tuned weights), its targets in the order `names`."""
    w = len(parts[0].wrs)
    at = {n: i for i, n in enumerate(n for p in parts for n in p.names)}
    order = [at[n] for n in names]
    rows = [t * w + j for t in order for j in range(w)]
    res = [p.result for p in parts]
    row_names = [n for r in res for n in r.names]

    def cat(xs):
        return np.concatenate(xs)[rows] if isinstance(xs[0], np.ndarray) else torch.cat(xs)[rows]

    kept = ("latent", "latent_init", "images", "loss_history", "steps")
    result = dataclasses.replace(
        res[0],
        names=[row_names[i] for i in rows],
        **{k: cat([getattr(r, k) for r in res]) for k in kept},
        noise=None if res[0].noise is None else [cat(ms) for ms in zip(*(r.noise for r in res))],
        metrics={k: cat([r.metrics[k] for r in res]) for k in res[0].metrics},
        seconds=sum(r.seconds for r in res),
        frames=None,
    )
    return SweepResult(
        names=list(names),
        wrs=parts[0].wrs,
        result=result,
        metrics={k: np.concatenate([p.metrics[k] for p in parts])[order] for k in parts[0].metrics},
    )


@dataclass
class TuneSweepResult:
    """T targets, each tuned at L values of tune_reg around its one pivot."""

    names: list[str]  # the T targets
    tune_regs: np.ndarray  # [L]
    pivot: Result  # the T pivots (projection)
    tuned: TuneResult  # T*L rows: row t*L + j is target t at tune_regs[j]
    metrics: dict[str, np.ndarray]  # [T, L] each: TUNE_SWEEP_COLUMNS[2:]

    def rows(self) -> list[dict]:
        """One dict per (target, tune_reg), the rows of sweep.csv."""
        return [
            {"target": name, "tune_reg": float(r)} | {k: float(self.metrics[k][t, j]) for k in TUNE_SWEEP_COLUMNS[2:]}
            for t, name in enumerate(self.names)
            for j, r in enumerate(self.tune_regs)
        ]


def tune_sweep(
    G: Generator,
    targets: torch.Tensor,
    tune_regs=TUNE_SWEEP_REGS,
    names: list[str] | None = None,
    *,
    config: Config | None = None,
    tuning: Tuning | None = None,
    c: torch.Tensor | None = None,
    encoder=None,
    progress=None,
    pivot: Result | None = None,
    **changes,
) -> TuneSweepResult:
    """Project every target [T, C, H, W] once (its pivot; config, default config.projection_config's, with
    `changes`), then tune G around it at every tune_reg in ONE batched tune() of T * L rows
    (tuning's other settings, default Tuning(); loss, LPIPS weight, seed and exact from the
    config). All tune_reg of a target share its name, hence its locality samples.
    progress: callable(step, best_loss), the tuning's steps counted on past config.steps.
    pivot: the projection of an earlier sweep of these targets, reused (another tune_rank)."""
    regs = check_weights(tune_regs, "tune_reg")
    cfg, tuning = projection_config(config, encoded=encoder is not None, **changes), tuning or Tuning()
    if pivot is None:
        pivot = project(G, targets, names, config=cfg, c=c, encoder=encoder, progress=progress)
    t, n = len(pivot.names), len(regs)

    def rep(x):
        return None if x is None else torch.as_tensor(x).to(G.device).repeat_interleave(n, 0)

    tres = tune(
        G,
        rep(pivot.latent),
        rep(targets),
        [s for s in pivot.names for _ in range(n)],
        space=pivot.space,
        c=rep(c),
        noise=None if pivot.noise is None else [rep(m) for m in pivot.noise],
        loss=cfg.loss,
        lpips_weight=cfg.lpips_weight,
        seed=cfg.seed,
        exact=cfg.exact,
        progress=progress and (lambda step, loss: progress(cfg.steps + step, loss)),
        tuning=tuning.replace(tune_reg=torch.from_numpy(np.tile(regs, t)).float()),
    )
    return TuneSweepResult(
        names=pivot.names,
        tune_regs=regs,
        pivot=pivot,
        tuned=tres,
        metrics={k: np.asarray(tres.metrics[k]).reshape(t, n) for k in TUNE_SWEEP_COLUMNS[2:]},
    )


def suggest_tune_reg(sw: TuneSweepResult, floor: float = LOCALITY_FLOOR_DB) -> tuple[int, str]:
    """(index into sw.tune_regs, reason): fidelity first, as long as the rest of the generator
    stays: the smallest tune_reg at which every target's locality_psnr reaches `floor` dB (the
    worst target's: one value serves them all); the largest tune_reg (the most local) when none does.

    Smaller tune_reg reconstructs the photo better; larger keeps the tuned generator's other
    images nearer the original's (locality) and its ||Δθ|| smaller. 32 dB is an RMS change of
    about 6 of 255 levels in the other images.
    """
    p = np.nanmedian(sw.metrics["psnr"], 0)
    worst = np.nanmin(sw.metrics["locality_psnr"], 0)
    order = np.argsort(sw.tune_regs)
    ok = [int(j) for j in order if worst[j] >= floor]
    if not ok:
        j = int(order[-1])
        return j, (
            f"tune_reg={sw.tune_regs[j]:g}: no value keeps every target's locality at {floor:g} dB "
            f"(at best {worst.max():.1f} dB); this, the largest, changes the rest of the generator least "
            f"(median PSNR {p[j]:.1f} dB); try larger values"
        )
    j = ok[0]
    return j, (
        f"tune_reg={sw.tune_regs[j]:g}: the smallest value at which every target's locality reaches "
        f"{floor:g} dB (worst {worst[j]:.1f} dB), with median PSNR {p[j]:.1f} dB (best {p.max():.1f} dB, "
        f"pivot {np.nanmedian(sw.metrics['psnr_pivot'][:, j]):.1f} dB)"
    )


TUNE_RANK_COLUMNS = [
    "tune_rank",
    "tune_reg",
    "psnr_median",
    "psnr_worst",
    "locality_median",
    "locality_worst",
    "file_mb",
    "tune_seconds",
]
RANK_MARGIN_DB = 0.5  # suggest_tune_rank: a rank is as good as the reference within this, on every target


def rank_rows(sweeps: list[TuneSweepResult]) -> list[dict]:
    """One dict per (tune_rank, tune_reg), the rows of ranks.csv: median and worst PSNR and
    locality over the targets, the tuned file's size and the batched tuning's seconds."""
    rows = []
    for sw in sweeps:
        rank = sw.tuned.settings["tune_rank"]
        for j, reg in enumerate(sw.tune_regs):
            p, loc = sw.metrics["psnr"][:, j], sw.metrics["locality_psnr"][:, j]
            rows.append(
                {"tune_rank": rank, "tune_reg": float(reg), "psnr_median": float(np.nanmedian(p))}
                | {"psnr_worst": float(np.nanmin(p)), "locality_median": float(np.nanmedian(loc))}
                | {"locality_worst": float(np.nanmin(loc)), "file_mb": lowrank.file_mb(sw.tuned.delta)}
                | {"tune_seconds": sw.tuned.seconds}
            )
    return rows


def suggest_tune_rank(sweeps: list[TuneSweepResult], floor: float = LOCALITY_FLOOR_DB) -> tuple[int, str]:
    """(index into sweeps, reason): the smallest file that costs nothing: the lowest rank whose
    suggested tune_reg (suggest_tune_reg) keeps every target's locality at `floor` dB and every
    target's PSNR within RANK_MARGIN_DB of the reference ("full" if swept, else the highest rank)
    at its own suggested tune_reg; the reference when no rank does."""
    ranks = [sw.tuned.settings["tune_rank"] for sw in sweeps]
    order = sorted(range(len(ranks)), key=lambda i: math.inf if ranks[i] == "full" else ranks[i])
    ref = order[-1]
    jr = suggest_tune_reg(sweeps[ref])[0]
    psnr_ref = sweeps[ref].metrics["psnr"][:, jr]
    for i in order:
        j = suggest_tune_reg(sweeps[i])[0]
        gap = float(np.nanmax(psnr_ref - sweeps[i].metrics["psnr"][:, j]))
        if i == ref or np.nanmin(sweeps[i].metrics["locality_psnr"][:, j]) >= floor and gap <= RANK_MARGIN_DB:
            break
    head = f"tune_rank={ranks[i]} (tune_reg={sweeps[i].tune_regs[j]:g}): "
    if i != ref:
        return i, head + (
            f"the lowest rank with every target within {RANK_MARGIN_DB:g} dB of tune_rank={ranks[ref]} "
            f"(worst gap {gap:.2f} dB) and every locality at {floor:g} dB"
        )
    return (
        i,
        head
        + f"no lower rank came within {RANK_MARGIN_DB:g} dB of it on every target with every locality at {floor:g} dB",
    )
