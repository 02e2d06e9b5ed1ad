"""How many held-out samples of the bundled generator `--align auto` uses as they are (so they keep
the latents of `--align none`), and how far their landmarks lie from the template's, in template
radii (docs/faces.md, "Used as is"):

    OMP_NUM_THREADS=1 PYTHONPATH=. python samples/measure_as_is.py 7 11
"""

import sys
import time

import numpy as np
import torch

from latent_fit import faces, load_generator
from latent_fit.images import to_uint8


def main(seeds: list[int], n: int = 200) -> None:
    G = load_generator("digiface-dcgan64")
    T, _ = faces.template_for(G)
    for seed in seeds:
        with torch.no_grad():
            images = to_uint8(G.synthesize(G.sample(n, seed=seed), G.default_space))
        t0 = time.perf_counter()
        kept = sum(faces.align_photo(img, T).as_is for img in images)
        seconds = (time.perf_counter() - t0) / n
        d = [np.linalg.norm(faces.refine_landmarks(img, T.landmarks, T) - T.landmarks, axis=1).mean() for img in images]
        print(
            f"seed {seed}: {kept} of {n} used as they are ({1000 * seconds:.0f} ms each); landmark distance in "
            f"template radii: median {np.median(d) / T.radius:.2f}, 99th pct {np.quantile(d, 0.99) / T.radius:.2f}, "
            f"max {max(d) / T.radius:.2f} (tolerance {faces.AS_IS})"
        )


if __name__ == "__main__":
    main([int(s) for s in sys.argv[1:]] or [7, 11])
