"""The generator's local Lipschitz constant, and w_r in units of it.

For a small step dz from z, the pixel MSE changes by ||J dz||^2 / P (J = dG/dz at z, P pixel
values per image); averaged over directions, by ||J||_F^2 ||dz||^2 / (d P) (d latent elements).
So wr_factor = ||J||_F^2 / (d P) is what one unit of ||dz||^2 costs in MSE, and a relative
w_r (Config.wr_units = "relative") times wr_factor at each start is the raw w_r of the loop:
relative w_r = 1 makes the Euclidean term cost as much as the average image change it buys,
whatever the generator's latent scale.

||J||_F^2 is estimated per sample by Hutchinson's estimator, ||J||_F^2 = E ||J^T u||^2 over
u ~ N(0, I_P), with `projections` vector-Jacobian products run as one batched backward pass (on
CPU, 1.6-1.9x faster than forward-mode JVPs for the bundled DCGAN). The probes u are keyed by
(seed, name), so a sample's estimate never depends on its batch, and every start of a target
sees the same probes. Pure tensors in, tensors out.
"""

from __future__ import annotations

import math
import weakref

import torch

from .errors import LatentFitError
from .generators.base import Generator
from .rng import keyed_normal, name_key

PROJECTIONS = 32  # probes per sample: one estimate's relative spread is ~10 % (README, Choosing w_r)
NORM_SAMPLES = 128  # prior latents whose median ||J||_F^2 jacobian_norm is relative to,
PRIOR_PROJECTIONS = 4  # ... each estimated with this many probes (the median averages)
CHUNK_ROWS = 64  # sample x probe rows per backward pass (CPU: larger runs slower per row)
_PROBE_COUNTER = 1 << 24  # keyed_normal counters of the probes (far from the loop's)
_medians_by_weights: dict[tuple[str, str, str], float] = {}  # (name, sha256, space)
_medians_by_object: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # weights unknown


def jacobian_sq_norm(
    G: Generator,
    latents: torch.Tensor,
    space: str | None = None,
    c: torch.Tensor | None = None,
    *,
    names: list[str] | None = None,
    seed: int = 0,
    noise: list[torch.Tensor] | None = None,
    projections: int = PROJECTIONS,
) -> torch.Tensor:
    """Hutchinson estimate of ||dG/dlatent||_F^2 for each of latents [N, *shape], as float32 [N].

    names key the probes (default: the row numbers); c [N, c_dim] labels (z of a conditional G);
    noise: StyleGAN noise maps [N, 1, h, w] each (default: the generator's constant noise).
    """
    space = G.check_space(space or G.default_space)
    n = latents.shape[0]
    names = list(names) if names is not None else [str(i) for i in range(n)]
    if len(names) != n or projections < 1:
        raise LatentFitError(
            f"jacobian estimate: {len(names)} names for {n} latents, "
            f"{projections} projections (need one name per latent and >= 1)"
        )
    keys = torch.tensor([name_key(seed, s) for s in names], device=G.device)
    image = (3, G.resolution, G.resolution)
    per = max(1, CHUNK_ROWS // projections)  # samples per backward pass
    out = []
    for i in range(0, n, per):
        sl = slice(i, i + per)

        def rows(x):  # this chunk's rows, each repeated once per probe
            return None if x is None else x[sl].to(G.device).repeat_interleave(projections, 0)

        m = len(keys[sl])
        u = torch.stack([keyed_normal(keys[sl], _PROBE_COUNTER + k, image) for k in range(projections)], 1)
        x = rows(latents.detach().float())
        with torch.enable_grad():
            x.requires_grad_(True)
            y = G.synthesize(x, space, rows(c), None if noise is None else [rows(nm) for nm in noise])
            (g,) = torch.autograd.grad((y * u.view(m * projections, *image)).sum(), x)
        out.append(g.flatten(1).pow(2).sum(1).view(m, projections).mean(1))
    return torch.cat(out) if out else torch.zeros(0, device=G.device)


def wr_factor(
    G: Generator, latents: torch.Tensor, space: str | None = None, c: torch.Tensor | None = None, **estimate
) -> torch.Tensor:
    """||J||_F^2 / (d P) per latent [N]: the MSE one unit of ||dz||^2 costs on average there,
    i.e. the raw w_r that relative w_r = 1 stands for (Config.wr_units). estimate:
    jacobian_sq_norm's keywords."""
    space = G.check_space(space or G.default_space)
    d = math.prod(G.latent_shape(space))
    return jacobian_sq_norm(G, latents, space, c, **estimate) / (d * 3 * G.resolution**2)


def prior_sq_norm_median(G: Generator, space: str | None = None) -> float:
    """Median of ||J||_F^2 over NORM_SAMPLES prior latents in `space` (all classes alike),
    computed once per generator (its weights' sha256 when known, else the object) and space."""
    space = G.check_space(space or G.default_space)
    cache = _medians_by_weights if G.sha256 else _medians_by_object.setdefault(G, {})
    key = (G.name, G.sha256, space) if G.sha256 else space
    if key not in cache:
        c = G.cycled_labels(NORM_SAMPLES)
        with torch.no_grad():
            x = G.sample(NORM_SAMPLES, seed=0, space=space, c=c)
        sq = jacobian_sq_norm(
            G, x, space, c, names=[f"prior{i}" for i in range(NORM_SAMPLES)], projections=PRIOR_PROJECTIONS
        )
        cache[key] = float(sq.median())
    return cache[key]


def jacobian_norm(
    G: Generator, latents: torch.Tensor, space: str | None = None, c: torch.Tensor | None = None, **estimate
) -> torch.Tensor:
    """||J||_F at each latent [N] relative to its median over prior latents: 1 is typical; well
    above the prior's own range, G changes abnormally fast there (a sign of an unrealistic
    latent); well below, G is flat there."""
    space = G.check_space(space or G.default_space)
    med = prior_sq_norm_median(G, space)
    if not med > 0:
        raise LatentFitError(
            f"generator {G.name!r}: the image does not change with the latent at "
            f"typical {space} latents (median ||J||_F^2 = {med:g})"
        )
    return (jacobian_sq_norm(G, latents, space, c, **estimate) / med).sqrt()
