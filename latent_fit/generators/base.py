"""The Generator interface every adapter implements.

A generator maps a latent in one of its named spaces to images in [-1, 1], NCHW.
It is frozen and in eval mode, so one sample never influences another in a batch.
"""

from __future__ import annotations

import torch
from torch import nn


class Generator(nn.Module):
    """Base class of all generators.

    Subclasses set the attributes below and implement `synthesize`. The latent methods here serve
    a generator whose only space is its prior's z ~ N(0, I); others (StyleGAN) override them.
    Noise inputs are declared by `noise_shapes`.
    """

    name: str = "generator"      # id written into latent files
    sha256: str = ""             # of the weights file, "" when unknown
    resolution: int = 0          # output height == width in pixels
    z_dim: int = 0               # dimension of the prior N(0, I)
    c_dim: int = 0               # number of classes (0: unconditional)
    spaces: tuple[str, ...] = ("z",)
    default_space: str = "z"
    noise_shapes: tuple[tuple[int, ...], ...] = ()   # per-sample shapes of noise inputs

    def freeze(self) -> "Generator":
        """Eval mode and no parameter gradients: samples of a batch stay independent."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> "Generator":
        # A generator never leaves eval mode (BatchNorm must use running statistics).
        return super().train(False)

    @property
    def device(self) -> torch.device:
        for t in list(self.parameters()) + list(self.buffers()):
            return t.device
        return torch.device("cpu")

    def latent_shape(self, space: str) -> tuple[int, ...]:
        """Shape of one latent in `space` (without the batch dimension)."""
        self.check_space(space)
        return (self.z_dim,)

    def from_z(self, z: torch.Tensor, space: str, c: torch.Tensor | None = None) -> torch.Tensor:
        """Latents in `space` for prior samples z [N, z_dim]."""
        self.check_space(space)
        return z

    def mean_latent(self, space: str, c: torch.Tensor | None = None) -> torch.Tensor:
        """The central start in `space`, shape [1, *latent_shape] (zeros in z, w_avg in w)."""
        self.check_space(space)
        return torch.zeros(1, self.z_dim, device=self.device)

    def synthesize(self, latent: torch.Tensor, space: str, c: torch.Tensor | None = None,
                   noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Images [N, 3, resolution, resolution] in [-1, 1] for latents [N, *latent_shape]."""
        raise NotImplementedError

    def sample(self, n: int, seed: int = 0, space: str | None = None,
               c: torch.Tensor | None = None) -> torch.Tensor:
        """n latents in `space` from the prior, reproducible from `seed` on any device."""
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.z_dim, generator=gen).to(self.device)
        return self.from_z(z, space or self.default_space, c)

    def cycled_labels(self, n: int) -> torch.Tensor | None:
        """One-hot labels [n, c_dim] that cycle through every class (None if unconditional):
        for statistics of the prior over all classes alike."""
        if not self.c_dim:
            return None
        return torch.eye(self.c_dim, device=self.device)[torch.arange(n) % self.c_dim]

    def check_space(self, space: str) -> str:
        from ..errors import LatentFitError
        if space not in self.spaces:
            raise LatentFitError(
                f"generator {self.name!r} has no latent space {space!r}; choose one of {', '.join(self.spaces)}")
        return space
