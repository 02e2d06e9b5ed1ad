"""The Generator interface every adapter implements.

A generator maps a latent in one of its named spaces to images in [-1, 1], NCHW.
It is frozen and in eval mode, so one sample never influences another in a batch.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ..errors import ArgumentError, LatentFitError


class Generator(nn.Module):
    """Base class of all generators.

    Subclasses set the attributes below and implement `synthesize`. The latent methods here serve
    a generator whose only space is its prior's z ~ N(0, I); others (StyleGAN) override them.
    Noise inputs are declared by `noise_shapes`.
    """

    name: str = "generator"  # id written into latent files
    sha256: str = ""  # of the weights file, "" when unknown
    resolution: int = 0  # output height == width in pixels
    img_channels: int = 3  # 3: RGB, 1: grayscale
    z_dim: int = 0  # dimension of the prior N(0, I)
    c_dim: int = 0  # number of classes (0: unconditional)
    spaces: tuple[str, ...] = ("z",)
    default_space: str = "z"
    noise_shapes: tuple[tuple[int, ...], ...] = ()  # per-sample shapes of noise inputs
    num_ws: int = 0  # StyleGAN: rows of a w+ latent (0: no w space)

    def freeze(self) -> Generator:
        """Eval mode and no parameter gradients: samples of a batch stay independent."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> Generator:
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

    def synthesize(
        self, latent: torch.Tensor, space: str, c: torch.Tensor | None = None, noise: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Images [N, img_channels, resolution, resolution] in [-1, 1] for latents [N, *latent_shape]."""
        raise NotImplementedError

    def sample(self, n: int, seed: int = 0, space: str | None = None, c: torch.Tensor | None = None) -> torch.Tensor:
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

    # --- space-level rules: what the loop, edits and sweeps need to know about a space ---------

    def gaussian_prior(self, space: str) -> bool:
        """Whether latents in `space` follow N(0, I) (z): then random starts, a sphere of radius
        sqrt(d) and isotropic statistics make sense; w and w+ need fitted statistics instead."""
        return self.check_space(space) == "z"

    def default_lr(self, space: str) -> float:
        """Adam learning rate in `space` (NVIDIA's 0.1 in w; z needs larger steps)."""
        return 0.2 if self.gaussian_prior(space) else 0.1

    def default_init_mode(self, space: str) -> str:
        """random prior samples in z; the mean (w_avg) in w / w+, as NVIDIA's projector."""
        return "random" if self.gaussian_prior(space) else "mean"

    def needs_class(self, space: str) -> bool:
        """A conditional generator needs a class in z; w and w+ latents already carry it."""
        return bool(self.c_dim) and self.gaussian_prior(space)

    @functools.lru_cache(maxsize=8)
    def latent_std(self, space: str) -> float:
        """Per-element std of prior latents in `space` (1 in z; over all classes of a conditional
        generator), for scaling the latent noise. Depends on the generator only, never a batch."""
        if self.gaussian_prior(space):
            return 1.0
        x = self.prior_samples(space)
        return float((x - x.mean(0)).pow(2).mean().sqrt())

    def latent_std_along(self, directions: torch.Tensor, space: str) -> torch.Tensor:
        """Std [K] of prior latents in `space` along each unit row of `directions` [K, *shape]:
        1 in z; in w / w+ measured on the samples latent_std uses."""
        if self.gaussian_prior(space):
            return torch.ones(len(directions), device=directions.device)
        x = self.prior_samples(space)
        return ((x - x.mean(0)).flatten(1) @ directions.flatten(1).to(x).T).std(0)

    def prior_samples(self, space: str, n: int = 1000) -> torch.Tensor:
        """n prior latents in `space` from seed 0, all classes of a conditional generator alike:
        the samples the prior's statistics are measured on."""
        with torch.no_grad():
            return self.sample(n, seed=0, space=space, c=self.cycled_labels(n))

    def class_vector(self, class_index: int | None, space: str) -> torch.Tensor | None:
        """The one-hot label [c_dim] of a class index; None if unconditional, or if no class is
        given where the latent carries it (w, w+)."""
        if not self.c_dim or (class_index is None and not self.needs_class(space)):
            return None
        about = f"generator {self.name!r} is conditional with {self.c_dim} classes"
        if class_index is None:
            raise LatentFitError(f"{about}: give --class 0..{self.c_dim - 1}")
        if not 0 <= class_index < self.c_dim:
            raise ArgumentError("class_index", class_index, f"{about}: choose 0..{self.c_dim - 1}")
        return nn.functional.one_hot(torch.tensor(class_index), self.c_dim).float().to(self.device)

    def class_labels(self, classes: list[int | None], space: str) -> torch.Tensor | None:
        """One-hot labels [N, c_dim] of per-sample class indices (None entries: no class); None if
        unconditional, or if some sample has no class where the latent carries it (w, w+)."""
        rows = [self.class_vector(k, space) for k in classes]
        if not rows or any(r is None for r in rows):
            return None
        return torch.stack(rows)

    def file_ws(self, latent: torch.Tensor, space: str) -> torch.Tensor | None:
        """A latent [*latent_shape] as NVIDIA's projected_w.npz stores it ([1, num_ws, w_dim]),
        for spaces that have that layout; None elsewhere."""
        return None

    def tunable(self) -> dict[str, torch.Tensor]:
        """The weights pivotal tuning moves (name -> tensor, detached): every parameter here;
        StyleGAN tunes its synthesis network only."""
        params = {k: v.detach() for k, v in self.named_parameters()}
        if not params:
            raise LatentFitError(f"generator {self.name!r} has no parameters to tune")
        return params

    def const_noise(self) -> list[torch.Tensor]:
        """The noise maps [*noise_shape] it renders with when given none (one per noise_shapes)."""
        return []

    def check_space(self, space: str) -> str:
        if space not in self.spaces:
            raise LatentFitError(
                f"generator {self.name!r} has no latent space {space!r}; choose one of {', '.join(self.spaces)}"
            )
        return space
