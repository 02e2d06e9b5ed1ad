"""The batched optimization loop behind projection, edits and sweeps.

Pure tensors in, tensors out. All samples share one forward/backward per step, but every term is
per sample and every random number is keyed by the sample's name, so a sample's result does not
depend on which other samples share its batch. The loop reads as its phases: start, then step
and, every `check_every` steps, check, prune or stop; then finish.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from .candidates import Candidates, RowAdam, RowLBFGS
from .config import Config, check_weights, projection_config
from .errors import LatentFitError
from .generators.base import Generator
from .images import to_uint8
from .jacobian import jacobian_norm, wr_factor
from .objective import Inputs, Objective
from .rng import keyed_normal, name_key

_NOISE_COUNTER = 1 << 20  # keyed_normal counters: 0 starts, 1..L noise maps, this + step for latent noise


@dataclass
class Result:
    """Outputs for N targets (row i belongs to names[i])."""

    names: list[str]
    space: str
    latent: torch.Tensor  # [N, *latent_shape] final latents
    latent_init: torch.Tensor  # [N, *latent_shape] their starts z0
    images: torch.Tensor  # [N, C, H, W] G(latent) in [-1, 1]
    noise: list[torch.Tensor] | None  # optimized StyleGAN noise maps, [N, 1, h, w] each
    loss_history: np.ndarray  # [N, checks] best total loss at every check; nan after an early stop
    steps: np.ndarray  # [N] steps run by the kept candidate
    metrics: dict[str, np.ndarray]  # [N] each: mse, psnr, lpips (nan if unused; in the mask),
    # dz_norm, sample_steps (candidate-steps spent on the target),
    # wr (as given), wr_factor (at the start), wr_effective (the
    # raw w_r used), jacobian_norm (at the latent; jacobian.py)
    terms: list[str]  # loss terms that were used
    config: dict  # the Config used, as a dict
    seconds: float  # wall time of the whole batch
    frames: np.ndarray | None = field(default=None, repr=False)  # [checks+1, N, H, W, C] uint8


def project(
    G: Generator,
    targets: torch.Tensor,
    names: list[str] | None = None,
    *,
    config: Config | None = None,
    init: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    c: torch.Tensor | None = None,
    wr: float | torch.Tensor | None = None,
    noise: list[torch.Tensor] | None = None,
    encoder=None,
    progress=None,
    **changes,
) -> Result:
    """Find latents whose images reconstruct `targets` ([N, C, H, W] in [-1, 1]).

    names: one per target; the random starts derive from (seed, name), not from the position.
    config: every setting, default config.projection_config's (ENCODED with an encoder and no init,
    else PROJECTION); changes: Config fields that replace its values, for API callers.
    init: [N, *latent_shape] starts (then one start each). mask: [N, 1, H, W] weights in [0, 1]
    for the reconstruction terms. c: [N, c_dim] class labels. wr: scalar or [N] per-sample w_r
    (sweeps), instead of config.wr. noise: StyleGAN noise maps [N, *noise_shape] per target (as
    Result.noise): the optimized maps start there (config.optimize_noise), else they stay fixed
    there (default: keyed random starts, or the generator's constant maps). encoder: a learned
    start (encoder.Encoder) for targets without init: each target starts at E(x) (plus starts - 1
    perturbations when spread > 0), and w_r anchors to it. progress: callable(steps_done,
    best_loss) at every check.
    """
    t_start = time.perf_counter()
    cfg = projection_config(config, encoded=encoder is not None and init is None, **changes)
    if encoder is not None and init is None and cfg.space is None:
        cfg = cfg.replace(space=encoder.space)
    with plain_cpu_kernels() if cfg.exact else contextlib.nullcontext():
        init = init if encoder is None or init is not None else encoder.start(G, targets, cfg.space, cfg.exact)
        run = _Run(G, cfg, targets, names, init=init, mask=mask, c=c, wr=wr, noise=noise)
        loss = None
        for step in range(cfg.steps):
            if not len(run.pool):
                break
            loss, images = run.step(step)
            last = step == cfg.steps - 1
            if (step + 1) % cfg.check_every and not last:
                continue
            run.check(step, loss, images, progress)
            if last:
                break
            if run.k > 1:
                run.prune(step, loss)
            else:
                run.stop(step, loss)
        return run.finish(loss, t_start)


def one_step(G: Generator, targets: torch.Tensor, *, config: Config, c: torch.Tensor | None = None) -> None:
    """Start the loop on `targets` and run its first step, nothing else (memory probes)."""
    _Run(G, config, targets, None, init=None, mask=None, c=c, wr=None, noise=None).step(0)


@contextlib.contextmanager
def plain_cpu_kernels():
    """Turn oneDNN off: the plain CPU convolutions compute each sample on its own, so their
    rounding does not depend on the batch size."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def lr_at(cfg: Config, lr: float, t: float) -> float:
    """NVIDIA's schedule at fraction t of the steps: linear warm-up, cosine ramp-down."""
    ramp = min(1.0, (1.0 - t) / cfg.lr_rampdown) if cfg.lr_rampdown > 0 else 1.0
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    if cfg.lr_rampup > 0:
        ramp *= min(1.0, t / cfg.lr_rampup)
    return lr * ramp


def rows_of(x, n: int, device, what: str) -> torch.Tensor | None:
    """x as float32 [n, ...] on `device` (a scalar is repeated); None stays None."""
    if x is None:
        return None
    x = torch.as_tensor(x, dtype=torch.float32, device=device)
    if x.ndim == 0:
        x = x.expand(n)
    if x.shape[0] != n:
        raise LatentFitError(f"{what}: {x.shape[0]} rows for {n} targets")
    return x


class _Run:
    """One batched optimization: the candidates, their optimizer, and what each target keeps."""

    def __init__(self, G: Generator, cfg: Config, targets, names, *, init, mask, c, wr, noise):
        self.G, self.cfg = G, cfg
        self.space = space = G.check_space(cfg.space or G.default_space)
        self.shape = G.latent_shape(space)
        dev = G.device
        n = self.n = targets.shape[0]
        self.names = list(names) if names is not None else [str(i) for i in range(n)]
        self._check_inputs(targets, init)
        self.targets = targets.to(dev, torch.float32)
        self.mask, self.c = rows_of(mask, n, dev, "mask"), rows_of(c, n, dev, "c")
        if self.c is None and G.needs_class(space):
            raise LatentFitError(f"generator {G.name!r} is conditional: give a class to work in z")
        self.wr_in = cfg.wr if wr is None else wr
        check_weights(self.wr_in, "wr")
        self.mode = "given" if init is not None else cfg.init_mode or G.default_init_mode(space)
        drawn = self.mode == "random" or (self.mode == "given" and cfg.spread > 0)
        self.starts = self.k = cfg.starts if drawn else 1
        self.lr = cfg.lr if cfg.lr is not None else G.default_lr(space)
        self.noise_std = cfg.latent_noise * G.latent_std(space)
        self.noise_shapes = G.noise_shapes if cfg.optimize_noise else ()
        self.given_noise = given_noise(G, noise, n)
        self.objective = Objective.from_config(cfg, noise=bool(self.noise_shapes), device=dev)
        self.pool = self._start(rows_of(self.wr_in, n, dev, "wr"), rows_of(init, n, dev, "init"))
        self.adam = RowAdam(self.pool.variables)
        self.adam_steps = cfg.steps - round(cfg.lbfgs * cfg.steps)  # then L-BFGS (RowLBFGS)
        self.lbfgs: RowLBFGS | None = None
        self.kept = {
            "latent": torch.empty(n, *self.shape, device=dev),
            "latent_init": torch.empty(n, *self.shape, device=dev),
            "wr_factor": torch.empty(n, device=dev),
            "noise": [torch.empty(n, *s, device=dev) for s in self.noise_shapes],
        }
        self.steps_run = np.full(n, cfg.steps)
        self.spent = torch.zeros(n, device=dev)  # candidate-steps per target
        self.history: list[np.ndarray] = []
        self.frames = [] if cfg.save_video else None
        self.next_rung = max(1, round(cfg.prune_every * cfg.steps)) if self.k > 1 else math.inf

    def _check_inputs(self, targets, init) -> None:
        G = self.G
        want = (G.img_channels, G.resolution, G.resolution)
        if tuple(targets.shape[1:]) != want:
            raise LatentFitError(f"targets must be [N, {', '.join(map(str, want))}], got {list(targets.shape)}")
        if init is not None and tuple(init.shape[1:]) != self.shape:
            raise LatentFitError(
                f"init latents have shape {list(init.shape[1:])}, the {self.space} space "
                f"of {G.name!r} needs {list(self.shape)}"
            )

    def _start(self, wr: torch.Tensor, init: torch.Tensor | None) -> Candidates:
        """k candidates per target, rows grouped by target: the given start (its k - 1 others
        perturbed by `spread` latent stds), random prior samples keyed by (seed, name, start), or
        the space's mean. Given starts are every candidate's z0: w_r anchors to them. In relative
        units each candidate's w_r is multiplied by wr_factor at its own z0."""
        G, n, k, dev = self.G, self.n, self.k, self.G.device
        owner = torch.arange(n, device=dev).repeat_interleave(k)
        keys = torch.tensor([name_key(self.cfg.seed, self.names[i], j) for i in range(n) for j in range(k)], device=dev)
        c = None if self.c is None else self.c[owner]
        latent = None
        with torch.no_grad():
            if init is not None:
                z0 = init[owner].clone()
                first = (torch.arange(n * k, device=dev) % k == 0).view(-1, *[1] * len(self.shape))
                noise = self.cfg.spread * G.latent_std(self.space) * keyed_normal(keys, 0, self.shape)
                latent = torch.where(first, z0, z0 + noise)
            elif self.mode == "random":
                z0 = G.from_z(keyed_normal(keys, 0, (G.z_dim,)), self.space, c)
            else:
                z0 = G.mean_latent(self.space, None if c is None else c[:1]).expand(n * k, *self.shape).clone()
        factor = self._wr_factor(z0, c, owner) if self.cfg.wr_units == "relative" else None
        return Candidates(
            latent=z0.clone() if latent is None else latent,
            latent_init=z0,
            owner=owner,
            keys=keys,
            noise=self._noise_starts(keys, owner),
            targets=self.targets[owner],
            wr=wr[owner] * (1 if factor is None else factor),
            wr_factor=factor,
            mask=None if self.mask is None else self.mask[owner],
            c=c,
            best=torch.full((n * k,), math.inf, device=dev),
            since=torch.zeros(n * k, device=dev),
        )

    def _noise_starts(self, keys: torch.Tensor, owner: torch.Tensor) -> list[torch.Tensor]:
        """The optimized noise maps' starts: the given maps, else keyed random ones."""
        if not self.noise_shapes:
            return []
        if self.given_noise is not None:
            return [m[owner].clone() for m in self.given_noise]
        return [keyed_normal(keys, 1 + i, s) for i, s in enumerate(self.noise_shapes)]

    def _wr_factor(self, z0: torch.Tensor, c: torch.Tensor | None, owner: torch.Tensor) -> torch.Tensor:
        """wr_factor at each candidate's start; the probes are keyed by its target's name."""
        names = [self.names[i] for i in owner.tolist()]
        factor = wr_factor(self.G, z0, self.space, c, names=names, seed=self.cfg.seed)
        flat = sorted({names[i] for i in torch.nonzero(factor <= 0).flatten().tolist()})
        if flat:
            warnings.warn(
                f"wr_units relative: the image does not change with the latent at the start of "
                f"{', '.join(flat[:3])}{' …' if len(flat) > 3 else ''}, so w_r has no effect there "
                "(give other starts or raw units)",
                stacklevel=2,
            )
        return factor

    def step(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward/backward of every candidate and an Adam step (its first adam_steps), else an
        L-BFGS step of the latent: (loss [R] of the points kept, images)."""
        if step >= self.adam_steps:
            return self._lbfgs_step()
        cfg, pool, t = self.cfg, self.pool, step / self.adam_steps
        variables = [v.requires_grad_(True) for v in pool.variables]
        z, noise = variables[0], variables[1:]
        ns = self.noise_std * max(0.0, 1.0 - t / cfg.latent_noise_ramp) ** 2 if cfg.latent_noise_ramp > 0 else 0.0
        zz = z + ns * keyed_normal(pool.keys, _NOISE_COUNTER + step, self.shape) if ns > 0 else z
        loss, images = self._loss(zz, z, noise)
        grads = torch.autograd.grad(loss.sum(), variables)
        pool.set_variables(self.adam.step(variables, grads, lr_at(cfg, self.lr, t)))
        with torch.no_grad():
            pool.latent = self._on_sphere(pool.latent)
            pool.noise = [_renormalized(m) for m in pool.noise]
        return loss.detach(), images

    def _lbfgs_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each candidate's loss and gradient at its trial point; it keeps the point if better."""
        pool = self.pool
        if self.lbfgs is None:
            self.lbfgs = RowLBFGS(pool.latent, first_step=self.lr)
        with torch.no_grad():
            trial = self._on_sphere(self.lbfgs.trial(pool.latent))
        trial.requires_grad_(True)
        loss, images = self._loss(trial, trial, pool.noise)
        (grad,) = torch.autograd.grad(loss.sum(), [trial])
        pool.latent = self.lbfgs.update(pool.latent, trial.detach(), loss.detach(), grad)
        return self.lbfgs.f, images

    def _loss(self, synthesized, z, noise) -> tuple[torch.Tensor, torch.Tensor]:
        """The objective [R] of the pool at `synthesized` (z: its latent for w_r), and its images;
        counts the candidate-steps."""
        pool = self.pool
        fixed = None if self.given_noise is None else [m[pool.owner] for m in self.given_noise]
        images = self.G.synthesize(synthesized, self.space, pool.c, noise or fixed)
        inputs = Inputs(
            images=images, targets=pool.targets, dz=z - pool.latent_init, wr=pool.wr, mask=pool.mask, noise=noise
        )
        self.spent.index_add_(0, pool.owner, torch.ones(len(pool), device=pool.owner.device))
        return self.objective(inputs), images

    def _on_sphere(self, z: torch.Tensor) -> torch.Tensor:
        """z, moved onto the prior's typical radius when Config.sphere asks for it."""
        if self.cfg.sphere and self.G.gaussian_prior(self.space):
            return z * (math.sqrt(self.G.z_dim) / z.norm(dim=1, keepdim=True))
        return z

    def check(self, step: int, loss: torch.Tensor, images: torch.Tensor, progress) -> None:
        """Record each target's best loss (the only host sync), a video frame, and report."""
        best = torch.full((self.n,), math.nan, device=loss.device).scatter_reduce(
            0, self.pool.owner, loss, "amin", include_self=False
        )
        self.history.append(best.cpu().numpy())
        if self.frames is not None:
            frame = (
                self.frames[-1].copy()
                if self.frames
                else np.zeros((self.n, self.G.resolution, self.G.resolution, self.G.img_channels), np.uint8)
            )
            rows = _best_rows(loss, self.k)
            frame[self.pool.owner[rows].cpu().numpy()] = to_uint8(images[rows])
            self.frames.append(frame)
        if progress is not None:
            progress(step + 1, float(torch.nan_to_num(best, nan=math.inf).min()))

    def prune(self, step: int, loss: torch.Tensor) -> None:
        """Successive halving, per target: at each rung keep the best 1/prune_factor."""
        if step + 1 < self.next_rung:
            return
        k, cfg = self.k, self.cfg
        knew = max(1, math.ceil(k / cfg.prune_factor))
        order = torch.argsort(loss.view(-1, k), dim=1, stable=True)[:, :knew]
        self.k, self.next_rung = knew, step + 1 + max(1, round(cfg.prune_every * cfg.steps))
        self.pool.best.fill_(math.inf)
        self._select((torch.arange(order.shape[0], device=loss.device)[:, None] * k + order).flatten())

    def stop(self, step: int, loss: torch.Tensor) -> None:
        """Early stop: a candidate whose loss has not improved by `tol` for `patience` steps is done."""
        pool, cfg = self.pool, self.cfg
        better = loss < pool.best * (1 - cfg.tol)
        pool.best = torch.where(better, loss, pool.best)
        pool.since = torch.where(better, torch.zeros_like(pool.since), pool.since + cfg.check_every)
        done = pool.since >= cfg.patience
        if bool(done.any()):
            self._keep(torch.nonzero(done).flatten(), step + 1)
            self._select(torch.nonzero(~done).flatten())

    def _select(self, rows: torch.Tensor) -> None:
        self.pool = self.pool.select(rows)
        self.adam.select(rows)
        if self.lbfgs is not None:
            self.lbfgs.select(rows)

    def _keep(self, rows: torch.Tensor, steps_done: int) -> None:
        """Store the candidates `rows` as their targets' results."""
        tgt = self.pool.owner[rows]
        self.kept["latent"][tgt] = self.pool.latent[rows].detach()
        self.kept["latent_init"][tgt] = self.pool.latent_init[rows]
        if self.pool.wr_factor is not None:
            self.kept["wr_factor"][tgt] = self.pool.wr_factor[rows]
        for out, m in zip(self.kept["noise"], self.pool.noise):
            out[tgt] = m[rows]
        self.steps_run[tgt.cpu().numpy()] = steps_done

    def finish(self, loss: torch.Tensor | None, t_start: float) -> Result:
        """Each running target's best candidate, rendered and measured by the same objective."""
        if len(self.pool):
            self._keep(_best_rows(loss, self.k), self.cfg.steps)
        latent, latent_init = self.kept["latent"], self.kept["latent_init"]
        noise = self.kept["noise"] or self.given_noise
        with torch.no_grad():
            images = self.G.synthesize(latent, self.space, self.c, noise).clamp(-1, 1)
            measured = self.objective.metrics(
                Inputs(
                    images=images,
                    targets=self.targets,
                    mask=self.mask,
                    dz=latent - latent_init,
                    wr=latent.new_zeros(self.n),
                )
            )
            measured["dz_norm"] = (latent - latent_init).flatten(1).norm(dim=1)
            measured["sample_steps"] = self.spent
        if self.frames is not None:
            self.frames.append(to_uint8(images))
        hist = np.stack(self.history, 1) if self.history else np.zeros((self.n, 0))
        wr = self.wr_in if isinstance(self.wr_in, (int, float)) else torch.as_tensor(self.wr_in).tolist()
        metrics = {k: v.cpu().numpy() for k, v in measured.items()} | self._unit_metrics(wr, latent, latent_init, noise)
        conf = dataclasses.asdict(self.cfg) | {
            "space": self.space,
            "lr": self.lr,
            "init_mode": self.mode,
            "starts": self.starts,
            "wr": wr,
        }
        return Result(
            names=self.names,
            space=self.space,
            latent=latent,
            latent_init=latent_init,
            images=images,
            noise=noise,
            loss_history=hist.astype(np.float32),
            steps=self.steps_run,
            metrics=metrics,
            terms=self.objective.names,
            config=conf,
            seconds=time.perf_counter() - t_start,
            frames=np.stack(self.frames) if self.frames else None,
        )

    def _unit_metrics(self, wr, latent, latent_init, noise) -> dict[str, np.ndarray]:
        """Per target, float64: wr as given, wr_effective (the raw w_r of its loop), and unless
        config.jacobian_metrics is off, wr_factor at its start (in relative units, the one its
        loop used) and jacobian_norm at its latent."""
        est = {"names": self.names, "seed": self.cfg.seed}
        relative, measure = self.cfg.wr_units == "relative", self.cfg.jacobian_metrics
        wr = np.broadcast_to(np.asarray(wr, np.float64), (self.n,)).copy()
        out = {"wr": wr, "wr_effective": wr}
        if relative or measure:
            factor = self.kept["wr_factor"] if relative else wr_factor(self.G, latent_init, self.space, self.c, **est)
            out["wr_factor"] = factor.double().cpu().numpy()
            out["wr_effective"] = wr * out["wr_factor"] if relative else wr
        if measure:
            out["jacobian_norm"] = (
                jacobian_norm(self.G, latent, self.space, self.c, noise=noise, **est).double().cpu().numpy()
            )
        return out


def given_noise(G: Generator, noise: list[torch.Tensor] | None, n: int) -> list[torch.Tensor] | None:
    """Noise maps [n, *noise_shape] per noise input of G, as float32 on G's device; None stays None."""
    if noise is None or not (noise or G.noise_shapes):
        return None
    want = [(n, *s) for s in G.noise_shapes]
    if [tuple(m.shape) for m in noise] != want:
        raise LatentFitError(
            f"noise maps of shapes {[list(m.shape) for m in noise]}; generator {G.name!r} "
            f"needs {[list(s) for s in want]}"
        )
    return [m.to(G.device, torch.float32) for m in noise]


def _renormalized(m: torch.Tensor) -> torch.Tensor:
    """A noise map with zero mean and unit variance per sample."""
    m = m - m.mean((1, 2, 3), keepdim=True)
    return m / m.pow(2).mean((1, 2, 3), keepdim=True).sqrt()


def _best_rows(loss: torch.Tensor, k: int) -> torch.Tensor:
    """Row of each target's lowest loss; rows come grouped by target, k per target."""
    per = loss.view(-1, k)
    return torch.arange(per.shape[0], device=loss.device) * k + per.argmin(1)
