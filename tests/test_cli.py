"""`latent-fit project` end to end: outputs a person can open, one-line errors, resume, offline LPIPS."""

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from latent_fit import read_latent_file

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
FAST = ["--steps", "20", "--starts", "2", "--loss", "mse"]


def test_project_writes_every_output(cli, two_targets, tmp_path):
    out = tmp_path / "out"
    r = cli("project", two_targets, "-o", out, *FAST, "--save-video")
    assert r.exit_code == 0, r.stderr
    assert "projected 2 target(s), skipped 0 complete, 0 failed" in r.stdout
    for stem in ("face_00", "astronaut"):
        assert Image.open(out / f"{stem}.png").size == (64, 64)
        assert Image.open(out / f"{stem}_compare.png").size == (3 * 64 + 2 * 2, 64)
        assert (out / f"{stem}.mp4").stat().st_size > 1000
        d = read_latent_file(out / f"{stem}.npz")
        assert d["latent"].shape == (100,) and d["latent"].dtype == np.float32
        assert d["latent_init"].shape == (100,)
        assert (d["space"], d["generator"]) == ("z", "digiface-dcgan64")
        assert d["loss_history"].ndim == 1 and len(d["loss_history"]) >= 1
        assert d["config"]["steps"] == 20 and d["config"]["starts"] == 2
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["target"] for r in rows] == ["astronaut", "face_00"]
    assert list(rows[0]) == [
        "target",
        "mse",
        "psnr",
        "lpips",
        "dz_norm",
        "wr",
        "wr_units",
        "wr_factor",
        "wr_effective",
        "jacobian_norm",
        "id_similarity",
        "steps",
        "sample_steps",
        "seconds",
        "terms",
        "photo",
        "photo_face",
    ]
    assert rows[0]["wr_units"] == "raw" and float(rows[0]["wr_effective"]) == float(rows[0]["wr"])
    assert float(rows[0]["wr_factor"]) > 0 and 0.2 < float(rows[0]["jacobian_norm"]) < 5
    assert rows[0]["lpips"] == "" and rows[0]["terms"] == "mse+wr*l2" and rows[0]["photo_face"] == "1"
    assert rows[0]["photo"].endswith("astronaut.png") and rows[1]["photo"] == ""  # a real crop aligned, a sample as is
    assert 0.8 < float(rows[1]["id_similarity"]) <= 1  # face_00, a face of the generator: identity measured
    assert json.loads((out / "metrics.json").read_text())[1]["target"] == "face_00"
    assert not list(out.glob(".*tmp*"))

    again = cli("project", two_targets, "-o", out, *FAST)
    assert again.exit_code == 0 and "projected 0 target(s), skipped 2 complete" in again.stdout


def test_init_from_a_latent_file(cli, tmp_path):
    out = tmp_path / "out"
    r = cli(
        "project",
        SAMPLES / "targets" / "face_01.png",
        "-o",
        out,
        "--init",
        SAMPLES / "latents" / "face_01.npz",
        "--steps",
        "100",
        "--loss",
        "mse",
    )
    assert r.exit_code == 0, r.stderr
    d = read_latent_file(out / "face_01.npz")
    assert np.allclose(d["latent_init"], read_latent_file(SAMPLES / "latents" / "face_01.npz")["latent"])
    assert d["metrics"]["psnr"] > 35  # started at the answer


def test_bad_inputs_are_reported_and_the_rest_still_runs(cli, two_targets, tmp_path):
    (two_targets / "notes.png").write_text("not an image")
    (two_targets / "cut.png").write_bytes((SAMPLES / "targets" / "face_02.png").read_bytes()[:200])
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    r = cli("project", two_targets, tmp_path / "missing.jpg", tmp_path / "empty", "-o", out, *FAST)
    assert r.exit_code == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 4, r.stderr
    joined = "\n".join(errors)
    assert f"{tmp_path / 'missing.jpg'}: file not found" in joined
    assert f"{tmp_path / 'empty'}: folder has no images" in joined
    assert f"{two_targets / 'notes.png'}: not an image in a format latent-fit reads" in joined
    assert f"{two_targets / 'cut.png'}: unreadable image" in joined
    assert (out / "face_00.npz").is_file() and (out / "astronaut.npz").is_file()
    assert "projected 2 target(s), skipped 0 complete, 4 failed" in r.stdout


def test_unwritable_out_and_bad_init_fail_in_one_line(cli, two_targets, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = cli("project", two_targets, "-o", blocker / "out", *FAST)
    assert r.exit_code == 1
    assert r.stderr.strip().startswith(f"error: {blocker / 'out'}: output folder is not writable")
    assert len(r.stderr.strip().splitlines()) == 1

    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    r = cli("project", two_targets, "-o", tmp_path / "o2", "--init", bad, *FAST)
    assert r.exit_code == 1 and r.stderr.strip() == f"error: {bad}: not a latent .npz file (not a zip archive)"


def test_lpips_offline(cli, two_targets, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    out = tmp_path / "out"
    r = cli("project", two_targets, "-o", out, "--steps", "5", "--starts", "1", "--batch-size", "1")
    assert r.exit_code == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "LPIPS weights not found" in warnings[0]
    assert read_latent_file(out / "face_00.npz")["metrics"]["terms"] == "mse+wr*l2"

    r = cli("project", two_targets, "-o", tmp_path / "o2", "--loss", "lpips")
    assert r.exit_code == 1
    expected = tmp_path / "torch-home" / "hub" / "checkpoints" / "vgg16-397923af.pth"
    assert r.stderr.strip().splitlines() == [
        f"error: LPIPS needs the VGG16 ImageNet weights at {expected} and this machine has none; "
        "copy vgg16-397923af.pth there (or set TORCH_HOME), or use --loss mse"
    ]


def test_lpips_is_used_when_its_weights_are_on_disk(cli, two_targets, tmp_path, monkeypatch):
    """A randomly initialised VGG16 stands in for the ImageNet file: the path is the same."""
    import torch
    import torchvision

    ckpt = tmp_path / "torch-home" / "hub" / "checkpoints" / "vgg16-397923af.pth"
    ckpt.parent.mkdir(parents=True)
    torch.save(torchvision.models.vgg16().state_dict(), ckpt)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    r = cli("project", two_targets / "face_00.png", "-o", tmp_path / "out", "--steps", "2", "--starts", "1")
    assert r.exit_code == 0, r.stderr
    assert "warning" not in r.stderr
    m = read_latent_file(tmp_path / "out" / "face_00.npz")["metrics"]
    assert m["terms"] == "mse+lpips+wr*l2" and m["lpips"] > 0
