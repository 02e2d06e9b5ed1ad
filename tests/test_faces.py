"""Whole photos: detection, the template, alignment, paste-back and identity (latent_fit.faces)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from latent_fit import faces
from latent_fit.errors import LatentFitError
from latent_fit.generators.base import Generator
from latent_fit.images import to_uint8

from conftest import load, place

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
SOURCES = (
    sorted((SAMPLES / "targets").glob("face_*.png"))
    + [SAMPLES / "targets" / "astronaut.png"]
    + [SAMPLES / "photos" / name for name in ("grace_hopper.png", "cameraman.png")]
)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(4 / ((a - b) ** 2).mean()))


@pytest.fixture(scope="module")
def template(G):
    t, said = faces.template_for(G)
    assert said is None  # the bundled generator ships its template
    return t


@pytest.fixture(scope="module")
def photos():
    """Photos made from the shipped samples: (name, photo, number of faces in it)."""
    f1, astro, grace, f2 = (
        load(SOURCES[1]),
        load(SAMPLES / "targets" / "astronaut.png"),
        load(SAMPLES / "photos" / "grace_hopper.png"),
        load(SAMPLES / "targets" / "face_02.png"),
    )
    two, _ = place(astro, (480, 300), side=200, center=(0.25, 0.5))
    two[:, 240:] = place(load(SOURCES[4]), (240, 300), side=200)[0]
    return {
        "upright": place(f1, (480, 400), side=260),
        "rot+20": place(f1, (480, 400), angle=20, side=260),
        "rot-20": place(astro, (400, 400), angle=-20, side=260),
        "scale0.5": place(grace, (480, 400), side=130),
        "scale1.2": place(f1, (480, 400), side=310),
        "moved": place(f2, (480, 400), side=200, center=(0.3, 0.65)),
        "two": (two, None),
        "none": place(np.zeros((4, 4, 3), np.uint8), (320, 240), side=4),
    }


@pytest.fixture(scope="module")
def aligned(photos, template):
    return {k: faces.align_photo(p, template) for k, (p, _) in photos.items()}


def test_every_face_is_found_and_none_where_there_is_none(aligned, photos):
    counts = {k: len(a.faces) for k, a in aligned.items()}
    assert counts == {**{k: 1 for k in photos}, "two": 2, "none": 0}
    two = aligned["two"].faces
    assert two[0].size >= two[1].size  # largest first
    assert aligned["two"].crops.shape == (2, 3, 64, 64) and aligned["none"].crops.shape == (0, 3, 64, 64)


def test_landmarks_follow_the_face(aligned, photos):
    """Landmarks mapped back into the face's own pixels agree across rotations, scales, moves."""
    back = {
        k: (np.c_[aligned[k].faces[0].landmarks, np.ones(5)] @ np.linalg.inv(photos[k][1]).T)[:, :2]
        for k in ("upright", "rot+20", "scale1.2")
    }
    iod = np.linalg.norm(back["upright"][:2].mean(0) - back["upright"][2:4].mean(0))
    for k in ("rot+20", "scale1.2"):
        assert np.linalg.norm(back[k] - back["upright"], axis=1).mean() < 0.05 * iod


def test_aligned_crops_agree_better_than_a_two_pixel_shift(aligned, photos, template):
    base = aligned["upright"]
    shift = faces.warp_crop(
        photos["upright"][0], np.array([[1, 0, 2], [0, 1, 0], [0, 0, 1.0]]) @ base.transforms[0], template.resolution
    )
    two_px = psnr(base.crops[0], shift)
    for k in ("rot+20", "scale1.2"):
        assert psnr(base.crops[0], aligned[k].crops[0]) > two_px


def test_small_faces_are_skipped_and_counted(photos, template):
    found = faces.detect_faces(photos["scale0.5"][0], min_size=500)
    assert found.faces == [] and found.skipped == 1


def test_an_aligned_generator_sample_is_used_as_is(template):
    img = load(SOURCES[0])
    a = faces.align_photo(img, template)
    assert a.as_is and np.array_equal(a.transforms[0], np.eye(3))
    assert np.array_equal(to_uint8(a.crops)[0], img)
    assert faces.is_aligned(a.faces[0].landmarks, template)
    assert not faces.is_aligned(a.faces[0].landmarks + 3 * template.radius, template)
    blank = np.full((64, 64, 3), 90, np.uint8)  # at the generator's resolution, no face: as before
    b = faces.align_photo(blank, template)
    assert b.as_is and np.array_equal(to_uint8(b.crops)[0], blank)


def test_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    a = math.radians(17)
    A = np.array([[1.3 * math.cos(a), -1.3 * math.sin(a), 4], [1.3 * math.sin(a), 1.3 * math.cos(a), -7], [0, 0, 1]])
    dst = (np.c_[src, np.ones(5)] @ A.T)[:, :2]
    np.testing.assert_allclose(faces.similarity(src, dst), A, atol=1e-9)


def test_paste_back_changes_nothing_outside_the_mask():
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    a = math.radians(25)
    Ms = np.array(
        [
            [[0.5 * math.cos(a), 0.5 * math.sin(a), -20], [-0.5 * math.sin(a), 0.5 * math.cos(a), 0], [0, 0, 1]],
            [[0.8, 0, 30], [0, 0.8, 5], [0, 0, 1]],
        ]
    )  # one crop reaches past the photo's left edge
    crops = torch.rand(2, 3, 64, 64) * 2 - 1
    out = faces.paste_back(photo, crops, Ms)
    assert out.shape == photo.shape and out.dtype == np.uint8
    inside = np.zeros(photo.shape[:2], bool)
    for M in Ms:  # every pixel whose centre maps into a crop's square (where its mask may be > 0)
        yy, xx = np.mgrid[:120, :160] + 0.5
        c = np.stack([xx, yy, np.ones_like(xx)], -1) @ M.T
        inside |= (c[..., 0] > 0) & (c[..., 0] < 64) & (c[..., 1] > 0) & (c[..., 1] < 64)
    assert np.array_equal(out[~inside], photo[~inside])
    assert (out[inside] != photo[inside]).any(-1).mean() > 0.9


def test_paste_back_of_its_own_crop_keeps_the_photo_close(aligned, photos):
    photo, a = photos["upright"][0], aligned["upright"]
    out = faces.paste_back(photo, a.crops, a.transforms)
    changed = (out != photo).any(-1)
    assert 0 < changed.mean() < 0.6
    assert np.abs(out.astype(int) - photo).mean() < 6


class Noise(Generator):
    """A generator of colour noise: no faces."""

    name, sha256, resolution, z_dim = "noise", "noise-sha", 64, 8

    def synthesize(self, latent, space="z", c=None, noise=None):
        g = torch.Generator().manual_seed(int(latent.abs().sum() * 1000) % 2**31)
        return torch.rand(len(latent), 3, 64, 64, generator=g) * 2 - 1


def test_a_generator_of_non_faces_gets_no_template():
    with pytest.raises(LatentFitError, match="face was found in only 0 of 8 samples"):
        faces.make_template(Noise().freeze(), n=8)


def test_template_file_round_trip_and_validation(template, tmp_path):
    path = tmp_path / "t.json"
    sha = faces.save_template(template, path)
    back = faces.load_template(path)
    assert back.sha256 == sha == template.sha256 and back.generator_sha256 == template.generator_sha256
    np.testing.assert_allclose(back.landmarks, template.landmarks)
    good = json.loads(path.read_text())
    bad = {
        "not json": "{",
        "wrong format": {**good, "format": "x"},
        "shape": {**good, "landmarks": [[1, 2]]},
        "nan": {**good, "spread": [float("nan")] * 5},
        "outside": {**good, "landmarks": [[1e6, 0]] * 5},
        "empty box": {**good, "box": [40, 40, 20, 60]},
        "types": {**good, "found": "177"},
        "counts": {**good, "found": good["sampled"] + 1},
        "missing": {k: v for k, v in good.items() if k != "radius"},
        "list": [good],
    }
    for d in bad.values():
        path.write_text(d if isinstance(d, str) else json.dumps(d))
        with pytest.raises(LatentFitError, match="t.json"):
            faces.load_template(path)
    path.write_text(" " * (faces.MAX_TEMPLATE_BYTES + 1))
    with pytest.raises(LatentFitError, match="too large"):
        faces.load_template(path)


def test_template_for_other_generators_is_made_once_and_cached(G, tmp_path, monkeypatch):
    monkeypatch.setattr(faces, "TEMPLATE_SAMPLES", 12)
    monkeypatch.setattr(G, "sha256", "other-weights")  # a tuned copy: not the shipped template's generator
    monkeypatch.setenv("LATENT_FIT_CACHE", str(tmp_path))
    t, said = faces.template_for(G)
    assert said and "12 samples" in said and (tmp_path / "templates" / "other-weights.json").is_file()
    again, said = faces.template_for(G, cache_dir=tmp_path / "templates")
    assert said is None and again.sha256 == t.sha256


def test_cli_writes_a_template(cli, tmp_path):
    r = cli("template", "-g", "digiface-dcgan64", "-o", tmp_path / "t.json", "--samples", 8)
    assert r.exit_code == 0, r.output
    t = faces.load_template(tmp_path / "t.json")
    assert t.sampled == 8 and t.sha256 in r.output


@pytest.mark.parametrize("given_template", [False, True])
def test_identity_orders_same_person_above_others(aligned, template, given_template):
    t = template if given_template else None  # with it, the crops need no detector
    same = faces.id_similarity(aligned["upright"].crops, aligned["rot+20"].crops, t)
    others = faces.id_similarity(
        aligned["upright"].crops.expand(3, -1, -1, -1),
        torch.cat([aligned[k].crops for k in ("rot-20", "moved", "scale0.5")]),
        t,
    )
    assert same[0] > np.nanmax(others)
    assert np.isfinite(others).all() or not given_template


def test_identity_is_nan_with_one_warning_without_models(monkeypatch):
    def missing(name):
        raise LatentFitError("face models: not installed")

    monkeypatch.setattr(faces, "_model", missing)
    with pytest.warns(UserWarning, match="not measured") as record:
        s = faces.id_similarity(torch.zeros(2, 3, 64, 64), torch.zeros(2, 3, 64, 64))
    assert np.isnan(s).all() and len(record) == 1


def test_a_crop_depends_only_on_the_photo_under_it():
    """A crop inside the photo is the same wherever the photo sits on a larger canvas; parts outside
    the photo are filled from its edge."""
    rng = np.random.default_rng(2)
    photo = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    big = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    big[100:190, 150:270] = photo
    M = faces.similarity(np.array([[30.0, 20], [70, 25], [50, 60]]), np.array([[10.0, 10], [50, 10], [30, 50]]))
    moved = M @ np.array([[1, 0, -150], [0, 1, -100], [0, 0, 1.0]])
    assert torch.equal(faces.warp_crop(photo, M, 64), faces.warp_crop(big, moved, 64))
    edge = faces.warp_crop(photo, np.array([[1, 0, 40], [0, 1, 0], [0, 0, 1.0]]), 64, "edge")  # 40 px left of it
    assert torch.equal(edge[:, :, :38], edge[:, :, :1].expand(-1, -1, 38))
    for fill in faces.FILL_MODES:
        assert faces.warp_crop(photo, np.array([[1, 0, 40], [0, 1, 0], [0, 0, 1.0]]), 64, fill).shape == (3, 64, 64)


def test_the_whole_sample_photo_goes_in_and_out(template):
    """samples/photos/grace_hopper_whole.png, uncropped: one face found, cut, pasted back."""
    photo = load(SAMPLES / "photos" / "grace_hopper_whole.png")
    a = faces.align_photo(photo, template)
    assert len(a.faces) == 1 and a.skipped == 0 and not a.as_is and a.crops.shape == (1, 3, 64, 64)
    out = faces.paste_back(photo, a.crops, a.transforms)
    changed = (out != photo).any(-1)
    x0, y0, x1, y1 = a.faces[0].box
    assert changed.shape == photo.shape[:2] and changed[int(y0) : int(y1), int(x0) : int(x1)].mean() > 0.5
    assert not changed[:, : int(x0) - 60].any() and not changed[int(y1) + 80 :].any()
