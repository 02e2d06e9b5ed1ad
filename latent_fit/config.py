"""Config: every constant of the optimization, with its default, built once at the edge (the CLI
or an API caller) and passed whole. Presets are made with `dataclasses.replace`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import ArgumentError

CHOICES = {"reg": ("l2", "l1"), "init_mode": (None, "random", "mean"),
           "loss": ("auto", "mse", "lpips", "mse+lpips"), "wr_units": ("raw", "relative")}


@dataclass(frozen=True)
class Config:
    """See the README for what each field does; per-sample w_r is a tensor argument of the loop."""

    space: str | None = None          # latent space; None: the generator's default (z for DCGAN, w for StyleGAN)
    steps: int = 1000                 # optimization steps
    lr: float | None = None           # Adam learning rate; None: the space's default (Generator.default_lr)
    lr_rampup: float = 0.05           # fraction of steps of linear warm-up
    lr_rampdown: float = 0.25         # fraction of steps of cosine ramp-down at the end
    latent_noise: float = 0.05        # initial latent noise, times the latent's per-element std
    latent_noise_ramp: float = 0.75   # fraction of steps over which that noise decays to 0
    wr: float = 0.0                   # weight of the Euclidean norm term wr * ||z - z0||^2 (a sum)
    wr_units: str = "raw"             # raw: wr as given; relative: wr times the generator's local
                                      # ||J(z0)||_F^2 / (d P) at each start (jacobian.wr_factor)
    reg: str = "l2"                   # l2: sum of squares; l1: sum of absolute values (sparser dz)
    loss: str = "auto"                # auto | mse | lpips | mse+lpips (auto: mse+lpips if LPIPS is on disk)
    lpips_weight: float = 1.0         # weight of LPIPS next to pixel MSE
    init_mode: str | None = None      # random | mean; None: the space's default (Generator.default_init_mode)
    starts: int = 16                  # candidates per target: random starts, or a given start and
                                      # starts - 1 perturbations of it when spread > 0
    spread: float = 0.0               # perturbations of a given start (init, encoder), in latent stds
    prune_every: float = 0.15         # fraction of steps between successive-halving rungs
    prune_factor: int = 2             # each rung keeps 1/prune_factor of each target's candidates
    sphere: bool = False              # Gaussian prior only: keep ||z|| = sqrt(dim), its typical radius
    optimize_noise: bool = True       # StyleGAN: optimize the noise maps too
    noise_weight: float = 1e5         # StyleGAN noise-map regularization weight
    patience: int = 100               # early stop: steps without a `tol` relative improvement
    tol: float = 1e-3
    check_every: int = 25             # steps between reads of the loss (the only host syncs)
    exact: bool = False               # CPU: convolutions whose per-sample rounding does not depend on
                                      # the batch size (bit-identical DCGAN latents; slower at large batches)
    save_video: bool = False          # keep a frame of every check (for <stem>.mp4)
    jacobian_metrics: bool = True     # finish: wr_factor (raw units) and jacobian_norm of every target,
                                      # 64 VJPs each (bench turns it off to time the loop alone)
    seed: int = 0

    def validate(self) -> "Config":
        for name in ("steps", "starts", "check_every"):
            if getattr(self, name) < 1:
                raise ArgumentError(name, getattr(self, name), "must be >= 1")
        if self.prune_factor < 2:
            raise ArgumentError("prune_factor", self.prune_factor, "must be >= 2")
        for name in ("wr", "spread"):
            if getattr(self, name) < 0:
                raise ArgumentError(name, getattr(self, name), "must be >= 0")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ArgumentError(name, getattr(self, name),
                                    "choose " + " or ".join(str(a) for a in allowed if a))
        return self

    def replace(self, **changes) -> "Config":
        """A copy with `changes` (Config fields; None values are left out), validated."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None}).validate()


PROJECTION = Config()   # from random starts (z) or the mean (w, w+): no encoder
# From a learned encoder's guess E(x): one start, NVIDIA's lr, no latent noise and no early stop
# (measured on held-out targets: perturbed extra starts never won, noise and early stop cost dB).
ENCODED = dataclasses.replace(PROJECTION, steps=1000, starts=1, spread=0.5, lr=0.1, latent_noise=0.0,
                              patience=10 ** 9)
# Edits start from a projected latent: one start, no latent noise (it would move z0 before the
# request does), the noise maps held fixed (else they, not the latent, would paint the request),
# and fewer steps. w_r = 1e-2 balances the request against staying near z0 for the bundled DCGAN's
# 100-element z; its useful range is about 1e-3 (follow the request) to 1e-1 (subtle).
EDIT = dataclasses.replace(PROJECTION, steps=300, starts=1, latent_noise=0.0, optimize_noise=False, wr=1e-2)
# Edits' w_r in relative units: 2 is the raw 1e-2 above at the bundled DCGAN's median wr_factor
# (0.0053), and the same trade-off on any other generator (README, "Choosing w_r").
EDIT_WR = {"raw": EDIT.wr, "relative": 2.0}
