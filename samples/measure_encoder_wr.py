"""Measure the w_r trade-off from the bundled encoder's start (docs/learned-starts.md):
    OMP_NUM_THREADS=1 python samples/measure_encoder_wr.py [raw|relative]

Held-out targets: 8 faces G(z*) from seeds 9101-9108 (never the tests' 123), saved as 8-bit
images, and the three real photos. Each group runs as `latent-fit sweep --encoder auto` does:
every w_r of a target starts from E(x), ENCODED settings, pixel loss, one batched run. Prints
the median PSNR, ||dz||, realism and jacobian_norm per w_r, and the suggested w_r, per group.
"""

import sys
from pathlib import Path

import numpy as np
import torch

from latent_fit import ENCODED, load_encoder, load_generator, suggest_wr, sweep
from latent_fit.config import SWEEP_WRS
from latent_fit.images import load_image, to_uint8

torch.set_num_threads(1)
units = sys.argv[1] if len(sys.argv) > 1 else "raw"
here = Path(__file__).parent
G = load_generator("digiface-dcgan64")
E = load_encoder("auto", G)
with torch.no_grad():
    faces = to_uint8(G.synthesize(torch.cat([G.sample(1, seed=s) for s in range(9101, 9109)])))
groups = {
    "in-domain": (
        torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 127.5 - 1,
        [f"seed{s}" for s in range(9101, 9109)],
    ),
    "photos": (
        torch.stack(
            [
                load_image(here / p, G.resolution)
                for p in ("targets/astronaut.png", "photos/grace_hopper.png", "photos/cameraman.png")
            ]
        ),
        ["astronaut", "grace_hopper", "cameraman"],
    ),
}
for group, (x, names) in groups.items():
    sw = sweep(G, x, SWEEP_WRS[units], names, config=ENCODED, encoder=E, loss="mse", wr_units=units)
    best, why = suggest_wr(sw)
    print(f"# {group}: {len(names)} targets, {units} units, {sw.result.seconds:.0f} s")
    print("| w_r | " + " | ".join(f"{w:g}" for w in sw.wrs) + " |")
    print("|---" * (len(sw.wrs) + 1) + "|")
    for key, label, fmt in (
        ("psnr", "PSNR (dB)", "{:.1f}"),
        ("dz_norm", "‖Δz‖ from E(x)", "{:.2f}"),
        ("realism", "realism", "{:.2f}"),
        ("jacobian_norm", "jacobian_norm", "{:.2f}"),
    ):
        med = np.nanmedian(sw.metrics[key], 0)
        print(f"| {label} | " + " | ".join(fmt.format(v) for v in med) + " |")
    print(f"suggested: {why}\n", flush=True)
