"""Measure the useful range of relative w_r (docs/choosing-wr.md): projections of targets x w_r in one
batched run each, from one start per target, with raw w_r = relative w_r * wr_factor(start).

    OMP_NUM_THREADS=1 python samples/measure_wr_units.py EXPERIMENT [--steps N] [--json OUT.json]

EXPERIMENT: prior (jacobian_norm and wr_factor of prior latents, and the estimate's cost) or one
of EXPERIMENTS: dcgan-random, dcgan-near, sg2-random, sg2-near, rescaled-random
(the bundled DCGAN with its latent scaled by 3, G'(z) = G(z/3), from the mapped random starts),
raw-dcgan, raw-rescaled (the same raw w_r on both). Targets are generator samples from seed 2024 (plus the
astronaut photo for the DCGAN), never the tests' seed 123. The StyleGAN2 is a small random
network (no trained StyleGAN2 exists offline): constructor init, ToRGB weights scaled by 0.3 so
its images lie mostly in [-1, 1]; it is measured in w.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from latent_fit import SweepResult, load_generator, project, realism, render, suggest_wr
from latent_fit.generators.stylegan2 import StyleGAN2Generator
from latent_fit.images import load_image
from latent_fit.jacobian import jacobian_norm, wr_factor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import Rescaled  # noqa: E402  (the tests' wrapper, one definition)

RELATIVE = [0, 1e-2, 3e-2, 0.1, 0.3, 1, 3, 10, 30, 100]
RAW = [0, 1e-4, 1e-3, 1e-2, 1e-1, 1]
ASTRONAUT = Path(__file__).parent / "targets" / "astronaut.png"


def random_stylegan2(seed: int = 0) -> StyleGAN2Generator:
    torch.manual_seed(seed)
    G = StyleGAN2Generator(
        z_dim=64,
        c_dim=0,
        w_dim=64,
        img_resolution=32,
        img_channels=3,
        mapping_kwargs=dict(num_layers=4),
        synthesis_kwargs=dict(channel_base=2048, channel_max=64),
    )
    with torch.no_grad():
        for name, p in G.named_parameters():
            if "torgb" in name and name.endswith("weight"):
                p.mul_(0.3)
    G.name = "random-stylegan2-32"
    return G.freeze()


EXPERIMENTS = {  # name: (generator, start, units)
    "dcgan-random": ("dcgan", "random", "relative"),
    "dcgan-near": ("dcgan", "near", "relative"),
    "sg2-random": ("sg2", "random", "relative"),
    "sg2-near": ("sg2", "near", "relative"),
    "rescaled-random": ("rescaled", "random", "relative"),
    "raw-dcgan": ("dcgan", "random", "raw"),
    "raw-rescaled": ("rescaled", "random", "raw"),
}


def material(experiment: str):
    """(G, space, targets, starts, names, latent scale a, w_r grid, units)."""
    family, start, units = EXPERIMENTS[experiment]
    if family == "sg2":
        G = random_stylegan2()
    else:
        G = load_generator("digiface-dcgan64")
        G = Rescaled(G, 3.0) if family == "rescaled" else G
    space = G.default_space
    truth = G.sample(6, seed=2024, space=space)
    targets = render(G, truth, space)
    names = [f"t{i}" for i in range(6)]
    if family != "sg2" and start == "random":
        targets = torch.cat([targets, load_image(ASTRONAUT, G.resolution)[None]])
        names.append("astronaut")
    if start == "random":
        starts = G.sample(len(names), seed=2025, space=space)
    else:  # near the truth: half a prior standard deviation per element
        std = float((G.sample(1000, seed=1, space=space) - truth.mean(0)).std())
        starts = truth + 0.5 * std * torch.randn(truth.shape, generator=torch.Generator().manual_seed(2026))
    return G, space, targets, starts, names, getattr(G, "a", 1.0), (RAW if units == "raw" else RELATIVE), units


def run(experiment: str, steps: int, lr: float | None) -> dict:
    G, space, targets, starts, names, a, wrs, units = material(experiment)
    t, w = len(names), len(wrs)
    factor = wr_factor(G, starts, space, names=names)
    raw = torch.tensor(wrs, dtype=torch.float32).expand(t, w) * (factor[:, None] if units == "relative" else 1)
    rows = [n for n in names for _ in range(w)]
    opts = dict(steps=steps, lr=lr, loss="mse", optimize_noise=False)
    res = project(
        G, targets.repeat_interleave(w, 0), rows, init=starts.repeat_interleave(w, 0), wr=raw.flatten(), **opts
    )
    m = {k: np.asarray(v) for k, v in res.metrics.items()}
    if not isinstance(G, Rescaled):
        m |= realism(G, res.latent, space)
    m["dz_g_units"] = m["dz_norm"] / a
    m["jacobian_norm"] = jacobian_norm(G, res.latent, space, names=rows).numpy()
    m = {k: v.reshape(t, w) for k, v in m.items()}
    j, why = suggest_wr(SweepResult(names=names, wrs=np.asarray(wrs, float), result=None, metrics=m))
    return {
        "experiment": experiment,
        "generator": G.name,
        "space": space,
        "units": units,
        "steps": steps,
        "names": names,
        "wrs": wrs,
        "wr_factor": factor.tolist(),
        "seconds": res.seconds,
        "knee": wrs[j],
        "reason": why,
        "metrics": {k: v.tolist() for k, v in m.items()},
    }


def prior_stats() -> None:
    """jacobian_norm and wr_factor over 256 prior latents (seed 4242), and what the estimate costs
    next to one projection step (forward + backward) of the same latents, timed alternately."""
    from latent_fit.jacobian import PROJECTIONS, prior_sq_norm_median

    for G in (load_generator("digiface-dcgan64"), random_stylegan2()):
        space = G.default_space
        x = G.sample(256, seed=4242, space=space)
        names = [f"p{i}" for i in range(256)]
        rel = jacobian_norm(G, x, space, names=names).numpy()
        f = wr_factor(G, x, space, names=names).numpy()
        q = lambda v: " / ".join(f"{np.percentile(v, p):.3g}" for p in (5, 25, 50, 75, 95))
        print(
            f"{G.name} in {space}: prior median ||J||_F^2 {prior_sq_norm_median(G, space):.4g}; over 256 prior "
            f"latents, percentiles 5/25/50/75/95: jacobian_norm {q(rel)}; wr_factor {q(f)}"
        )
        est, step = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            wr_factor(G, x[:16], space)
            est.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            z = x[:16].clone().requires_grad_(True)
            G.synthesize(z, space).square().sum().backward()
            step.append(time.perf_counter() - t0)
        print(
            f"  estimate with {PROJECTIONS} projections: {min(est) / 16 * 1e3:.0f} ms per latent = "
            f"{min(est) / min(step):.0f} projection steps of the same latents"
        )


def report(r: dict) -> None:
    f = np.asarray(r["wr_factor"])
    print(
        f"{r['experiment']}: {r['generator']} in {r['space']}, {r['units']} w_r, {len(r['names'])} targets, "
        f"{r['steps']} steps, {r['seconds']:.0f} s; wr_factor median {np.median(f):.3g} "
        f"(range {f.min():.3g}..{f.max():.3g})"
    )
    m = {k: np.asarray(v) for k, v in r["metrics"].items()}
    cols = [k for k in ("psnr", "dz_g_units", "realism", "jacobian_norm") if k in m]
    print("  w_r      " + "  ".join(f"{c:>22}" for c in cols) + "   (median [min..max] over targets)")
    for j, wr in enumerate(r["wrs"]):
        cells = [f"{np.median(m[c][:, j]):7.3g} [{m[c][:, j].min():5.3g}..{m[c][:, j].max():5.3g}]" for c in cols]
        print(f"  {wr:<8g} " + "  ".join(f"{s:>22}" for s in cells))
    print(f"  suggest_wr: {r['reason']}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("experiment")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.experiment == "prior":
        return prior_stats()
    r = run(args.experiment, args.steps, args.lr)
    report(r)
    if args.json:
        args.json.write_text(json.dumps(r))


if __name__ == "__main__":
    main()
