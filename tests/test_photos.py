"""Whole photos in, photos out: project --align (latent_fit.photos)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from latent_fit import faces
from latent_fit.latents import read_latent_file
from latent_fit.outputs import OutputFolder
from latent_fit.photos import Alignment

from conftest import SAMPLES, SMALL_STYLEGAN2, load, place

FAST = ("--steps", "20", "--starts", "1")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Photo files made from the shipped samples: one turned face, two faces, no face."""
    d = tmp_path_factory.mktemp("photos")
    face, astro = load(SAMPLES / "targets" / "face_01.png"), load(SAMPLES / "targets" / "astronaut.png")
    one, _ = place(face, (320, 260), angle=15, side=170, center=(0.45, 0.55))
    two, _ = place(astro, (480, 300), side=200, center=(0.25, 0.5))
    two[:, 240:] = place(load(SAMPLES / "targets" / "face_04.png"), (240, 300), side=200)[0]
    none, _ = place(np.zeros((4, 4, 3), np.uint8), (300, 220), side=4)
    for name, img in (("one", one), ("two", two), ("none", none)):
        Image.fromarray(img).save(d / f"{name}.png")
    return d


def test_a_photo_gives_its_face_aligned_and_the_photo_back(cli, photos, tmp_path):
    r = cli("project", photos / "one.png", "-o", tmp_path, *FAST)
    assert r.exit_code == 0, r.output
    folder = OutputFolder(tmp_path)
    photo, back = load(photos / "one.png"), load(folder.file("one", "photo"))
    assert back.shape == photo.shape
    t = folder.read_target("one", *_dcgan())
    link = t.photo
    assert link.size == photo.shape[:2] and link.face == 1 and link.path == str((photos / "one.png").resolve())
    # outside the face's mask the photo is returned unchanged; inside, the projection shows
    inside = _mask_in_photo(link.transform, photo.shape[:2]) > 0
    assert inside.any() and (back[~inside] == photo[~inside]).all() and (back[inside] != photo[inside]).any()
    aligned = load(folder.file("one", "aligned"))
    assert aligned.shape == (64, 64, 3)
    row = json.loads((tmp_path / "metrics.json").read_text())[0]
    assert -1 <= row["id_similarity"] <= 1


def test_every_face_of_a_group_photo_is_a_target_and_one_photo_comes_back(cli, photos, tmp_path):
    r = cli("project", photos / "two.png", "-o", tmp_path, *FAST)
    assert r.exit_code == 0, r.output
    folder = OutputFolder(tmp_path)
    assert folder.is_complete("two") and folder.is_complete("two_face2")
    links = [folder.read_target(s, *_dcgan()).photo for s in ("two", "two_face2")]
    assert [link.face for link in links] == [1, 2]
    assert links[1].landmarks[:, 0].mean() < 240 < links[0].landmarks[:, 0].mean()  # the right face is larger
    assert load(folder.file("two", "photo")).shape == (300, 480, 3) and not folder.file("two_face2", "photo").exists()
    r = cli("project", photos / "two.png", "-o", tmp_path / "one", *FAST, "--max-faces", "1")
    assert r.exit_code == 0 and "skipped 1 face(s)" in r.output
    assert OutputFolder(tmp_path / "one").is_complete("two") and not (tmp_path / "one" / "two_face2.npz").exists()


def test_no_face_warns_under_auto_and_is_an_error_under_faces(cli, photos, tmp_path):
    r = cli("project", photos / "none.png", photos / "one.png", "-o", tmp_path / "auto", *FAST)
    assert r.exit_code == 0 and f"warning: {photos / 'none.png'}: no face found" in r.output
    assert OutputFolder(tmp_path / "auto").is_complete("none")
    assert not (tmp_path / "auto" / "none_photo.png").exists() and not (tmp_path / "auto" / "none_aligned.png").exists()
    r = cli("project", photos / "none.png", photos / "one.png", "-o", tmp_path / "faces", *FAST, "--align", "faces")
    assert r.exit_code == 1 and f"error: {photos / 'none.png'}: no face found" in r.output
    assert OutputFolder(tmp_path / "faces").is_complete("one")  # the batch went on


def test_generator_samples_keep_their_latents_under_auto(cli, tmp_path):
    faces_of_g = sorted((SAMPLES / "targets").glob("face_*.png"))  # the generator's own faces
    latents = {}
    for align in ("auto", "none"):
        r = cli("project", *faces_of_g, "-o", tmp_path / align, *FAST, "--align", align)
        assert r.exit_code == 0, r.output
        latents[align] = [read_latent_file(p)["latent"] for p in sorted((tmp_path / align).glob("*.npz"))]
    assert len(latents["auto"]) == len(latents["none"]) > 0
    assert all(np.array_equal(a, b) for a, b in zip(latents["auto"], latents["none"]))


def test_a_rerun_skips_and_a_changed_alignment_redoes(cli, photos, tmp_path):
    assert cli("project", photos / "one.png", "-o", tmp_path, *FAST).exit_code == 0
    r = cli("project", photos / "one.png", "-o", tmp_path, *FAST)
    assert "skipped 1 complete" in r.output
    r = cli("project", photos / "one.png", "-o", tmp_path, *FAST, "--align", "none")
    assert r.exit_code == 0 and "redoing 1 target(s) made with other settings: align 'auto' → 'none'" in r.output
    assert not (tmp_path / "one_aligned.png").exists()  # a centre crop now


def test_a_generator_without_faces_is_refused_once_and_not_aligned(tmp_path, monkeypatch):
    from latent_fit.generators.stylegan2 import StyleGAN2Generator

    torch.manual_seed(3)
    G = StyleGAN2Generator(**SMALL_STYLEGAN2)
    G.sha256 = "random-sg2-weights"
    cache = tmp_path / "cache"
    monkeypatch.setenv("LATENT_FIT_CACHE", str(cache))
    alignment, note = Alignment.of(G, "auto")
    assert alignment.template is None and "does not look like a face generator" in note
    assert (cache / "templates" / "random-sg2-weights.refused").is_file()
    monkeypatch.setattr(faces, "make_template", lambda *a, **k: pytest.fail("made again"))
    again, note = Alignment.of(G, "auto")
    assert again.template is None and "cached in" in note
    with pytest.raises(faces.LatentFitError, match="face generator"):
        Alignment.of(G, "faces")


def _dcgan():
    from latent_fit import load_generator

    G = load_generator("digiface-dcgan64")
    return G, G.default_space


def _mask_in_photo(M: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Where a 64 px crop's paste-back mask (photo->crop matrix M) reaches in the photo, grown by
    one pixel for the bilinear footprint."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    p = np.stack([xs + 0.5, ys + 0.5, np.ones_like(xs)], -1) @ np.asarray(M).T
    return (p[..., 0] > -1) & (p[..., 0] < 65) & (p[..., 1] > -1) & (p[..., 1] < 65)


def test_the_report_shows_each_photo_its_crops_and_the_result(cli, photos, tmp_path):
    assert cli("project", photos / "two.png", "-o", tmp_path, *FAST).exit_code == 0
    page = (tmp_path / "index.html").read_text()
    assert "<h2>Photos</h2>" in page
    for shown in ((photos / "two.png").resolve().as_uri(), "two_aligned.png", "two_face2_aligned.png", "two_photo.png"):
        assert f'src="{shown}"' in page


def test_a_sweep_of_a_photo_measures_identity_and_its_edit_sweep_gives_the_photo_back(cli, photos, tmp_path):
    r = cli("sweep", photos / "one.png", "-o", tmp_path / "sweep", "--wr", "0,1", "--steps", "10", "--starts", "1")
    assert r.exit_code == 0, r.output
    rows = (tmp_path / "sweep" / "sweep.csv").read_text().splitlines()
    assert "id_similarity" in rows[0].split(",") and len(rows) == 3
    assert cli("project", photos / "one.png", "-o", tmp_path / "p", *FAST).exit_code == 0
    (tmp_path / "req").mkdir()
    (tmp_path / "req" / "one.png").write_bytes((tmp_path / "p" / "one_aligned.png").read_bytes())
    r = cli(
        "sweep",
        tmp_path / "req" / "one.png",
        "--init",
        tmp_path / "p",
        "-o",
        tmp_path / "e",
        "--wr",
        "0,1",
        "--steps",
        "10",
    )
    assert r.exit_code == 0, r.output
    assert load(tmp_path / "e" / "one_photo.png").shape == load(photos / "one.png").shape


def test_the_face_models_load_with_the_network_off(monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network is off in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in ("hog", "cnn", "points", "descriptor"):
        faces._model.cache_clear()
        assert faces._model(name) is not None


def test_missing_face_models_are_said_once_and_not_cached_as_a_refusal(tmp_path, monkeypatch):
    from latent_fit.generators.stylegan2 import StyleGAN2Generator

    G = StyleGAN2Generator(**SMALL_STYLEGAN2)
    G.sha256 = "sg2-without-face-models"
    monkeypatch.setenv("LATENT_FIT_CACHE", str(tmp_path))

    def missing():
        raise faces.LatentFitError(f"face models: dlib is not installed; {faces.INSTALL}")

    monkeypatch.setattr(faces, "_dlib", missing)
    faces._model.cache_clear()
    alignment, note = Alignment.of(G, "none")
    assert alignment.template is None and note.startswith("identity similarity not measured") and "dlib" in note
    _, note = Alignment.of(G, "auto")
    assert note.startswith("photos are centre-cropped, not aligned") and "dlib" in note
    assert not list(tmp_path.rglob("*.refused"))  # installing dlib later makes the template
    faces._model.cache_clear()
