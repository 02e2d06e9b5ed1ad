"""Edits of latents cut from a whole photo give the photo back edited (painted and direction
edits: <stem>_photo.png; interpolate: <mode>_photo.mp4), and edits measure identity
(id_similarity of the face before and after)."""

import csv
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from latent_fit import faces, read_latent_file, write_latent_file
from latent_fit.generators.base import Generator
from latent_fit.runs.edit import edit_files

FAST = ["--steps", "10", "--loss", "mse"]


def load(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def footprints(link, shape, margin: float) -> np.ndarray:
    """[H, W] bool: photo pixels whose centre maps into the link's crop grown by `margin` crop px."""
    y, x = np.mgrid[: shape[0], : shape[1]] + 0.5
    u, v, _ = np.tensordot(link.transform, np.stack([x, y, np.ones_like(x)]), 1)
    return (u > -margin) & (u < 64 + margin) & (v > -margin) & (v < 64 + margin)


def links(folder):
    return [faces.PhotoLink.read(p, read_latent_file(p)) for p in sorted(folder.glob("*.npz"))]


def request(path):
    """A painted request: an opaque red bar over the mouth, transparent elsewhere."""
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[38:48, 18:46] = (230, 40, 40, 255)
    Image.fromarray(rgba).save(path)
    return path


def test_painted_edit_gives_one_photo_with_both_faces_edited(cli, tmp_path, face_photo):
    out = tmp_path / "out"
    res = cli("edit", face_photo / "latents", "--target", request(tmp_path / "req.png"), *FAST, "-o", out)
    assert res.exit_code == 0, res.stderr
    assert [p.name for p in out.glob("*_photo.png")] == ["group_photo.png"]  # two faces, one photo
    photo, edited = load(face_photo / "group.png"), load(out / "group_photo.png")
    assert edited.shape == photo.shape
    lks = links(face_photo / "latents")
    outside = ~np.any([footprints(lk, photo.shape, 1) for lk in lks], axis=0)
    assert outside.mean() > 0.5 and np.array_equal(edited[outside], photo[outside])
    for lk in lks:  # the middle of each face changed
        inside = footprints(lk, photo.shape, -16)
        assert np.abs(edited[inside].astype(int) - photo[inside]).mean() > 5
    assert read_latent_file(out / "group_face2.npz")["photo"] == str(face_photo / "group.png")  # edits of edits
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["target"] for r in rows] == ["group", "group_face2"]
    assert all(-1 <= float(r["id_similarity"]) <= 1 for r in rows)
    assert "median identity similarity" in res.stdout
    (out / "group_photo.png").unlink()  # a rerun skips both faces and makes the missing photo again
    again = cli("edit", face_photo / "latents", "--target", tmp_path / "req.png", *FAST, "-o", out)
    assert "skipped 2 complete" in again.stdout and np.array_equal(load(out / "group_photo.png"), edited)


def test_direction_edit_at_strength_0_pasted_back_is_the_projection_pasted_back(cli, tmp_path, face_photo):
    np.save(tmp_path / "d.npy", np.eye(100, dtype=np.float32)[0])
    out = tmp_path / "out"
    res = cli("edit", face_photo / "latents", "--direction", tmp_path / "d.npy", "--strength", "0,2", "-o", out)
    assert res.exit_code == 0, res.stderr
    assert sorted(p.name for p in out.glob("*_photo.png")) == ["group_s+0_photo.png", "group_s+2_photo.png"]
    crops = np.stack([load(face_photo / "latents" / f"{s}.png") for s in ("group", "group_face2")])
    projection = faces.photo_back(
        links(face_photo / "latents"), torch.from_numpy(crops).permute(0, 3, 1, 2) / 127.5 - 1
    )
    at0 = load(out / "group_s+0_photo.png")
    assert at0.shape == projection.shape and np.abs(at0.astype(int) - projection).max() <= 1


def relinked(face_photo, tmp_path, how: str):
    """A copy of face_photo's latents whose photo is a copy, then removed or changed."""
    photo = shutil.copy(face_photo / "group.png", tmp_path / "group.png")
    latents = shutil.copytree(face_photo / "latents", tmp_path / "latents")
    for p in latents.glob("*.npz"):
        data = dict(np.load(p))
        np.savez(p, **(data | {"photo": np.array(str(photo))}))
    if how == "missing":
        photo.unlink()
    else:
        Image.fromarray(255 - load(photo)).save(photo)
    return latents, photo


@pytest.mark.parametrize("how", ["missing", "changed"])
def test_a_moved_or_changed_photo_is_one_line_and_the_crops_are_written(cli, tmp_path, face_photo, how):
    latents, photo = relinked(face_photo, tmp_path, how)
    np.save(tmp_path / "d.npy", np.eye(100, dtype=np.float32)[0])
    out = tmp_path / "out"
    res = cli("edit", latents, "--direction", tmp_path / "d.npy", "--strength", "-1,1", "-o", out)
    assert res.exit_code == 0, res.stderr
    lines = [ln for ln in res.stdout.splitlines() if str(photo) in ln]
    assert len(lines) == 1 and how in lines[0], res.stdout
    assert (out / "group_s+1.png").is_file() and (out / "group_face2_s-1.png").is_file()
    assert not list(out.glob("*_photo.png"))


def test_interpolate_pastes_its_frames_into_the_first_latents_photo(cli, tmp_path, face_photo):
    import imageio_ffmpeg

    a, b = face_photo / "latents" / "group.npz", face_photo / "latents" / "group_face2.npz"
    res = cli("interpolate", a, b, "--frames", "3", "--mode", "linear", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.stderr
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "out" / "linear_photo.mp4"))
    assert next(reader)["size"] == (480, 320)  # the photo's size
    frames = [np.frombuffer(f, np.uint8).reshape(320, 480, 3) for f in reader]
    assert len(frames) == 3 and np.abs(frames[0].astype(int) - frames[-1]).mean() > 1
    outside = ~footprints(links(face_photo / "latents")[0], (320, 480), 2)  # the first face's place only
    assert np.abs(frames[-1][outside].astype(int) - load(face_photo / "group.png")[outside]).mean() < 3  # codec


def test_without_face_models_the_column_is_empty_and_the_run_warns_once(cli, tmp_path, face_photo, monkeypatch):
    def missing():
        raise faces.LatentFitError(f"face models: dlib is not installed; {faces.INSTALL}")

    monkeypatch.setattr(faces, "_dlib", missing)
    out = tmp_path / "out"
    res = cli(
        "edit", face_photo / "latents", "--target", request(tmp_path / "r.png"), *FAST, "--batch-size", "1", "-o", out
    )
    assert res.exit_code == 0, res.stderr
    assert res.stderr.count("identity similarity not measured") == 1, res.stderr
    assert [r["id_similarity"] for r in csv.DictReader(open(out / "metrics.csv"))] == ["", ""]
    assert (out / "group_photo.png").is_file()  # paste-back needs no face model


class Fields(Generator):
    """A differentiable generator of smooth colour fields: no faces."""

    name, sha256, resolution, z_dim = "fields", "fields-sha", 32, 8

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(8, 48, generator=torch.Generator().manual_seed(0)))

    def synthesize(self, latent, space="z", c=None, noise=None):
        x = (latent @ self.weight).view(-1, 3, 4, 4).tanh()
        return F.interpolate(x, size=32, mode="bilinear", align_corners=False)


def test_a_generator_of_non_faces_leaves_the_column_empty(tmp_path):
    G = Fields().freeze()
    write_latent_file(tmp_path / "a.npz", latent=torch.zeros(8), space="z", generator=G.name, generator_sha256=G.sha256)
    rep = edit_files(
        G, [str(tmp_path / "a.npz")], tmp_path / "out", request=request(tmp_path / "r.png"), steps=5, loss="mse"
    )
    assert not rep.errors and rep.metrics[0]["id_similarity"] is None
    assert "identity" not in rep.summary and not list((tmp_path / "out").glob("*_photo.png"))
