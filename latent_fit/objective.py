"""Per-sample loss terms. Every function returns one value per sample, shape [N]; the loop
sums them and never averages over the batch, so samples stay independent."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import LatentFitError

LPIPS_MAX_SIZE = 256   # LPIPS sees images resized to at most this many pixels (as the peers)


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
    raise LatentFitError(f"--reg {kind!r}: choose l2 or l1")


def noise_reg(noises: list[torch.Tensor]) -> torch.Tensor:
    """StyleGAN noise-map regularizer (squared auto-correlation at one-pixel shifts over a
    pyramid down to 8 px), computed per sample."""
    total = 0
    for n in noises:
        while True:
            total = total + (n * n.roll(1, dims=3)).mean((1, 2, 3)) ** 2 \
                          + (n * n.roll(1, dims=2)).mean((1, 2, 3)) ** 2
            if n.shape[2] <= 8:
                break
            n = F.avg_pool2d(n, 2)
    return total


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
            "copy vgg16-397923af.pth there (or set TORCH_HOME), or use --loss mse")


class LPIPS(torch.nn.Module):
    """LPIPS-VGG (the `lpips` package) per sample, on images resized to <= 256 px.
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
        if images.shape[-1] > LPIPS_MAX_SIZE:
            images = F.interpolate(images, size=LPIPS_MAX_SIZE, mode="area")
            targets = F.interpolate(targets, size=LPIPS_MAX_SIZE, mode="area")
        return self.net(images, targets).flatten(1).sum(1)


def resolve_loss(loss: str) -> tuple[bool, bool]:
    """(use_mse, use_lpips) for --loss auto|mse|lpips|mse+lpips. `auto` is mse+lpips when the
    LPIPS weights are on disk, else mse with one warning."""
    if loss == "auto":
        if lpips_available():
            return True, True
        warnings.warn(f"LPIPS weights not found at {vgg_weights_path()}: using the pixel loss only "
                      "(the metrics record this). Put vgg16-397923af.pth there to add LPIPS.",
                      stacklevel=3)
        return True, False
    table = {"mse": (True, False), "lpips": (False, True), "mse+lpips": (True, True)}
    if loss not in table:
        raise LatentFitError(f"--loss {loss!r}: choose auto, mse, lpips or mse+lpips")
    return table[loss]
