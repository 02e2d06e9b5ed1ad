"""Measure pivotal tuning on photos: python samples/measure_tuning.py PHOTO... (prints JSON lines).

Per photo, alone: projection and tuning (defaults) CPU seconds, pivot / tuned PSNR, locality,
‖Δθ‖, the tuned file in fp16 against fp32, and how much ±2σ edits along the first three PCA
directions change the tuned image against the original generator. The numbers in the tuning
measurements of docs/real-photos.md come from this script (one thread: OMP_NUM_THREADS=1).
"""

import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from latent_fit import apply_direction, load_generator, pca_directions, project
from latent_fit.generators.tuned import apply_tuned, save_tuned
from latent_fit.images import load_image
from latent_fit.objective import pixel_mse, psnr
from latent_fit.tuning import tune

warnings.simplefilter("ignore")  # offline: LPIPS falls back to the pixel loss
torch.set_num_threads(1)
G = load_generator()
dirs, std = pca_directions(G, 3)
tmp = Path(tempfile.mkdtemp())
for path in sys.argv[1:]:
    name, x = Path(path).stem, load_image(path, G.resolution)[None]
    t = time.process_time()
    piv = project(G, x, [name])
    proj_cpu, t = time.process_time() - t, time.process_time()
    res = tune(G, piv.latent, x, [name])
    out = {
        "photo": name,
        "proj_cpu_s": proj_cpu,
        "tune_cpu_s": time.process_time() - t,
        **{k: float(v[0]) for k, v in res.metrics.items()},
    }
    for dtype, tag in ((torch.float16, "fp16"), (torch.float32, "fp32")):
        f = tmp / f"{name}.{tag}.tuned.safetensors"
        save_tuned(f, {k: v[0] for k, v in res.delta.items()}, G, res.settings, dtype=dtype)
        Gt = apply_tuned(G, f)
        with torch.no_grad():
            img = Gt.synthesize(piv.latent, "z").clamp(-1, 1)
        out |= {
            f"size_{tag}_mb": f.stat().st_size / 1e6,
            f"psnr_{tag}_file": float(psnr(pixel_mse(img, x))[0]),
            f"maxdiff_{tag}_file": float((img - res.images).abs().max()),
        }
    lat = torch.cat([apply_direction(piv.latent, dirs[j], [-2 * std[j], 2 * std[j]])[0] for j in range(3)])
    with torch.no_grad():
        out["edit_change_tuned"] = float((Gt.synthesize(lat, "z").clamp(-1, 1) - res.images).abs().mean())
        out["edit_change_original"] = float((G.synthesize(lat, "z").clamp(-1, 1) - piv.images).abs().mean())
    print(json.dumps(out), flush=True)
