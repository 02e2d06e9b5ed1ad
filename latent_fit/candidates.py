"""The pool of candidates the loop optimizes, and the row-wise Adam that moves them.

Row r is one candidate (one start) of target `owner[r]`. Successive halving and early stopping drop
rows mid-run, so every per-row tensor, the optimizer state included, is indexed together.
"""

from __future__ import annotations

import dataclasses
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
