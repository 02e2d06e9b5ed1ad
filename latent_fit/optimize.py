"""The batched optimization loop behind projection, edits and sweeps.

Pure tensors in, tensors out. All samples share one forward/backward per step, but every term is
per sample and every random number is keyed by the sample's name, so a sample's result does not
depend on which other samples share its batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import LatentFitError
from .generators.base import Generator
from .images import to_uint8
from .objective import LPIPS, latent_reg, noise_reg, pixel_mse, psnr, resolve_loss
from .rng import keyed_normal, name_key

_NOISE_COUNTER = 1 << 20   # keyed_normal counters: 0 starts, 1..L noise maps, this + step for latent noise


@dataclass(frozen=True)
class Config:
    """Every constant of the loop, with its default. See the README for what each one does."""

    space: str | None = None          # latent space; None: the generator's default (z for DCGAN, w for StyleGAN)
    steps: int = 1000                 # optimization steps
    lr: float | None = None           # Adam learning rate; None: 0.2 in z, 0.1 in w / w+
    lr_rampup: float = 0.05           # fraction of steps of linear warm-up
    lr_rampdown: float = 0.25         # fraction of steps of cosine ramp-down at the end
    latent_noise: float = 0.05        # initial latent noise, times the latent's per-element std
    latent_noise_ramp: float = 0.75   # fraction of steps over which that noise decays to 0
    wr: float = 0.0                   # weight of the Euclidean norm term wr * ||z - z0||^2 (a sum)
    reg: str = "l2"                   # l2: sum of squares; l1: sum of absolute values (sparser dz)
    loss: str = "auto"                # auto | mse | lpips | mse+lpips (auto: mse+lpips if LPIPS is on disk)
    lpips_weight: float = 1.0         # weight of LPIPS next to pixel MSE
    init_mode: str | None = None      # random | mean; None: random in z, mean (w_avg) in w / w+
    starts: int = 16                  # candidates per target (random init only)
    prune_every: float = 0.15         # fraction of steps between successive-halving rungs
    prune_factor: int = 2             # each rung keeps 1/prune_factor of each target's candidates
    sphere: bool = False              # z only: keep ||z|| = sqrt(dim), the prior's typical radius
    optimize_noise: bool = True       # StyleGAN: optimize the noise maps too
    noise_weight: float = 1e5         # StyleGAN noise-map regularization weight
    patience: int = 100               # early stop: steps without a `tol` relative improvement
    tol: float = 1e-3
    check_every: int = 25             # steps between reads of the loss (the only host syncs)
    exact: bool = False               # CPU: convolutions whose per-sample rounding does not depend on
                                      # the batch size (bit-identical DCGAN latents; slower at large batches)
    seed: int = 0

    def validate(self) -> "Config":
        if self.steps < 1 or self.starts < 1 or self.check_every < 1 or self.prune_factor < 2:
            raise LatentFitError("steps, starts and check_every must be >= 1 and prune_factor >= 2")
        if self.reg not in ("l2", "l1"):
            raise LatentFitError(f"--reg {self.reg!r}: choose l2 or l1")
        if self.init_mode not in (None, "random", "mean"):
            raise LatentFitError(f"--init-mode {self.init_mode!r}: choose random or mean")
        return self


@dataclass
class Result:
    """Outputs for N targets (row i belongs to names[i])."""

    names: list[str]
    space: str
    latent: torch.Tensor                 # [N, *latent_shape] final latents
    latent_init: torch.Tensor            # [N, *latent_shape] their starts z0
    images: torch.Tensor                 # [N, 3, H, W] G(latent) in [-1, 1]
    noise: list[torch.Tensor] | None     # optimized StyleGAN noise maps, [N, 1, h, w] each
    loss_history: np.ndarray             # [N, checks] best total loss at every check; nan after an early stop
    steps: np.ndarray                    # [N] steps run by the kept candidate
    metrics: dict[str, np.ndarray]       # mse, psnr, lpips (nan if unused; in the mask), dz_norm: [N] each
    terms: list[str]                     # loss terms that were used
    config: dict                         # the Config used, as a dict
    seconds: float                       # wall time of the whole batch
    frames: np.ndarray | None = field(default=None, repr=False)  # [checks+1, N, H, W, 3] uint8


@contextlib.contextmanager
def _plain_cpu_kernels():
    """Turn oneDNN off: the plain CPU convolutions compute each sample on its own, so their
    rounding does not depend on the batch size."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def _lr_at(cfg: Config, lr: float, t: float) -> float:
    """NVIDIA's schedule: linear warm-up, cosine ramp-down over the last `lr_rampdown`."""
    ramp = min(1.0, (1.0 - t) / cfg.lr_rampdown) if cfg.lr_rampdown > 0 else 1.0
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    if cfg.lr_rampup > 0:
        ramp *= min(1.0, t / cfg.lr_rampup)
    return lr * ramp


def _latent_std(G: Generator, space: str) -> float:
    """Per-element std of prior latents in `space` (1 in z; over all classes of a conditional
    generator), for scaling the latent noise. Depends on the generator only, never the batch."""
    if space == "z":
        return 1.0
    with torch.no_grad():
        x = G.sample(1000, seed=0, space=space, c=G.cycled_labels(1000))
        return float((x - x.mean(0)).pow(2).mean().sqrt())


def _to_batch(x, n: int, dev, what: str) -> torch.Tensor | None:
    if x is None:
        return None
    x = torch.as_tensor(x, dtype=torch.float32, device=dev)
    if x.ndim == 0:
        x = x.expand(n)
    if x.shape[0] != n:
        raise LatentFitError(f"{what}: {x.shape[0]} rows for {n} targets")
    return x


def project(G: Generator, targets: torch.Tensor, names: list[str] | None = None, *,
            init: torch.Tensor | None = None, mask: torch.Tensor | None = None,
            c: torch.Tensor | None = None, wr: float | torch.Tensor | None = None,
            record_frames: bool = False, progress=None, **options) -> Result:
    """Find latents whose images reconstruct `targets` ([N, 3, H, W] in [-1, 1]).

    names: one per target; the random starts derive from (seed, name), not from the position.
    init: [N, *latent_shape] starts (then starts=1). mask: [N, 1, H, W] weights in [0, 1] for the
    reconstruction terms. c: [N, c_dim] class labels. wr: scalar or [N] per-sample w_r (sweeps).
    options: fields of Config. progress: callable(steps_done, best_loss) called at every check.
    """
    t_start = time.perf_counter()
    cfg = Config(**options).validate()
    with _plain_cpu_kernels() if cfg.exact else contextlib.nullcontext():
        return _project(G, targets, names, cfg, init=init, mask=mask, c=c, wr=wr,
                        record_frames=record_frames, progress=progress, t_start=t_start)


def _project(G, targets, names, cfg, *, init, mask, c, wr, record_frames, progress, t_start) -> Result:
    space = G.check_space(cfg.space or G.default_space)
    dev = G.device
    n = targets.shape[0]
    names = list(names) if names is not None else [str(i) for i in range(n)]
    shape = G.latent_shape(space)
    if targets.shape[1:] != (3, G.resolution, G.resolution):
        raise LatentFitError(f"targets must be [N, 3, {G.resolution}, {G.resolution}], got {list(targets.shape)}")
    targets = targets.to(dev, torch.float32)
    mask = _to_batch(mask, n, dev, "mask")
    c = _to_batch(c, n, dev, "c")
    if G.c_dim and c is None and space == "z":   # w and w+ already carry the class
        raise LatentFitError(f"generator {G.name!r} is conditional: give a class (--class) to work in z")
    wr_t = _to_batch(cfg.wr if wr is None else wr, n, dev, "wr")
    init = _to_batch(init, n, dev, "init")
    if init is not None and tuple(init.shape[1:]) != shape:
        raise LatentFitError(f"init latents have shape {list(init.shape[1:])}, the {space} space of "
                             f"{G.name!r} needs {list(shape)}")

    use_mse, use_lpips = resolve_loss(cfg.loss)
    lpips_net = LPIPS().to(dev) if use_lpips else None
    mode = cfg.init_mode or ("random" if space == "z" else "mean")
    k = cfg.starts if init is None and mode == "random" else 1
    lr = cfg.lr if cfg.lr is not None else (0.2 if space == "z" else 0.1)
    noise_std = cfg.latent_noise * _latent_std(G, space)
    noise_shapes = G.noise_shapes if cfg.optimize_noise else ()

    # --- candidates: k starts per target, rows grouped by target -------------------------------
    owner = torch.arange(n, device=dev).repeat_interleave(k)
    keys = torch.tensor([name_key(cfg.seed, names[i], j) for i in range(n) for j in range(k)],
                        device=dev)
    with torch.no_grad():
        if init is not None:
            z0 = init[owner].clone()
        elif mode == "random":
            z0 = G.from_z(keyed_normal(keys, 0, (G.z_dim,)), space, None if c is None else c[owner])
        else:
            z0 = G.mean_latent(space, None if c is None else c[:1]).expand(n * k, *shape).clone()
    # per-candidate state; rows are dropped together when candidates are pruned or stop early
    st = {"z": z0.clone(), "z0": z0, "owner": owner, "keys": keys, "target": targets[owner],
          "wr": wr_t[owner], "best": torch.full((n * k,), math.inf, device=dev),
          "since": torch.zeros(n * k, device=dev)}
    if mask is not None:
        st["mask"] = mask[owner]
    if c is not None:
        st["c"] = c[owner]
    for i, s in enumerate(noise_shapes):
        st[f"n{i}"] = keyed_normal(keys, 1 + i, s)
    var_names = ["z"] + [f"n{i}" for i in range(len(noise_shapes))]
    for v in var_names:
        st[f"m_{v}"] = torch.zeros_like(st[v])
        st[f"v_{v}"] = torch.zeros_like(st[v])

    out_z = torch.empty(n, *shape, device=dev)
    out_z0 = torch.empty(n, *shape, device=dev)
    out_noise = [torch.empty(n, *s, device=dev) for s in noise_shapes]
    out_steps = np.full(n, cfg.steps)
    history: list[np.ndarray] = []
    frames = [] if record_frames else None
    frame_now = None
    next_rung = max(1, round(cfg.prune_every * cfg.steps)) if k > 1 else math.inf
    kcur = k
    beta1, beta2, eps = 0.9, 0.999, 1e-8

    def finish(rows: torch.Tensor, steps_done: int):
        tgt = st["owner"][rows]
        out_z[tgt] = st["z"][rows].detach()
        out_z0[tgt] = st["z0"][rows]
        for i in range(len(noise_shapes)):
            out_noise[i][tgt] = st[f"n{i}"][rows]
        out_steps[tgt.cpu().numpy()] = steps_done

    for step in range(cfg.steps):
        if st["z"].shape[0] == 0:
            break
        t = step / cfg.steps
        z = st["z"].requires_grad_(True)
        noises = [st[f"n{i}"].requires_grad_(True) for i in range(len(noise_shapes))]
        ns = noise_std * max(0.0, 1.0 - t / cfg.latent_noise_ramp) ** 2 if cfg.latent_noise_ramp > 0 else 0.0
        zz = z + ns * keyed_normal(st["keys"], _NOISE_COUNTER + step, shape) if ns > 0 else z
        images = G.synthesize(zz, space, st.get("c"), noises or None)
        tg, mk = st["target"], st.get("mask")
        loss = latent_reg(z - st["z0"], cfg.reg) * st["wr"]
        if use_mse:
            loss = loss + pixel_mse(images, tg, mk)
        if lpips_net is not None:
            lp_in = images if mk is None else images * mk + tg * (1 - mk)
            loss = loss + cfg.lpips_weight * lpips_net(lp_in, tg)
        if noises:
            loss = loss + cfg.noise_weight * noise_reg(noises)
        grads = torch.autograd.grad(loss.sum(), [z, *noises])

        lr_t = _lr_at(cfg, lr, t)
        with torch.no_grad():
            for v, g in zip(var_names, grads):
                m, vv = st[f"m_{v}"], st[f"v_{v}"]
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                vv.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                upd = (m / (1 - beta1 ** (step + 1))) / ((vv / (1 - beta2 ** (step + 1))).sqrt() + eps)
                st[v] = st[v].detach() - lr_t * upd
            if cfg.sphere and space == "z":
                st["z"] = st["z"] * (math.sqrt(G.z_dim) / st["z"].norm(dim=1, keepdim=True))
            for i in range(len(noise_shapes)):   # renormalize each map per sample
                nm = st[f"n{i}"]
                nm = nm - nm.mean((1, 2, 3), keepdim=True)
                st[f"n{i}"] = nm / nm.pow(2).mean((1, 2, 3), keepdim=True).sqrt()

        last = step == cfg.steps - 1
        if (step + 1) % cfg.check_every and not last:
            continue
        # --- a check: the only host sync ----------------------------------------------------
        loss = loss.detach()
        best_t = torch.full((n,), math.nan, device=dev).scatter_reduce(
            0, st["owner"], loss, "amin", include_self=False)
        history.append(best_t.cpu().numpy())
        if frames is not None:
            rows = _best_rows(loss, kcur)
            if frame_now is None:
                frame_now = np.zeros((n, G.resolution, G.resolution, 3), np.uint8)
            frame_now[st["owner"][rows].cpu().numpy()] = to_uint8(images[rows])
            frames.append(frame_now.copy())
        if progress is not None:
            progress(step + 1, float(torch.nan_to_num(best_t, nan=math.inf).min()))
        if last:
            break
        keep = None
        if kcur > 1 and step + 1 >= next_rung:           # successive halving, per target
            knew = max(1, math.ceil(kcur / cfg.prune_factor))
            order = torch.argsort(loss.view(-1, kcur), dim=1, stable=True)[:, :knew]
            keep = (torch.arange(order.shape[0], device=dev)[:, None] * kcur + order).flatten()
            kcur = knew
            next_rung = step + 1 + max(1, round(cfg.prune_every * cfg.steps))
            st["best"].fill_(math.inf)
        elif kcur == 1:                                   # early stop of stalled samples
            better = loss < st["best"] * (1 - cfg.tol)
            st["best"] = torch.where(better, loss, st["best"])
            st["since"] = torch.where(better, torch.zeros_like(st["since"]), st["since"] + cfg.check_every)
            stop = st["since"] >= cfg.patience
            if bool(stop.any()):
                finish(torch.nonzero(stop).flatten(), step + 1)
                keep = torch.nonzero(~stop).flatten()
        if keep is not None:
            st = {key: val[keep].detach() for key, val in st.items()}

    if st["z"].shape[0]:   # what is still running: each target's best candidate
        finish(_best_rows(loss, kcur), cfg.steps)

    with torch.no_grad():
        noise_out = out_noise or None
        images = G.synthesize(out_z, space, c, noise_out).clamp(-1, 1)
        mse = pixel_mse(images, targets, mask)   # measured where the objective looked
        lp_in = images if mask is None else images * mask + targets * (1 - mask)
        lp = lpips_net(lp_in, targets) if lpips_net is not None else torch.full_like(mse, math.nan)
        dz = (out_z - out_z0).flatten(1).norm(dim=1)
    if frames is not None:
        frames.append(to_uint8(images))
    hist = np.stack(history, 1) if history else np.zeros((n, 0))
    terms = (["mse"] if use_mse else []) + (["lpips"] if use_lpips else []) + [f"wr*{cfg.reg}"] \
        + (["noise"] if noise_shapes else [])
    wr_in = cfg.wr if wr is None else wr   # the `wr` argument overrides Config.wr
    conf = dataclasses.asdict(cfg) | {"space": space, "lr": lr, "init_mode": mode, "starts": k,
                                      "wr": wr_in if isinstance(wr_in, (int, float)) else
                                      torch.as_tensor(wr_in).tolist()}
    return Result(names=names, space=space, latent=out_z, latent_init=out_z0, images=images,
                  noise=noise_out, loss_history=hist.astype(np.float32), steps=out_steps,
                  metrics={"mse": mse.cpu().numpy(), "psnr": psnr(mse).cpu().numpy(),
                           "lpips": lp.cpu().numpy(), "dz_norm": dz.cpu().numpy()},
                  terms=terms, config=conf, seconds=time.perf_counter() - t_start,
                  frames=np.stack(frames) if frames else None)


def _best_rows(loss: torch.Tensor, kcur: int) -> torch.Tensor:
    """Row of each target's lowest loss; rows come grouped by target, kcur per target."""
    per = loss.view(-1, kcur)
    return torch.arange(per.shape[0], device=loss.device) * kcur + per.argmin(1)
