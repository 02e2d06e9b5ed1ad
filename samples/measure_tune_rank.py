"""Measure low-rank tuning on photos: python samples/measure_tune_rank.py PHOTOS [--default] RANK:LR...
(JSON lines).

PHOTOS: comma-separated image files, projected together briefly (100 steps, 2 starts: quick
pivots; with --default, projection's defaults, as bench --tuning does), then tuned together at
each RANK:LR (e.g. 8 full 8:1e-3; LR is tune_lr, default 3e-4, at which full changes and
low-rank factors both step). `trunc`: tune at full rank, then render the change cut by SVD to each
rank per weight (is full tuning's change low rank?). The measurements of docs/real-photos.md's
low-rank section come from this script (one thread: OMP_NUM_THREADS=1).
"""

import json
import sys
import time
import warnings

import torch

from latent_fit import load_generator, project
from latent_fit.devices import keep_freed_memory
from latent_fit.images import load_image
from latent_fit.objective import pixel_mse, psnr
from latent_fit.tuning import render_tuned, tune

warnings.simplefilter("ignore")  # offline: LPIPS falls back to the pixel loss
keep_freed_memory()
torch.set_num_threads(1)
G = load_generator()
paths = sys.argv[1].split(",")
x = torch.stack([load_image(p, G.resolution) for p in paths])
names = [p.rsplit("/", 1)[-1].rsplit(".", 1)[0] for p in paths]
quick = {} if "--default" in sys.argv else {"steps": 100, "starts": 2}
piv = project(G, x, names, loss="mse", **quick)
print(json.dumps({"pivot_psnr": piv.metrics["psnr"].round(2).tolist()}), flush=True)


def truncated(delta, r):
    """Each weight's full change cut to its top r singular directions ([d0, rest] as lowrank)."""
    out = {}
    for k, v in delta.items():
        m = v.flatten(2) if v.ndim > 2 else None
        if m is None or r >= min(m.shape[1:]):
            out[k] = v
            continue
        U, S, Vh = torch.linalg.svd(m, full_matrices=False)
        out[k] = ((U[..., :r] * S[..., None, :r]) @ Vh[..., :r, :]).reshape(v.shape)
    return out


for spec in [a for a in sys.argv[2:] if a != "--default"]:
    rank, _, lr = spec.partition(":")
    t = time.process_time()
    res = tune(
        G,
        piv.latent,
        x,
        names,
        loss="mse",
        tune_rank="full" if rank in ("full", "trunc") else int(rank),
        **({"tune_lr": float(lr)} if lr else {}),
    )
    out = {
        "spec": spec,
        "cpu_s": round(time.process_time() - t, 1),
        "psnr": res.metrics["psnr"].round(2).tolist(),
        "locality": res.metrics["locality_psnr"].round(2).tolist(),
    }
    if rank == "trunc":
        with torch.no_grad():
            for r in (4, 8, 16, 32, 64):
                img = render_tuned(G, truncated(res.delta, r), piv.latent[:, None], "z")[:, 0].clamp(-1, 1)
                out[f"psnr_trunc_{r}"] = psnr(pixel_mse(img, x)).round(decimals=2).tolist()
    print(json.dumps(out), flush=True)
