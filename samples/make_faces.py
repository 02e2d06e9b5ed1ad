"""Regenerate samples/targets/face_*.png and samples/latents/face_*.npz from fixed seeds."""

from pathlib import Path

import numpy as np

from latent_fit import load_generator
from latent_fit.images import save_png, to_uint8
from latent_fit.latents import write_latent_file

here = Path(__file__).parent
G = load_generator("digiface-dcgan64")
for seed in range(6):
    z = G.sample(1, seed=seed, space="z")
    save_png(to_uint8(G.synthesize(z))[0], here / "targets" / f"face_{seed:02d}.png")
    write_latent_file(
        here / "latents" / f"face_{seed:02d}.npz",
        latent=z[0],
        latent_init=z[0],
        space="z",
        generator=G.name,
        generator_sha256=G.sha256,
        loss_history=np.zeros(0, np.float32),
        config={"seed": seed},
        metrics={},
    )
