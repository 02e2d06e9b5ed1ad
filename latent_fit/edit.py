"""Editing in latent space: masked (painted) edits, directions, interpolation.

Pure tensors in, tensors out; the file side lives in runs/edit.py. Latents are [N, *latent_shape]
in one space of the generator, images [N, C, H, W] in [-1, 1] (C = G.img_channels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .config import Config, edit_config
from .errors import ArgumentError, LatentFitError
from .generators.base import Generator
from .objective import pixel_mse
from .optimize import Result, given_noise, project

PCA_SAMPLES = 2000
PCA_FEATURE_SIZE = 16  # in z, PCA runs on the generated images downsampled to this many pixels


@dataclass
class EditResult(Result):
    """A Result with the images before the edit, G(latent_init)."""

    before: torch.Tensor | None = field(default=None, repr=False)


def render(
    G: Generator,
    latents: torch.Tensor,
    space: str | None = None,
    c: torch.Tensor | None = None,
    batch_size: int = 64,
    noise: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """G(latents) in [-1, 1], without gradients, in chunks of batch_size. noise: StyleGAN noise
    maps [N, *noise_shape] per noise input, one row per latent (None: the constant maps)."""
    space = G.check_space(space or G.default_space)
    latents = latents.to(G.device, torch.float32)
    noise = given_noise(G, noise, latents.shape[0])
    out = []
    with torch.no_grad():
        for i in range(0, latents.shape[0], batch_size):
            cc = None if c is None else c[i : i + batch_size].to(G.device)
            nz = None if noise is None else [m[i : i + batch_size] for m in noise]
            out.append(G.synthesize(latents[i : i + batch_size], space, cc, nz).clamp(-1, 1))
    if not out:
        return torch.empty(0, G.img_channels, G.resolution, G.resolution, device=G.device)
    return torch.cat(out)


def edit_metrics(
    before: torch.Tensor, after: torch.Tensor, request: torch.Tensor, mask: torch.Tensor | None
) -> dict[str, np.ndarray]:
    """Per sample: the error against the request inside the mask before and after the edit, and
    the change outside the mask (NaN where the mask covers everything). Pixel MSE, [-1, 1] scale."""
    inside = mask if mask is not None else torch.ones_like(before[:, :1])
    outside = 1 - inside
    change = pixel_mse(after, before, outside)
    change[outside.flatten(1).sum(1) == 0] = math.nan
    return {
        "mask_mse_before": pixel_mse(before, request, inside).cpu().numpy(),
        "mask_mse_after": pixel_mse(after, request, inside).cpu().numpy(),
        "outside_change": change.cpu().numpy(),
    }


def edit(
    G: Generator,
    latents: torch.Tensor,
    request: torch.Tensor,
    mask: torch.Tensor | None = None,
    names: list[str] | None = None,
    *,
    config: Config | None = None,
    c: torch.Tensor | None = None,
    wr: float | torch.Tensor | None = None,
    noise: list[torch.Tensor] | None = None,
    progress=None,
    **changes,
) -> EditResult:
    """Edit latents [N, *shape] so that G matches `request` [N, C, H, W] where `mask`
    [N, 1, H, W] (soft, in [0, 1]; None: the whole image) is set, while
    wr * ||z - z0||^2 (a sum over the latent's elements) keeps z near its start z0 = latents.
    noise: the latents' StyleGAN noise maps (as their projection's Result.noise): the "before"
    images and the edit render with them (held fixed unless config.optimize_noise), so that the
    edit starts from the projection itself; None: the generator's constant maps.

    config: config.edit_config's unless given (EDIT, with the edit w_r of its units; changes: its
    fields to replace); wr: scalar or [N], instead of config.wr. Larger wr: smaller ||dz|| and less change outside the mask; tiny wr:
    the masked region reaches the request. metrics add edit_metrics (mask_mse_before,
    mask_mse_after, outside_change).
    """
    cfg = edit_config(config, **changes)
    if mask is not None:
        mask = mask.to(G.device, torch.float32)
    request = request.to(G.device, torch.float32)
    res = project(G, request, names, config=cfg, init=latents, mask=mask, c=c, wr=wr, noise=noise, progress=progress)
    before = render(G, res.latent_init, res.space, c, noise=noise)
    res.metrics |= edit_metrics(before, res.images, request, mask)
    return EditResult(**vars(res), before=before)


# --- directions ------------------------------------------------------------------------------


def unit(v: torch.Tensor) -> torch.Tensor:
    """v scaled to norm 1 over all its elements."""
    n = v.norm()
    if not n > 0:
        raise LatentFitError("the direction is zero: the positive and negative latents are not told apart")
    return v / n


def mean_difference(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Unit direction from the mean of `negative` [Q, *shape] to that of `positive` [P, *shape]."""
    return unit(positive.double().mean(0) - negative.double().mean(0)).float()


def linear_boundary(
    positive: torch.Tensor, negative: torch.Tensor, *, l2: float = 0.1, max_iter: int = 500
) -> torch.Tensor:
    """Unit normal of a linear boundary between two sets of latents, pointing to `positive`
    (as InterFaceGAN, with L2-regularized logistic regression, both classes weighted equally).
    Unlike the mean difference it accounts for correlated latents; larger l2 pulls it toward
    the mean difference, which keeps separable sets (few samples) from an arbitrary normal."""
    shape = positive.shape[1:]
    x = torch.cat([positive, negative]).flatten(1).double()
    x = x - x.mean(0)
    y = torch.cat([torch.ones(len(positive)), -torch.ones(len(negative))]).double()
    weight = torch.where(y > 0, 0.5 / len(positive), 0.5 / len(negative))
    w = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=max_iter, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (weight * F.softplus(-y * (x @ w[:-1] + w[-1]))).sum() + 0.5 * l2 * w[:-1].pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return unit(w.detach()[:-1]).float().view(shape)


def _fix_signs(directions: torch.Tensor) -> torch.Tensor:
    """Flip each row so that its largest-magnitude element is positive (PCA signs are arbitrary)."""
    flat = directions.flatten(1)
    top = flat.gather(1, flat.abs().argmax(1, keepdim=True))
    return directions * torch.sign(top).view(-1, *[1] * (directions.ndim - 1))


def pca_directions(
    G: Generator,
    k: int,
    *,
    space: str | None = None,
    n: int = PCA_SAMPLES,
    c: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """K principal directions of the generator (GANSpace-like): unit rows [k, *shape] and the prior
    latents' standard deviation along each [k].

    In w / w+ they are the principal components of n sampled latents. In z, whose N(0, I) prior
    has no principal axes, PCA runs on the generated images (downsampled to PCA_FEATURE_SIZE px)
    and each image component is carried back to z by linear regression, as GANSpace does with
    BigGAN's features.
    """
    space = G.check_space(space or G.default_space)
    if not 1 <= k <= n:
        raise ArgumentError("pca", k, f"choose 1 to {n} components (the number of samples)")
    cc = None if c is None else c[:1].expand(n, -1)
    lat = G.sample(n, seed=seed, space=space, c=cc)
    flat = lat.flatten(1).double()
    if G.gaussian_prior(space):
        size = min(PCA_FEATURE_SIZE, G.resolution)
        feats = (
            torch.cat(
                [
                    F.adaptive_avg_pool2d(
                        render(G, lat[i : i + batch_size], space, None if cc is None else cc[i : i + batch_size]), size
                    )
                    for i in range(0, n, batch_size)
                ]
            )
            .flatten(1)
            .double()
        )
        feats = feats - feats.mean(0)
        vecs = torch.linalg.eigh(feats.T @ feats).eigenvectors.flip(1)[:, :k]  # top-k, descending
        coords = feats @ vecs  # [n, k]
        dirs = coords.T @ (flat - flat.mean(0))  # regress z on them
        dirs = dirs / dirs.norm(dim=1, keepdim=True)
    else:
        centered = flat - flat.mean(0)
        dirs = torch.linalg.svd(centered, full_matrices=False).Vh[:k]
    dirs = _fix_signs(dirs)
    std = ((flat - flat.mean(0)) @ dirs.T).std(0)
    return dirs.float().view(k, *lat.shape[1:]).to(G.device), std.float()


def apply_direction(
    latents: torch.Tensor, direction: torch.Tensor, strengths: torch.Tensor | list[float]
) -> torch.Tensor:
    """latents [N, *shape] moved by each strength along `direction` [*shape]: [N, S, *shape]."""
    s = torch.as_tensor(strengths, dtype=latents.dtype, device=latents.device)
    d = direction.to(latents.device, latents.dtype)
    if d.shape != latents.shape[1:]:
        raise LatentFitError(
            f"direction of shape {list(d.shape)} does not fit latents of shape {list(latents.shape[1:])}"
        )
    return latents[:, None] + s.view(1, -1, *[1] * d.ndim) * d


# --- interpolation ---------------------------------------------------------------------------


def interpolate(a: torch.Tensor, b: torch.Tensor, frames: int, mode: str = "linear") -> torch.Tensor:
    """`frames` latents from a [P, *shape] to b [P, *shape] (both ends included): [P, frames, *shape].

    linear: straight line. spherical: along the great circle between the two (as a flattened
    vector; the norm goes linearly from ||a|| to ||b||), which keeps Gaussian z near the prior's
    shell where a straight line cuts through its low-density center.
    """
    if frames < 2:
        raise LatentFitError(f"--frames {frames}: give at least 2")
    t = torch.linspace(0, 1, frames, dtype=torch.float64, device=a.device).view(1, -1, 1)
    fa, fb = a.flatten(1).double()[:, None], b.flatten(1).double()[:, None]
    if mode == "linear":
        out = fa + t * (fb - fa)
    elif mode == "spherical":
        na, nb = fa.norm(dim=2, keepdim=True), fb.norm(dim=2, keepdim=True)
        ua, ub = fa / na.clamp_min(1e-12), fb / nb.clamp_min(1e-12)
        omega = (ua * ub).sum(2, keepdim=True).clamp(-1, 1).acos()
        so = omega.sin()
        small = so < 1e-6  # (anti)parallel: the great circle is not unique; use the chord
        wa = torch.where(small, 1 - t, ((1 - t) * omega).sin() / so.clamp_min(1e-12))
        wb = torch.where(small, t, (t * omega).sin() / so.clamp_min(1e-12))
        direction = wa * ua + wb * ub
        out = direction / direction.norm(dim=2, keepdim=True).clamp_min(1e-12) * (na + t * (nb - na))
    else:
        raise LatentFitError(f"interpolation mode {mode!r}: choose linear or spherical")
    return out.to(a.dtype).view(a.shape[0], frames, *a.shape[1:])


def interpolate_noise(
    a: list[torch.Tensor] | None, b: list[torch.Tensor] | None, frames: int, mode: str = "linear"
) -> list[torch.Tensor] | None:
    """Noise maps along the path from maps a (per noise input, [P, *noise_shape]) to b, by the
    latents' rule (`interpolate`, each map a flattened vector; spherical keeps their variance near
    1 where a straight line between independent maps halves it): [P, frames, *noise_shape] each.
    None (the constant maps) where either end has none."""
    if a is None or b is None:
        return None
    return [interpolate(ma, mb, frames, mode) for ma, mb in zip(a, b)]


def render_path(
    G: Generator,
    path: torch.Tensor,
    deltas: list[dict | None],
    space: str,
    c: torch.Tensor | None = None,
    batch_size: int = 64,
    noise: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Images [M, P, F, C, H, W] of interpolation paths [M, P, F, *shape] through P + 1 latents
    (segment p from latent p to latent p + 1), whose tuned weight changes are deltas[p] (None:
    G's own); c: one label [c_dim] or None; noise: the paths' noise maps [M, P, F, *noise_shape]
    per noise input (interpolate_noise; None: the constant maps). Without tuned ends, one batched
    render; a segment with a tuned end blends the ends' weight changes along with the latents
    (tuning.render_blended), so every end is its own tuned reconstruction."""
    from .tuning import render_blended

    m, p, f = path.shape[:3]
    if not any(d is not None for d in deltas):
        cc = None if c is None else c.expand(m * p * f, -1)
        nz = None if noise is None else [x.flatten(0, 2) for x in noise]
        return render(G, path.flatten(0, 2), space, cc, batch_size, nz).unflatten(0, (m, p, f))
    t = torch.linspace(0, 1, f)
    cc = None if c is None else c.expand(f, -1)

    def segment(i: int, j: int) -> torch.Tensor:
        a, b = deltas[j], deltas[j + 1]
        nz = None if noise is None else [x[i, j] for x in noise]
        if a is None and b is None:
            return render(G, path[i, j], space, cc, batch_size, nz)
        return render_blended(G, a, b, t, path[i, j], space, cc, noise=nz)

    return torch.stack([segment(i, j) for i in range(m) for j in range(p)]).unflatten(0, (m, p))
