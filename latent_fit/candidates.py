"""The pool of candidates the loop optimizes, and the row-wise Adam that moves them.

Row r is one candidate (one start) of target `owner[r]`. Successive halving and early stopping drop
rows mid-run, so every per-row tensor, the optimizer state included, is indexed together.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch


def _take(value, rows: torch.Tensor):
    if value is None:
        return None
    if isinstance(value, list):
        return [v[rows] for v in value]
    return value[rows]


@dataclass
class Candidates:
    """Per-row tensors; `select(rows)` keeps those rows of every one of them."""

    latent: torch.Tensor  # [R, *latent_shape] being optimized
    latent_init: torch.Tensor  # [R, *latent_shape] its start z0
    noise: list[torch.Tensor]  # StyleGAN noise maps being optimized, [R, *shape] each
    owner: torch.Tensor  # [R] index of the target
    keys: torch.Tensor  # [R] random-number keys (seed, name, start)
    targets: torch.Tensor  # [R, C, H, W]
    wr: torch.Tensor  # [R] w_r the loop uses (raw: as given; relative: times wr_factor)
    wr_factor: torch.Tensor | None  # [R] jacobian.wr_factor at latent_init (relative units only)
    mask: torch.Tensor | None  # [R, 1, H, W]
    c: torch.Tensor | None  # [R, c_dim] class labels
    best: torch.Tensor  # [R] lowest loss seen since the last rung (early stop)
    since: torch.Tensor  # [R] steps since that loss improved

    def __len__(self) -> int:
        return self.latent.shape[0]

    @property
    def variables(self) -> list[torch.Tensor]:
        """What the optimizer moves: the latent, then the noise maps."""
        return [self.latent, *self.noise]

    def set_variables(self, values: list[torch.Tensor]) -> None:
        self.latent, self.noise = values[0], list(values[1:])

    def select(self, rows: torch.Tensor) -> Candidates:
        return Candidates(**{f.name: _take(getattr(self, f.name), rows) for f in dataclasses.fields(self)})


class RowAdam:
    """Adam with per-row state, so rows can be dropped between steps (`select`).

    Hand-written because torch.optim.Adam keeps its moments per parameter tensor: it cannot drop
    the rows of pruned or stopped candidates. Each row's update depends on that row alone.
    """

    def __init__(self, variables: list[torch.Tensor], betas=(0.9, 0.999), eps: float = 1e-8):
        self.m = [torch.zeros_like(v) for v in variables]
        self.v = [torch.zeros_like(v) for v in variables]
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.t = 0

    @torch.no_grad()
    def step(self, variables: list[torch.Tensor], grads: list[torch.Tensor], lr: float) -> list[torch.Tensor]:
        """The variables after one step of size `lr` (new tensors, detached)."""
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        out = []
        for x, g, m, v in zip(variables, grads, self.m, self.v):
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            upd = (m / (1 - b1**self.t)) / ((v / (1 - b2**self.t)).sqrt() + self.eps)
            out.append(x.detach() - lr * upd)
        return out

    def select(self, rows: torch.Tensor) -> None:
        self.m = [m[rows] for m in self.m]
        self.v = [v[rows] for v in self.v]


class RowLBFGS:
    """L-BFGS on the latent with per-row history and per-row step acceptance.

    Each call of `update` takes the loss and gradient at every row's trial point: a row keeps it
    when the loss fell enough (Armijo), else stays and retries a quarter of the step. Rows never
    wait for each other, and each row's update depends on that row alone.
    """

    def __init__(self, x: torch.Tensor, first_step: float, history: int = 40):
        r, d = x.shape[0], x[0].numel()
        self.shape, self.first_step = x.shape[1:], first_step
        self.s = x.new_zeros(r, history, d)  # the last accepted steps, oldest first
        self.y = x.new_zeros(r, history, d)  # their changes of gradient
        self.rho = x.new_zeros(r, history)  # 1 / (s·y); 0 for an empty slot
        self.f = torch.full((r,), math.inf, device=x.device)  # the loss at the accepted point
        self.g = x.new_zeros(r, d)  # its gradient
        self.p = x.new_zeros(r, d)  # the search direction
        self.alpha = x.new_ones(r)  # the fraction of it the trial takes

    def trial(self, x: torch.Tensor) -> torch.Tensor:
        """The next point to evaluate from the accepted points x."""
        return x + (self.alpha[:, None] * self.p).view_as(x)

    @torch.no_grad()
    def update(self, x: torch.Tensor, trial: torch.Tensor, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The accepted points after the trial's loss f [R] and gradient g; then the next direction."""
        g = g.flatten(1)
        ok = f <= self.f + 1e-4 * self.alpha * (self.g * self.p).sum(1)
        s, y = (trial - x).flatten(1), g - self.g
        sy = (s * y).sum(1)
        keep = (ok & (sy > 0) & torch.isfinite(self.f))[:, None]
        self.s = torch.where(keep[:, :, None], torch.cat([self.s[:, 1:], s[:, None]], 1), self.s)
        self.y = torch.where(keep[:, :, None], torch.cat([self.y[:, 1:], y[:, None]], 1), self.y)
        self.rho = torch.where(keep, torch.cat([self.rho[:, 1:], 1 / sy.clamp_min(1e-30)[:, None]], 1), self.rho)
        self.f, self.g = torch.where(ok, f, self.f), torch.where(ok[:, None], g, self.g)
        self.alpha = torch.where(ok, torch.ones_like(self.alpha), self.alpha / 4)
        self.p = torch.where(ok[:, None], self._direction(), self.p)
        return torch.where(ok.view(-1, *[1] * len(self.shape)), trial, x)

    def _direction(self) -> torch.Tensor:
        """-H g by the two-loop recursion; H0 = (s·y / y·y) I of the newest pair, else a step of
        length first_step along -g."""
        q, a = self.g.clone(), []
        for j in reversed(range(self.s.shape[1])):
            a.append(self.rho[:, j] * (self.s[:, j] * q).sum(1))
            q = q - a[-1][:, None] * self.y[:, j]
        yy = self.y[:, -1].pow(2).sum(1)
        scale = torch.where(
            self.rho[:, -1] > 0,
            1 / (self.rho[:, -1] * yy).clamp_min(1e-30),
            self.first_step / self.g.norm(dim=1).clamp_min(1e-30),
        )
        q = q * scale[:, None]
        for j, aj in zip(range(self.s.shape[1]), reversed(a)):
            q = q + self.s[:, j] * (aj - self.rho[:, j] * (self.y[:, j] * q).sum(1))[:, None]
        return -q

    def select(self, rows: torch.Tensor) -> None:
        for name in ("s", "y", "rho", "f", "g", "p", "alpha"):
            setattr(self, name, getattr(self, name)[rows])
