"""Edit a folder of latents in one batch with the Python API.

Every face gets darker hair: the request is the face itself with its top rows darkened, a soft
mask says where it applies, and `edit` moves all latents toward it together. Then each latent
steps along the generator's first principal direction. Run from the repository root:

    python samples/edit_folder.py [LATENTS_DIR] [OUT_DIR] [--wr 0.01] [--steps 300]
"""

import argparse
from pathlib import Path

import torch

from latent_fit import (
    apply_direction,
    edit,
    load_generator,
    pca_directions,
    read_latent_file,
    render,
    write_latent_file,
)
from latent_fit.images import grid, save_png, to_uint8

here = Path(__file__).parent
parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("latents", nargs="?", type=Path, default=here / "latents")
parser.add_argument("out", nargs="?", type=Path, default=Path("out/edit_folder"))
parser.add_argument("--wr", type=float, default=1e-2, help="larger: stay nearer the original")
parser.add_argument("--steps", type=int, default=300)
args = parser.parse_args()

G = load_generator("digiface-dcgan64")
files = sorted(args.latents.glob("*.npz"))
z0 = torch.stack([torch.from_numpy(read_latent_file(f)["latent"]) for f in files])
before = render(G, z0)

# The request: the top third darkened, fading out over 8 rows below it.
r = G.resolution
rows = torch.arange(r, dtype=torch.float32)
mask = (1 - (rows - r // 3).clamp(0, 8) / 8).view(1, 1, r, 1).expand(len(files), 1, r, r)
request = (before + 1) * 0.35 - 1

res = edit(G, z0, request, mask, [f.stem for f in files], wr=args.wr, steps=args.steps)

args.out.mkdir(parents=True, exist_ok=True)
painted = before + (request - before) * mask
for i, f in enumerate(files):
    write_latent_file(
        args.out / f.name,
        latent=res.latent[i],
        latent_init=res.latent_init[i],
        space=res.space,
        generator=G.name,
        generator_sha256=G.sha256,
        loss_history=res.loss_history[i],
        config=res.config,
        metrics={k: float(v[i]) for k, v in res.metrics.items()},
    )
    save_png(
        grid([[to_uint8(x[i : i + 1])[0] for x in (before, painted, res.images)]]), args.out / f"{f.stem}_compare.png"
    )
    print(
        f"{f.stem}: error in the mask {res.metrics['mask_mse_before'][i]:.3f} -> "
        f"{res.metrics['mask_mse_after'][i]:.3f}, outside change {res.metrics['outside_change'][i]:.3f}, "
        f"||dz|| {res.metrics['dz_norm'][i]:.2f}"
    )

# Along the first principal direction, strengths -3..3, one strip row per latent.
direction = pca_directions(G, 1)[0][0]
strips = to_uint8(render(G, apply_direction(z0, direction, [-3, -1.5, 0, 1.5, 3]).flatten(0, 1)))
save_png(grid([list(strips[i * 5 : (i + 1) * 5]) for i in range(len(files))]), args.out / "pca0_strips.png")
print(f"wrote {len(files)} edited latents, comparisons and pca0_strips.png to {args.out}")
