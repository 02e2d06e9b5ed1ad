"""Measure whole photos through `project` (docs/faces.md, "Photos through project"): real photos cut
by hand (the shipped crops, --align none) against the same photos aligned automatically, with and
without --tune, and a group photo; projection PSNR and id_similarity per target. Then the cost of
finding and aligning faces and of pasting back, beside a default projection per face, in one process.

    OMP_NUM_THREADS=1 PYTHONPATH=. python samples/measure_photos.py OUT_FOLDER
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from latent_fit import faces, load_generator
from latent_fit.images import load_photo
from latent_fit.runs.project import project_files

SAMPLES = Path(__file__).resolve().parent
HAND = [SAMPLES / "targets" / "astronaut.png", SAMPLES / "photos" / "grace_hopper.png"]
WHOLE = [SAMPLES / "photos" / "grace_hopper_whole.png"]


def group_photo(out: Path) -> Path:
    """Two real photos side by side on one canvas: a group photo of two people."""
    a, b = (load_photo(p) for p in (SAMPLES / "targets" / "astronaut.png", WHOLE[0]))
    h = max(a.shape[0], b.shape[0])
    canvas = np.full((h, a.shape[1] + b.shape[1], 3), 200, np.uint8)
    canvas[: a.shape[0], : a.shape[1]], canvas[: b.shape[0], a.shape[1] :] = a, b
    path = out / "group.png"
    Image.fromarray(canvas).save(path)
    return path


def rows(G, specs, out: Path, align: str, tune: bool) -> list[dict]:
    from latent_fit.config import Tuning

    t0 = time.perf_counter()
    rep = project_files(G, [str(s) for s in specs], out, align=align, tuning=Tuning(tune_rank="full") if tune else None)
    print(f"{out.name}: {rep.summary} ({time.perf_counter() - t0:.0f} s)", *rep.notes, *rep.errors, sep="\n  ")
    return json.loads((out / "metrics.json").read_text())


def cost(G, out: Path) -> None:
    """Seconds per face: detection + alignment, paste-back, and a default projection (8 faces, batched)."""
    T, _ = faces.template_for(G)
    photo = load_photo(WHOLE[0])
    faces.align_photo(photo, T)  # models loaded
    t0 = time.perf_counter()
    for _ in range(5):
        a = faces.align_photo(photo, T)
    t_align = (time.perf_counter() - t0) / 5
    t0 = time.perf_counter()
    for _ in range(5):
        faces.paste_back(photo, a.crops, a.transforms)
    t_paste = (time.perf_counter() - t0) / 5
    eight = sorted((SAMPLES / "targets").glob("face_*.png")) + HAND
    t0 = time.perf_counter()
    project_files(G, [str(p) for p in eight], out / "cost", align="none")
    t_proj = (time.perf_counter() - t0) / len(eight)
    print(
        f"per face: detection + alignment {t_align:.3f} s ({100 * t_align / t_proj:.1f}% of the projection), "
        f"paste-back {t_paste:.3f} s ({100 * t_paste / t_proj:.2f}%), default projection {t_proj:.2f} s "
        f"(batch of {len(eight)}, everything project_files does)"
    )


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    G = load_generator("digiface-dcgan64")
    group = group_photo(out)
    table = []
    for tune in (False, True):
        hand = rows(G, HAND, out / f"hand{'_tuned' * tune}", "none", tune)
        auto = rows(G, HAND + WHOLE + [group], out / f"auto{'_tuned' * tune}", "auto", tune)
        for way, rs in (("hand crop", hand), ("automatic", auto)):
            for r in rs:
                table.append((r["target"], way, tune, r["psnr"], r.get("id_similarity")))
    print("| target | crop | --tune | PSNR dB | id_similarity |\n|---|---|---|---|---|")
    for name, way, tune, psnr, ids in sorted(table, key=lambda t: (t[0], t[2], t[1])):
        print(f"| {name} | {way} | {'yes' if tune else 'no'} | {psnr:.1f} | {'' if ids is None else f'{ids:.3f}'} |")
    cost(G, out)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
