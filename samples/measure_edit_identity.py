"""How much of a face's identity a painted edit keeps, against w_r (docs/editing.md).

Faces face_00-03 (their projected latents in samples/latents) each get the upper half of another
face painted in (face_04, face_05 in turn), at several w_r, in one batch of 300 steps; the error in
the mask, ||dz|| and id_similarity (faces.id_similarity with the bundled template: the cosine of
dlib's face descriptors of the face before and after the edit) are printed per w_r. Run from the
repository root:

    OMP_NUM_THREADS=1 PYTHONPATH=. python samples/measure_edit_identity.py [--steps 300]
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from latent_fit import edit, load_generator, read_latent_file, render
from latent_fit.faces import id_similarity, template_for

here = Path(__file__).parent
parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--steps", type=int, default=300)
parser.add_argument("--wr", default="1e-4,1e-3,1e-2,1e-1")
args = parser.parse_args()

G = load_generator("digiface-dcgan64")
template, _ = template_for(G)
wrs = [float(w) for w in args.wr.split(",")]
z0 = torch.stack([torch.from_numpy(read_latent_file(here / "latents" / f"face_0{i}.npz")["latent"]) for i in range(6)])
faces, donors = z0[:4], render(G, z0[4:])
mask = torch.zeros(1, 1, 64, 64)
mask[..., :32, :] = 1
n = len(faces)
latents = faces.repeat(len(wrs), 1)  # row w * n + i: face i at wrs[w]
request = donors[torch.arange(n) % 2].repeat(len(wrs), 1, 1, 1)
wr = torch.tensor(wrs).repeat_interleave(n)
names = [f"face_0{i}@{w:g}" for w in wrs for i in range(n)]
res = edit(G, latents, request, mask.expand(len(names), -1, -1, -1), names, steps=args.steps, wr=wr, loss="mse")
ids = id_similarity(res.before, res.images, template)
dz = (res.latent - res.latent_init).flatten(1).norm(dim=1).numpy()
print("w_r | error in the mask before -> after | ||dz|| | id_similarity min / median / max")
for w, rows in zip(wrs, np.arange(len(names)).reshape(len(wrs), n)):
    m = res.metrics
    print(
        f"{w:g} | {np.median(m['mask_mse_before'][rows]):.3f} -> {np.median(m['mask_mse_after'][rows]):.3f} | "
        f"{np.median(dz[rows]):.2f} | {ids[rows].min():.3f} / {np.median(ids[rows]):.3f} / {ids[rows].max():.3f}"
    )
