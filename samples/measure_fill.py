"""Which fill for the parts of a crop outside the photo projects best (NOTES-h-faces.md).

Generator samples (whose true images are known) are put near a photo's edge so their aligned crop
reaches past it; each fill (faces.FILL_MODES) is projected for a few hundred steps, and the result is
compared with the photo's own pixels (PSNR inside the photo) and with the whole true face (PSNR
against the crop of the same face with its full surroundings).

    OMP_NUM_THREADS=1 PYTHONPATH=. python samples/measure_fill.py [STEPS]
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_faces import SOURCES  # noqa: E402

from latent_fit import faces, load_generator, project  # noqa: E402

from conftest import place  # noqa: E402  (the tests' photo maker)

SPOTS = [dict(center=(0.12, 0.5)), dict(center=(0.5, 0.9)), dict(center=(0.88, 0.15), angle=15)]


def masked_psnr(a, b, m):
    return float(10 * torch.log10(4 / (((a - b) ** 2) * m).sum() * (m.sum() * 3)))


def main(steps: int):
    G = load_generator("digiface-dcgan64")
    T, _ = faces.template_for(G)
    rows = {f: [] for f in faces.FILL_MODES}
    for src, spot in zip(SOURCES[:3], SPOTS):
        face = np.asarray(Image.open(src).convert("RGB"))
        photo, A = place(face, (400, 400), side=240, **spot)
        full, A_full = place(face, (1200, 1200), side=240, angle=spot.get("angle", 0))  # room all around
        M = faces.similarity(faces.detect_faces(photo).faces[0].landmarks, T.landmarks)
        truth = faces.warp_crop(full, M @ A @ np.linalg.inv(A_full), T.resolution)
        inside = faces.warp_crop(np.full((400, 400, 3), 255, np.uint8), M, T.resolution, "constant")[:1] > 0.99
        for fill in faces.FILL_MODES:
            crop = faces.warp_crop(photo, M, T.resolution, fill)
            t0 = time.perf_counter()
            r = project(G, crop[None], [src.stem], steps=steps, starts=4, seed=0)
            out = r.images[0]
            rows[fill].append(
                (
                    masked_psnr(out, crop, inside.float()),
                    float(10 * torch.log10(4 / ((out - truth) ** 2).mean())),
                    float(inside.float().mean()),
                    time.perf_counter() - t0,
                )
            )
            print(src.stem, fill, " ".join(f"{v:.2f}" for v in rows[fill][-1]), flush=True)
    print("| fill | PSNR inside the photo dB | PSNR vs the whole true face dB |\n|---|---|---|")
    for fill, v in rows.items():
        v = np.array(v)
        print(f"| {fill} | {v[:, 0].mean():.2f} | {v[:, 1].mean():.2f} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
