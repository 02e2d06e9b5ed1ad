"""Config: every constant of the optimization, with its default, built once at the edge (the CLI
or an API caller) and passed whole; Tuning, the settings of pivotal tuning. The policy lives here
too: presets (made with `dataclasses.replace`), which preset a run starts from, the edit and sweep
defaults in each unit system, and which options exclude which, so the API and the CLI agree."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from .errors import ArgumentError, LatentFitError

CHOICES = {
    "reg": ("l2", "l1"),
    "init_mode": (None, "random", "mean"),
    "loss": ("auto", "mse", "lpips", "mse+lpips"),
    "wr_units": ("raw", "relative"),
}


@dataclass(frozen=True)
class Config:
    """See the README for what each field does; per-sample w_r is a tensor argument of the loop."""

    space: str | None = None  # latent space; None: the generator's default (z for DCGAN, w for StyleGAN)
    steps: int = 1000  # optimization steps
    lr: float | None = None  # Adam learning rate; None: the space's default (Generator.default_lr)
    lr_rampup: float = 0.05  # fraction of steps of linear warm-up
    lr_rampdown: float = 0.25  # fraction of steps of cosine ramp-down at the end
    latent_noise: float = 0.05  # initial latent noise, times the latent's per-element std
    latent_noise_ramp: float = 0.75  # fraction of steps over which that noise decays to 0
    wr: float = 0.0  # weight of the Euclidean norm term wr * ||z - z0||^2 (a sum)
    wr_units: str = "raw"  # raw: wr as given; relative: wr times the generator's local
    # ||J(z0)||_F^2 / (d P) at each start (jacobian.wr_factor)
    reg: str = "l2"  # l2: sum of squares; l1: sum of absolute values (sparser dz)
    loss: str = "auto"  # auto | mse | lpips | mse+lpips (auto: mse+lpips if LPIPS is on disk)
    lpips_weight: float = 1.0  # weight of LPIPS next to pixel MSE
    init_mode: str | None = None  # random | mean; None: the space's default (Generator.default_init_mode)
    starts: int = 16  # candidates per target: random starts, or a given start and
    # starts - 1 perturbations of it when spread > 0
    spread: float = 0.0  # perturbations of a given start (init, encoder), in latent stds
    prune_every: float = 0.15  # fraction of steps between successive-halving rungs
    prune_factor: int = 2  # each rung keeps 1/prune_factor of each target's candidates
    sphere: bool = False  # Gaussian prior only: keep ||z|| = sqrt(dim), its typical radius
    optimize_noise: bool = True  # StyleGAN: optimize the noise maps too
    noise_weight: float = 1e5  # StyleGAN noise-map regularization weight
    lbfgs: float = 0.0  # fraction of the steps, the last ones, that are L-BFGS steps of the latent
    # (per-target history and line search) instead of Adam steps; noise maps stay where Adam left them
    patience: int = 100  # early stop: steps without a `tol` relative improvement
    tol: float = 1e-3
    check_every: int = 25  # steps between reads of the loss (the only host syncs)
    exact: bool = False  # CPU: convolutions whose per-sample rounding does not depend on
    # the batch size (bit-identical DCGAN latents; slower at large batches)
    save_video: bool = False  # keep a frame of every check (for <stem>.mp4)
    jacobian_metrics: bool = True  # finish: wr_factor (raw units) and jacobian_norm of every target,
    # 64 VJPs each (bench turns it off to time the loop alone)
    seed: int = 0

    def validate(self) -> Config:
        for name in ("steps", "starts", "check_every"):
            if getattr(self, name) < 1:
                raise ArgumentError(name, getattr(self, name), "must be >= 1")
        if self.prune_factor < 2:
            raise ArgumentError("prune_factor", self.prune_factor, "must be >= 2")
        check_weights(self.wr, "wr")
        if not 0 <= self.lbfgs <= 1:
            raise ArgumentError("lbfgs", self.lbfgs, "a fraction of the steps: 0 to 1")
        if self.spread < 0:
            raise ArgumentError("spread", self.spread, "must be >= 0")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ArgumentError(name, getattr(self, name), "choose " + " or ".join(str(a) for a in allowed if a))
        return self

    def replace(self, **changes) -> Config:
        """A copy with `changes` (Config fields; None values are left out), validated."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None}).validate()


PROJECTION = Config()  # from random starts (z) or the mean (w, w+): no encoder
# From a learned encoder's guess E(x): one start, no latent noise, 80 Adam steps at NVIDIA's lr and
# 320 L-BFGS steps; a target stops when its loss fell less than 1% in 50 steps (measured on
# held-out targets: perturbed extra starts never won, latent noise cost dB; docs/how-it-works.md).
ENCODED = dataclasses.replace(
    PROJECTION, steps=400, lbfgs=0.8, starts=1, spread=0.5, lr=0.1, latent_noise=0.0, patience=50, tol=1e-2
)
# Edits start from a projected latent: one start, no latent noise (it would move z0 before the
# request does), the noise maps held fixed (else they, not the latent, would paint the request),
# and fewer steps. w_r = 1e-2 balances the request against staying near z0 for the bundled DCGAN's
# 100-element z; its useful range is about 1e-3 (follow the request) to 1e-1 (subtle).
EDIT = dataclasses.replace(PROJECTION, steps=300, starts=1, latent_noise=0.0, optimize_noise=False, wr=1e-2)
# Edits' w_r in relative units: 2 is the raw 1e-2 above at the bundled DCGAN's median wr_factor
# (0.0053), and the same trade-off on any other generator (README, "Choosing w_r").
EDIT_WR = {"raw": EDIT.wr, "relative": 2.0}
# `sweep`'s default w_r grid in each unit system, and `sweep --tune-reg`'s.
SWEEP_WRS = {"raw": (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0), "relative": (0.0, 1e-2, 1e-1, 1.0, 10.0, 100.0)}
TUNE_SWEEP_REGS = (0.0, 1e-4, 1e-3, 1e-2)


def check_weights(values, arg: str = "wr") -> np.ndarray:
    """The values of a weight (w_r, tune_reg; a number, a grid or per-sample [N]), named `arg`,
    as float64 [W]; one ArgumentError line unless one or more, finite and >= 0."""
    w = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64).reshape(-1)
    if len(w) == 0 or not np.isfinite(w).all() or (w < 0).any():
        raise ArgumentError(arg, ",".join(f"{v:g}" for v in w[:8]), f"give one or more finite values, {arg} >= 0")
    return w


def projection_config(config: Config | None = None, *, encoded: bool = False, **changes) -> Config:
    """A projection's Config: `config`, else the preset of its start (ENCODED from a learned
    encoder's guess, PROJECTION otherwise), with `changes` (Config fields; None: left as is)."""
    return (config or (ENCODED if encoded else PROJECTION)).replace(**changes)


def edit_config(config: Config | None = None, **changes) -> Config:
    """An edit's Config: `config`, else EDIT with the edit w_r of the units asked for (EDIT_WR),
    with `changes`."""
    if config is None:
        config = EDIT.replace(wr=EDIT_WR[changes.get("wr_units") or EDIT.wr_units])
    return config.replace(**changes)


def sweep_config(config: Config | None = None, *, init: bool = False, encoded: bool = False, **changes) -> Config:
    """A sweep's Config: an edit's with init (starts given), else a projection's."""
    return edit_config(config, **changes) if init else projection_config(config, encoded=encoded, **changes)


def tune_sweep_wr(wrs, init=None, mask=None) -> float | None:
    """The pivots' w_r of a tune_reg sweep: it varies tune_reg, so w_r is one value (or the
    default); it projects its targets, so it takes no init or mask."""
    if init is not None or mask is not None:
        raise LatentFitError("--tune-reg sweeps projections of TARGETS: it takes no --init or --mask")
    if wrs is not None and len(wrs) > 1:
        raise LatentFitError(
            "--wr and --tune-reg cannot both be grids: a sweep varies one weight; give --wr "
            "one value (the pivot's w_r) with --tune-reg"
        )
    return None if wrs is None else float(wrs[0])


# Tuning's defaults by the locality term it uses (tuning.locality_term): rendered prior samples, or,
# where every tuned weight belongs to a plain layer and the change is low rank (the bundled DCGAN),
# the layers' own output change, which already weighs Δθ by what each layer sees. On plain layers
# rank 20 matched or beat full tuning on 16 held-out photos in 23x smaller files at a sixth of its
# time (docs/real-photos.md, "Low-rank tuning"); elsewhere low rank is unmeasured: full.
TUNING_DEFAULTS = {
    "samples": {"tune_rank": "full", "tune_reg": 1e-3, "tune_locality": 2.0},
    "layers": {"tune_rank": 20, "tune_reg": 0.0, "tune_locality": 1.0},
}


@dataclass(frozen=True)
class Tuning:
    """The settings of pivotal tuning (`project --tune`, tuning.tune): each field is named as
    tune()'s argument, the CLI's --tune-* flag and the record key; loss, LPIPS weight, seed and
    exact come from the Config. tune_reg and tune_locality may be [N] tensors (sweeps' grids).
    Validated when made."""

    tune_steps: int = 300  # Adam steps on the weights
    tune_lr: float = 3e-4  # their learning rate
    tune_rank: int | str | None = None  # rank R of each weight's change Δθ = A·B (lowrank), or "full"
    tune_reg: float | None = None  # weight of ΣΔθ², the weight-space twin of w_r * ||Δz||²
    tune_locality: float | None = None  # weight of the locality term (the rest of G keeps its images)
    # (None: TUNING_DEFAULTS of the generator's locality term, filled in by tuning.resolved)

    def __post_init__(self):
        for name, ok, need in (("tune_steps", self.tune_steps >= 1, ">= 1"), ("tune_lr", self.tune_lr > 0, "> 0")):
            if not ok:
                raise ArgumentError(name, getattr(self, name), f"tuning needs {name} {need}")
        for name in ("tune_reg", "tune_locality"):
            if getattr(self, name) is not None:
                check_weights(getattr(self, name), name)
        if self.tune_rank not in ("full", None) and not (type(self.tune_rank) is int and self.tune_rank >= 1):
            raise ArgumentError("tune_rank", self.tune_rank, 'tuning needs tune_rank an integer >= 1 or "full"')

    def replace(self, **changes) -> Tuning:
        """A copy with `changes` (None values are left out), validated."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @staticmethod
    def record(tuning: Tuning | None) -> dict:
        """The record entries of a target: these settings, or all None without tuning (so a
        rerun with or without --tune differs from the other, and older records match the latter)."""
        fields = [f.name for f in dataclasses.fields(Tuning)]
        return {"tune": None if tuning is None else True} | {
            k: None if tuning is None else getattr(tuning, k) for k in fields
        }
