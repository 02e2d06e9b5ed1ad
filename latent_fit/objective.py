"""The objective: named, weighted per-sample terms. Every term returns one value per sample,
shape [N]; the loop sums them and never averages over the batch, so samples stay independent.
The projection loop, pivotal tuning, the final metrics and `bench` all use Objectives; adding a
term is a function here, an entry in `Objective.build`, and its weight named in `Config`."""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from . import lowrank
from .errors import ArgumentError, LatentFitError

LPIPS_MAX_SIZE = 256  # LPIPS sees images resized to at most this many pixels (as the peers)


def pixel_mse(images: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error per sample over pixels and channels; with a mask [N,1,H,W] in [0, 1],
    the mean over the masked area."""
    d = (images - targets) ** 2
    if mask is None:
        return d.flatten(1).mean(1)
    m = mask.expand_as(d)
    return (d * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1e-8)


def psnr(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


def latent_reg(dz: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """Euclidean norm term before its weight w_r: the SUM over the latent's elements of dz²
    ('l2') or |dz| ('l1')."""
    if kind == "l2":
        return dz.pow(2).flatten(1).sum(1)
    if kind == "l1":
        return dz.abs().flatten(1).sum(1)
    raise ArgumentError("reg", kind, "choose l2 or l1")


def noise_reg(noises: list[torch.Tensor]) -> torch.Tensor:
    """StyleGAN noise-map regularizer (squared auto-correlation at one-pixel shifts over a
    pyramid down to 8 px), computed per sample."""
    total = 0
    for n in noises:
        while True:
            total = total + (n * n.roll(1, dims=3)).mean((1, 2, 3)) ** 2 + (n * n.roll(1, dims=2)).mean((1, 2, 3)) ** 2
            if n.shape[2] <= 8:
                break
            n = F.avg_pool2d(n, 2)
    return total


def weight_sq_norm(delta: dict) -> torch.Tensor:
    """Σ Δθ² over every tuned weight, per target [N] (delta: name -> [N, *parameter shape], or a
    low-rank pair, lowrank.sq_norm)."""
    return sum(lowrank.sq_norm(d) for d in delta.values())


def locality_mse(samples: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
    """Mean over each target's K prior samples [N, K, C, H, W] of their MSE to the original
    generator's images of them [N * K, C, H, W], per target [N]."""
    n, k = samples.shape[:2]
    return pixel_mse(samples.flatten(0, 1), originals).view(n, k).mean(1)


def vgg_weights_path() -> Path:
    """Where torchvision keeps the VGG16 ImageNet weights that LPIPS-VGG needs."""
    return Path(torch.hub.get_dir()) / "checkpoints" / "vgg16-397923af.pth"


def lpips_available() -> bool:
    return vgg_weights_path().is_file()


def require_lpips() -> None:
    """Fail fast, before any work, when LPIPS is asked for and cannot run offline."""
    if not lpips_available():
        raise LatentFitError(
            f"LPIPS needs the VGG16 ImageNet weights at {vgg_weights_path()} and this machine has none; "
            "copy vgg16-397923af.pth there (or set TORCH_HOME), or use --loss mse"
        )


class LPIPS(torch.nn.Module):
    """LPIPS-VGG (the `lpips` package) per sample, on images resized to <= 256 px (grayscale
    images as RGB with three equal channels).
    Refuses to start when the backbone weights are not on disk (nothing is downloaded)."""

    def __init__(self):
        super().__init__()
        require_lpips()
        import lpips

        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            self.net = lpips.LPIPS(net="vgg", verbose=False)
        self.net.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:  # grayscale: VGG sees the gray repeated in R, G and B
            images, targets = images.expand(-1, 3, -1, -1), targets.expand(-1, 3, -1, -1)
        if images.shape[-1] > LPIPS_MAX_SIZE:
            images = F.interpolate(images, size=LPIPS_MAX_SIZE, mode="area")
            targets = F.interpolate(targets, size=LPIPS_MAX_SIZE, mode="area")
        return self.net(images, targets).flatten(1).sum(1)


def resolve_loss(loss: str) -> tuple[bool, bool]:
    """(use_mse, use_lpips) for loss auto|mse|lpips|mse+lpips. `auto` is mse+lpips when the
    LPIPS weights are on disk, else mse with one warning."""
    if loss == "auto":
        if lpips_available():
            return True, True
        warnings.warn(
            f"LPIPS weights not found at {vgg_weights_path()}: using the pixel loss only "
            "(the metrics record this). Put vgg16-397923af.pth there to add LPIPS.",
            stacklevel=3,
        )
        return True, False
    table = {"mse": (True, False), "lpips": (False, True), "mse+lpips": (True, True)}
    if loss not in table:
        raise ArgumentError("loss", loss, "choose auto, mse, lpips or mse+lpips")
    return table[loss]


@dataclass
class Inputs:
    """What the terms look at, one row per sample."""

    images: torch.Tensor  # [N, C, H, W] G(latent)
    targets: torch.Tensor  # [N, C, H, W]
    dz: torch.Tensor | None = None  # [N, *latent_shape] latent - latent_init
    wr: torch.Tensor | None = None  # [N] per-sample w_r
    mask: torch.Tensor | None = None  # [N, 1, H, W] in [0, 1]: where the reconstruction counts
    noise: list[torch.Tensor] = field(default_factory=list)  # StyleGAN noise maps being optimized
    # pivotal tuning (tuning.tune): the weight changes, their per-sample weights, and the tuned
    # generator's images of fixed prior samples [N, K, C, H, W] beside the original's [N * K, C, H, W]
    # (locality "samples") or the plain layers' input moments (locality "layers", lowrank.output_change)
    delta: dict[str, torch.Tensor] = field(default_factory=dict)
    tune_reg: torch.Tensor | None = None
    tune_locality: torch.Tensor | None = None
    samples: torch.Tensor | None = None
    originals: torch.Tensor | None = None
    moments: dict | None = None

    def composite(self) -> torch.Tensor:
        """The images inside the mask, the targets outside (what LPIPS compares)."""
        return self.images if self.mask is None else self.images * self.mask + self.targets * (1 - self.mask)


Term = Callable[[Inputs], torch.Tensor]


class Objective:
    """A weighted sum of named per-sample terms: total = sum of weight * term(inputs), shape [N]."""

    def __init__(self, terms: dict[str, tuple[float, Term]]):
        self.terms = terms

    @classmethod
    def build(
        cls,
        loss: str = "auto",
        *,
        lpips_weight: float = 1.0,
        reg: str | None = "l2",
        noise_weight: float = 0.0,
        tuning: bool = False,
        locality: str | None = None,
        device: torch.device | str = "cpu",
    ) -> Objective:
        """Pixel MSE and/or LPIPS (`loss`); w_r * reg(dz) (reg None: left out); with
        noise_weight > 0 the StyleGAN noise-map regularizer; with `tuning` the weight L2
        tune_reg * ΣΔθ², and with `locality` tune_locality times locality_mse of rendered prior
        samples ("samples") or its first-order estimate from the layers' moments ("layers",
        lowrank.output_change)."""
        use_mse, use_lpips = resolve_loss(loss)
        terms: dict[str, tuple[float, Term]] = {}
        if use_mse:
            terms["mse"] = (1.0, lambda x: pixel_mse(x.images, x.targets, x.mask))
        if use_lpips:
            net = LPIPS().to(device)
            terms["lpips"] = (lpips_weight, lambda x: net(x.composite(), x.targets))
        if reg is not None:
            latent_reg(torch.zeros(1, 1), reg)  # validates `reg`
            terms[f"wr*{reg}"] = (1.0, lambda x: x.wr * latent_reg(x.dz, reg))
        if noise_weight > 0:
            terms["noise"] = (noise_weight, lambda x: noise_reg(x.noise))
        if tuning:
            terms["tune_reg*l2"] = (1.0, lambda x: x.tune_reg * weight_sq_norm(x.delta))
        if locality == "samples":
            terms["locality"] = (1.0, lambda x: x.tune_locality * locality_mse(x.samples, x.originals))
        elif locality == "layers":
            terms["locality"] = (1.0, lambda x: x.tune_locality * lowrank.output_change(x.delta, x.moments))
        elif locality is not None:
            raise ValueError(f"locality {locality!r}: samples, layers or None")
        return cls(terms)

    @classmethod
    def from_config(
        cls,
        cfg,
        *,
        noise: bool = False,
        tuning: bool = False,
        locality: str | None = None,
        device: torch.device | str = "cpu",
    ) -> Objective:
        """The Objective a Config names: its loss and LPIPS weight, its w_r term (not while
        tuning, which holds the latent), and the noise, weight L2 and locality terms asked for."""
        return cls.build(
            cfg.loss,
            lpips_weight=cfg.lpips_weight,
            reg=None if tuning else cfg.reg,
            noise_weight=cfg.noise_weight if noise else 0.0,
            tuning=tuning,
            locality=locality,
            device=device,
        )

    @property
    def names(self) -> list[str]:
        return list(self.terms)

    def __call__(self, x: Inputs) -> torch.Tensor:
        total = 0
        for weight, term in self.terms.values():
            total = total + weight * term(x)
        return total

    def metrics(self, x: Inputs) -> dict[str, torch.Tensor]:
        """Reconstruction measures per sample: mse and psnr always, lpips when it is a term (else nan)."""
        mse = pixel_mse(x.images, x.targets, x.mask)
        lp = self.terms["lpips"][1](x) if "lpips" in self.terms else torch.full_like(mse, math.nan)
        return {"mse": mse, "psnr": psnr(mse), "lpips": lp}
