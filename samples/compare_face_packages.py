"""The face-package comparison of NOTES-h-faces.md: detection rate, landmark equivariance and time
of dlib (HOG, MMOD, auto) and, where it is installed, mediapipe 0.10.21 (BlazeFace, FaceMesh), on
54 photos made from the shipped samples (9 faces x upright, turned +-20, scaled 0.5 / 1.2, moved).

    OMP_NUM_THREADS=1 PYTHONPATH=. python samples/compare_face_packages.py dlib PHOTOS.npz
    OMP_NUM_THREADS=1 /tmp/mpvenv/bin/python samples/compare_face_packages.py mediapipe PHOTOS.npz
The first makes the photos and saves them to PHOTOS.npz; the second reads them, in a venv with
mediapipe==0.10.21 and pillow (it pins numpy<2 and protobuf<5: not beside the project).
Landmark error: a variant's landmarks mapped back into the face's own pixels, mean distance to the
upright variant's, over the eye distance.
"""

import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

VARIANTS = {
    "base": {},
    "rot+20": dict(angle=20),
    "rot-20": dict(angle=-20),
    "scale0.5": dict(side=130),
    "scale1.2": dict(side=312),
    "moved": dict(side=208, center=(0.3, 0.65)),
}


def make_photos(path: str) -> None:
    """The 54 photos, their names and face->photo matrices, into an .npz file."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_faces import SOURCES

    from conftest import place  # the tests' photo maker

    rows = []
    for src in SOURCES:
        face = np.asarray(Image.open(src).convert("RGB"))
        rows += [(f"{src.stem}/{v}", *place(face, (480, 400), **{"side": 260, **kw})) for v, kw in VARIANTS.items()]
    np.savez_compressed(
        path, names=[r[0] for r in rows], photos=np.stack([r[1] for r in rows]), mats=np.stack([r[2] for r in rows])
    )


def evaluate(label: str, detect, path: str) -> None:
    """detect(photo) -> landmarks [K, 2] of the largest face, or None."""
    found, times = {}, []
    d = np.load(path)
    for name, p, A in zip(d["names"], d["photos"], d["mats"]):
        name = str(name)
        t0 = time.perf_counter()
        lm = detect(p)
        times.append(time.perf_counter() - t0)
        if lm is not None:
            found[name] = (np.c_[lm, np.ones(len(lm))] @ np.linalg.inv(A).T)[:, :2]
    errs = []
    for name, lm in found.items():
        base = found.get(name.split("/")[0] + "/base")
        if not name.endswith("/base") and base is not None:
            errs.append(np.linalg.norm(lm - base, axis=1).mean() / np.linalg.norm(base[:2].mean(0) - base[2:4].mean(0)))
    print(
        f"| {label} | {len(found)}/{len(times)} | {np.median(errs):.3f} ({np.quantile(errs, 0.9):.2f}) | "
        f"{np.median(times) * 1000:.0f} ms |",
        flush=True,
    )


def dlib_rows(path: str):
    from latent_fit import faces, load_generator

    make_photos(path)
    for det in ("auto", "cnn", "hog"):

        def detect(p, det=det):
            f = faces.detect_faces(p, detector=det, min_size=0).faces
            return f[0].landmarks if f else None

        evaluate(f"dlib {det} + 5-point", detect, path)
    template, _ = faces.template_for(load_generator("digiface-dcgan64"))

    def refined(p):
        a = faces.align_photo(p, template)
        return a.faces[0].landmarks if a.faces else None

    evaluate("dlib auto + 5-point + refine_landmarks (align_photo)", refined, path)


def mediapipe_rows(path: str):
    import mediapipe as mp

    fd = mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5)
    fm = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=4)

    def blazeface(p):  # eye centres twice (as the 4 eye corners), nose tip
        r = fd.process(p)
        if not r.detections:
            return None
        k = np.array([[q.x * p.shape[1], q.y * p.shape[0]] for q in r.detections[0].location_data.relative_keypoints])
        return k[[0, 0, 1, 1, 2]]

    def mesh(p):  # eye corners and nose, as dlib's 5 points
        r = fm.process(p)
        if not r.multi_face_landmarks:
            return None
        m = r.multi_face_landmarks[0].landmark
        return np.array([[m[i].x * p.shape[1], m[i].y * p.shape[0]] for i in (33, 133, 263, 362, 2)])

    evaluate("mediapipe BlazeFace full range", blazeface, path)
    evaluate("mediapipe FaceMesh", mesh, path)


if __name__ == "__main__":
    print("| candidate | found | landmark error / eye distance, median (p90) | time per photo |\n|---|---|---|---|")
    {"dlib": dlib_rows, "mediapipe": mediapipe_rows}[sys.argv[1]](sys.argv[2])
