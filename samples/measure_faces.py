"""Measure latent_fit.faces on photos made from the shipped samples (NOTES-h-faces.md):
equivariance of the aligned crops (PSNR against the crop of the plain upsampled face, beside a
2-pixel shift of that crop), detection + alignment time, paste-back time, and id_similarity of
the same face (a photo's crop against its turned, scaled, moved copies) and of different faces
(the photos' crops against each other; pairs of the generator's samples).

    OMP_NUM_THREADS=1 PYTHONPATH=. python samples/measure_faces.py
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_faces import SOURCES  # noqa: E402

from latent_fit import faces, load_generator  # noqa: E402

from conftest import place  # noqa: E402  (the tests' photo maker)

VARIANTS = {
    "rot+20": dict(angle=20),
    "rot-20": dict(angle=-20),
    "scale0.5": dict(side=130),
    "scale1.2": dict(side=310),
    "moved": dict(side=200, center=(0.3, 0.65)),
}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(4 / ((a - b) ** 2).mean()))


def main():
    G = load_generator("digiface-dcgan64")
    T, _ = faces.template_for(G)
    rows, t_align, t_paste, bases, same = {k: [] for k in ["shift2"] + list(VARIANTS)}, [], [], [], []
    for src in SOURCES:
        face = np.asarray(Image.open(src).convert("RGB"))
        photo, _ = place(face, (480, 400), side=260)
        base = faces.align_photo(photo, T)
        shifted = faces.warp_crop(
            photo, np.array([[1, 0, 2], [0, 1, 0], [0, 0, 1.0]]) @ base.transforms[0], T.resolution
        )
        rows["shift2"].append(psnr(base.crops[0], shifted))
        bases.append(base.crops[0])
        for name, kw in VARIANTS.items():
            p, _ = place(face, (480, 400), **{"side": 260, **kw})
            t0 = time.perf_counter()
            al = faces.align_photo(p, T)
            t_align.append(time.perf_counter() - t0)
            rows[name].append(psnr(base.crops[0], al.crops[0]) if len(al.faces) else float("nan"))
            same += list(faces.id_similarity(base.crops[:1], al.crops[:1], T)) if len(al.faces) else []
            t0 = time.perf_counter()
            faces.paste_back(p, al.crops, al.transforms)
            t_paste.append(time.perf_counter() - t0)
        print(src.stem, " ".join(f"{k} {v[-1]:.1f}" for k, v in rows.items()), flush=True)
    print("| variant | median PSNR dB | min | not found |\n|---|---|---|---|")
    for k, v in rows.items():
        v = np.array(v)
        print(f"| {k} | {np.nanmedian(v):.1f} | {np.nanmin(v):.1f} | {np.isnan(v).sum()} |")
    print(
        f"detection + alignment of a 480x400 photo: median {np.median(t_align):.2f} s; "
        f"paste-back: median {np.median(t_paste) * 1000:.0f} ms"
    )
    i, j = np.triu_indices(len(bases), 1)
    b = torch.stack(bases)
    other = faces.id_similarity(b[i], b[j], T)
    with torch.no_grad():
        x = G.synthesize(G.sample(32, seed=1))
    samples = faces.id_similarity(x[:16], x[16:], T)
    for what, v in (("same face", same), ("different photos", other), ("different generator samples", samples)):
        v = np.asarray(v)
        print(
            f"id_similarity, {what}: n {np.isfinite(v).sum()} (+{np.isnan(v).sum()} no face), "
            f"min {np.nanmin(v):.3f} median {np.nanmedian(v):.3f} max {np.nanmax(v):.3f}"
        )


if __name__ == "__main__":
    main()
