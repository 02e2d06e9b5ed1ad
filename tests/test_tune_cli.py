"""Tuning from the command line: `project --tune`, tuned latents in edit / interpolate / sweep,
and `sweep --tune-reg`."""

import copy
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latent_fit import load_generator, read_latent_file, write_latent_file
from latent_fit.config import TUNING_DEFAULTS
from latent_fit.files import file_sha256
from latent_fit.generators.tuned import read_tuned, save_tuned

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
FAST = ["--steps", "20", "--loss", "mse"]
TUNE = ["--tune", "--tune-steps", "10"]  # few steps (the default lr)


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(int)


@pytest.fixture(scope="module")
def tuned_out(tmp_path_factory):
    """OUT of `project --tune` on the bundled photo and a face (module-wide: copy before changing it)."""
    from click.testing import CliRunner

    from latent_fit.cli import main

    d = tmp_path_factory.mktemp("tune")
    (d / "in").mkdir()
    for name in ("astronaut", "face_00"):
        shutil.copy(SAMPLES / "targets" / f"{name}.png", d / "in")
    r = CliRunner().invoke(main, ["project", str(d / "in"), "-o", str(d / "out"), *FAST, *TUNE], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    return d, r.stdout


def test_project_tune_writes_the_tuned_weights_and_shows_their_images(G, tuned_out):
    d, stdout = tuned_out
    out = d / "out"
    assert "projected 2 target(s), skipped 0 complete, 0 failed, median PSNR" in stdout and "tuned (pivot" in stdout
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert list(rows[0])[-4:] == ["psnr_pivot", "dtheta_norm", "locality_psnr", "id_similarity_pivot"]
    assert [r["target"] for r in rows] == ["astronaut", "face_00"]
    assert json.loads((out / "metrics.json").read_text())[0]["dtheta_norm"] > 0
    for stem in ("astronaut", "face_00"):
        data = read_latent_file(out / f"{stem}.npz")
        tuned = out / f"{stem}.tuned.safetensors"
        assert data["tuned_sha256"] == file_sha256(tuned)
        assert data["record"]["tune_reg"] == 0 and data["record"]["tune_steps"] == 10  # rank 20's default
        m = data["metrics"]
        assert m["psnr"] > m["psnr_pivot"] and m["dtheta_norm"] > 0 and np.isfinite(m["locality_psnr"])
        meta = read_tuned(tuned)[1]
        assert meta["settings"]["tune_reg"] == 0 and meta["settings"]["tune_steps"] == 10
        assert tuned.stat().st_size < 7.15e6 / 20  # the default on plain layers, rank 20: 23x smaller than full
        assert meta["rank"] == meta["settings"]["tune_rank"] == TUNING_DEFAULTS["layers"]["tune_rank"] == 20
        assert meta["settings"]["locality"] == "layers"
        Gt = load_generator("digiface-dcgan64", tuned=tuned)
        with torch.no_grad():
            img = Gt.synthesize(torch.from_numpy(data["latent"])[None], "z").clamp(-1, 1)
        shown = ((img[0].permute(1, 2, 0) + 1) * 127.5).round().numpy()
        assert np.abs(_png(out / f"{stem}.png") - shown).max() <= 1
        assert np.array_equal(_png(out / f"{stem}_compare.png")[:, 66:130], _png(out / f"{stem}.png"))
    assert rows[0]["psnr"] != rows[0]["psnr_pivot"]
    assert not list(out.glob(".*tmp*"))


def test_project_tune_reruns(cli, tuned_out, tmp_path):
    d, _ = tuned_out
    out = tmp_path / "out"
    shutil.copytree(d / "out", out)
    same = cli("project", d / "in", "-o", out, *FAST, *TUNE)
    assert "projected 0 target(s), skipped 2 complete" in same.stdout and "redoing" not in same.stdout

    (out / "face_00.tuned.safetensors").unlink()  # a tuned target without its weights is not complete
    again = cli("project", d / "in", "-o", out, *FAST, *TUNE)
    assert "projected 1 target(s), skipped 1 complete" in again.stdout
    assert (out / "face_00.tuned.safetensors").is_file()

    photo = d / "in" / "astronaut.png"
    reg = cli("project", photo, "-o", out, *FAST, *TUNE, "--tune-reg", "1e-2")
    assert "redoing 1 target(s) made with other settings: tune_reg 0.0 → 0.01" in reg.stdout
    assert read_tuned(out / "astronaut.tuned.safetensors")[1]["settings"]["tune_reg"] == 1e-2

    low = cli("project", photo, "-o", out, *FAST, *TUNE, "--tune-reg", "1e-2", "--tune-rank", "8")
    assert "redoing 1 target(s) made with other settings: tune_rank 20 → 8" in low.stdout
    assert (out / "astronaut.tuned.safetensors").stat().st_size < 7.15e6 / 40  # rank 8: 48x smaller
    assert read_tuned(out / "astronaut.tuned.safetensors")[1]["rank"] == 8
    Gt = load_generator("digiface-dcgan64", tuned=out / "astronaut.tuned.safetensors")
    with torch.no_grad():
        img = Gt.synthesize(torch.from_numpy(read_latent_file(out / "astronaut.npz")["latent"])[None], "z")
    shown = ((img[0].clamp(-1, 1).permute(1, 2, 0) + 1) * 127.5).round().numpy()
    assert np.abs(_png(out / "astronaut.png") - shown).max() <= 1  # its factors, applied

    plain = cli("project", photo, "-o", out, *FAST)
    assert "redoing 1 target(s) made with other settings: tune True → None" in plain.stdout
    assert not (out / "astronaut.tuned.safetensors").exists()  # stale weights removed
    assert "tuned_sha256" not in read_latent_file(out / "astronaut.npz")
    assert not {"psnr_pivot", "dtheta_norm", "locality_psnr"} & set(next(csv.DictReader(open(out / "metrics.csv"))))

    wrong = cli("project", photo, "-o", out, *FAST, "--tune-reg", "1e-2")
    assert wrong.exit_code == 1 and "error: --tune-reg needs --tune" in wrong.stderr
    for bad in ("0", "low", "4,8"):
        r = cli("project", photo, "-o", out, *FAST, *TUNE, "--tune-rank", bad)
        assert r.exit_code != 0 and "--tune-rank" in r.stderr and "Traceback" not in r.stderr, r.stderr


def _request(path: Path) -> Path:
    im = np.zeros((64, 64, 4), np.uint8)
    im[:20, :, :3], im[:20, :, 3] = 30, 255  # darken the top, alpha = where
    Image.fromarray(im).save(path)
    return path


def test_edit_uses_tuned_weights_beside_the_latents(cli, tuned_out, tmp_path):
    d, _ = tuned_out
    out, req = d / "out", _request(tmp_path / "req.png")
    plain = tmp_path / "plain"  # an untuned latent with a stale tuned file beside it: ignored
    plain.mkdir()
    shutil.copy(SAMPLES / "latents" / "face_01.npz", plain)
    shutil.copy(out / "face_00.tuned.safetensors", plain / "face_01.tuned.safetensors")
    r = cli(
        "edit",
        out / "astronaut.npz",
        out / "face_00.npz",
        plain / "face_01.npz",
        "--target",
        req,
        "-o",
        tmp_path / "ed",
        "--steps",
        "5",
        "--loss",
        "mse",
    )
    assert r.exit_code == 0, r.stderr
    assert "edited 3 latent(s)" in r.stdout and "used tuned weights for 2 target(s)" in r.stdout
    ed = tmp_path / "ed"
    before = _png(ed / "astronaut_compare.png")[:, :64]  # before | request | after
    assert np.abs(before - _png(out / "astronaut.png")).max() <= 1
    assert read_latent_file(ed / "astronaut.npz")["tuned_sha256"] == file_sha256(out / "astronaut.tuned.safetensors")
    assert not (ed / "face_01.tuned.safetensors").exists()

    np.save(tmp_path / "d.npy", np.eye(100, dtype=np.float32)[0])
    strip = cli(
        "edit", out / "astronaut.npz", "--direction", tmp_path / "d.npy", "--strength", "0,2", "-o", tmp_path / "dir"
    )
    assert strip.exit_code == 0 and "used tuned weights for 1 target(s)" in strip.stdout
    assert np.abs(_png(tmp_path / "dir" / "astronaut_s+0.png") - _png(out / "astronaut.png")).max() <= 1


def test_a_tuned_file_of_another_generator_is_refused_and_the_others_go_on(cli, G, tuned_out, tmp_path):
    d, _ = tuned_out
    lat = tmp_path / "lat"
    shutil.copytree(d / "out", lat)
    other = copy.deepcopy(G)
    other.name, other.sha256 = "other-dcgan", "0" * 64
    foreign = lat / "astronaut.tuned.safetensors"
    delta, meta = read_tuned(foreign)
    save_tuned(foreign, delta, other, meta["settings"])
    data = read_latent_file(lat / "astronaut.npz")
    write_latent_file(lat / "astronaut.npz", **(data | {"tuned_sha256": file_sha256(foreign)}))
    r = cli(
        "edit",
        lat / "astronaut.npz",
        lat / "face_00.npz",
        "--target",
        _request(tmp_path / "req.png"),
        "-o",
        tmp_path / "ed",
        "--steps",
        "5",
        "--loss",
        "mse",
    )
    assert r.exit_code == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and str(foreign) in errors[0] and "other-dcgan" in errors[0]
    assert "edited 1 latent(s)" in r.stdout and "used tuned weights for 1 target(s)" in r.stdout

    (lat / "face_00.tuned.safetensors").write_bytes(b"changed")
    good = tmp_path / "good"
    good.mkdir()
    for suffix in (".npz", ".tuned.safetensors"):
        shutil.copy(d / "out" / f"astronaut{suffix}", good / f"photo{suffix}")
    i = cli(
        "interpolate",
        lat / "face_00.npz",
        good / "photo.npz",
        SAMPLES / "latents" / "face_01.npz",
        "--frames",
        "3",
        "-o",
        tmp_path / "i",
    )
    assert i.exit_code == 1 and "used tuned weights for 1 target(s)" in i.stdout
    errors = [line for line in i.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "face_00.tuned.safetensors" in errors[0] and "changed" in errors[0]


def test_interpolate_blends_the_tuned_ends(cli, tuned_out, tmp_path):
    d, _ = tuned_out
    out = d / "out"
    r = cli(
        "interpolate",
        out / "astronaut.npz",
        out / "face_00.npz",
        "--frames",
        "3",
        "--mode",
        "linear",
        "-o",
        tmp_path / "i",
    )
    assert r.exit_code == 0 and "used tuned weights for 2 target(s)" in r.stdout
    row = _png(tmp_path / "i" / "linear.png")
    assert np.abs(row[:, :64] - _png(out / "astronaut.png")).max() <= 1
    assert np.abs(row[:, -64:] - _png(out / "face_00.png")).max() <= 1


def test_sweep_init_edits_tuned_latents_through_their_weights(cli, tuned_out, tmp_path):
    d, _ = tuned_out
    reqs = tmp_path / "req"
    reqs.mkdir()
    for stem in ("astronaut", "face_00"):
        _request(reqs / f"{stem}.png")
    r = cli(
        "sweep", reqs, "--init", d / "out", "--wr", "1e-3,1e-1", "--steps", "5", "--loss", "mse", "-o", tmp_path / "sw"
    )
    assert r.exit_code == 0, r.stderr
    assert "used tuned weights for 2 target(s)" in r.stdout
    rows = list(csv.DictReader(open(tmp_path / "sw" / "sweep.csv")))
    assert [(x["target"], float(x["wr"])) for x in rows] == [
        ("astronaut", 1e-3),
        ("astronaut", 0.1),
        ("face_00", 1e-3),
        ("face_00", 0.1),
    ]


def test_sweep_tune_reg(cli, tmp_path):
    out = tmp_path / "sw"
    regs = [0, 1e-2, 1e-1, 1]
    r = cli(
        "sweep",
        SAMPLES / "targets" / "astronaut.png",
        "--tune-reg",
        ",".join(map(str, regs)),
        *FAST,
        "--tune-steps",
        "10",
        "-o",
        out,
    )
    assert r.exit_code == 0, r.stderr
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert list(rows[0]) == ["target", "tune_reg", "psnr", "psnr_pivot", "locality_psnr", "dtheta_norm", "mse", "lpips"]
    assert [float(x["tune_reg"]) for x in rows] == regs
    dtheta = np.array([float(x["dtheta_norm"]) for x in rows])
    assert (np.diff(dtheta) < 0).all(), dtheta
    assert len({x["psnr_pivot"] for x in rows}) == 1  # one pivot per target
    suggestion = json.loads((out / "suggestion.json").read_text())
    assert suggestion["tune_reg"] in regs and f"suggested tune_reg={suggestion['tune_reg']:g}" in r.stdout
    assert Image.open(out / "sweep.png").size[0] > 500 and (out / "grid.png").is_file()

    both = cli("sweep", SAMPLES / "targets" / "astronaut.png", "--tune-reg", "0,1", "--wr", "0,1", "-o", out)
    assert both.exit_code == 1 and "cannot both be grids" in both.stderr


def test_project_tune_on_a_stylegan2_network_pickle(cli, tmp_path):
    """Synthesis weights tuned, mapping kept; the PNG is the tuned synthesis with the pivot's noise maps."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_stylegan2 import TINY, persistent_network, random_generator, write_pickle

    pkl = tmp_path / "tiny.pkl"
    write_pickle(pkl, dict(G_ema=persistent_network(random_generator(TINY).state_dict(), TINY, "")))
    img = tmp_path / "x.png"
    Image.new("RGB", (40, 30), (90, 120, 200)).save(img)
    r = cli(
        "project",
        img,
        "-g",
        pkl,
        "-o",
        tmp_path / "out",
        "--class",
        "1",
        "--steps",
        "5",
        "--loss",
        "mse",
        "--tune",
        "--tune-steps",
        "5",
        "--tune-lr",
        "1e-2",
    )
    assert r.exit_code == 0, r.stderr
    data = read_latent_file(tmp_path / "out" / "x.npz")
    delta, _ = read_tuned(tmp_path / "out" / "x.tuned.safetensors")
    assert delta and all(k.startswith("synthesis.") for k in delta)
    Gt = load_generator(str(pkl), tuned=tmp_path / "out" / "x.tuned.safetensors")
    noise = [torch.from_numpy(data[f"noise_{j}"])[None] for j in range(len(Gt.noise_shapes))]
    with torch.no_grad():
        img = Gt.synthesize(torch.from_numpy(data["latent"])[None], "w", None, noise).clamp(-1, 1)
    shown = ((img[0].permute(1, 2, 0) + 1) * 127.5).round().numpy()
    assert np.abs(_png(tmp_path / "out" / "x.png") - shown).max() <= 1
    assert data["metrics"]["psnr"] > data["metrics"]["psnr_pivot"]


def test_a_target_whose_npz_was_not_written_after_its_tuned_file_is_redone(cli, tmp_path, monkeypatch):
    """As after a kill between the two writes: the tuned file alone does not make a target complete."""
    import errno

    import latent_fit.outputs as outputs

    photo, out = SAMPLES / "targets" / "astronaut.png", tmp_path / "out"

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs, "write_latent_file", full)
    r = cli("project", photo, "-o", out, *FAST, *TUNE)
    assert r.exit_code == 1 and "could not write outputs (No space left on device)" in r.stderr
    assert (out / "astronaut.tuned.safetensors").is_file() and not (out / "astronaut.npz").exists()
    monkeypatch.undo()
    again = cli("project", photo, "-o", out, *FAST, *TUNE)
    assert again.exit_code == 0 and "projected 1 target(s), skipped 0 complete" in again.stdout
    assert read_latent_file(out / "astronaut.npz")["tuned_sha256"] == file_sha256(out / "astronaut.tuned.safetensors")


def test_sweep_tune_reg_and_tune_rank_give_the_rank_table(cli, tmp_path):
    out = tmp_path / "sw"
    photo = SAMPLES / "targets" / "astronaut.png"
    r = cli("sweep", photo, "--tune-reg", "1e-3,1e-2", "--tune-rank", "2,full", *FAST, "--tune-steps", "10", "-o", out)
    assert r.exit_code == 0, r.stderr
    rows = list(csv.DictReader(open(out / "ranks.csv")))
    assert [(x["tune_rank"], float(x["tune_reg"])) for x in rows] == [
        ("2", 1e-3),
        ("2", 1e-2),
        ("full", 1e-3),
        ("full", 1e-2),
    ]
    mb = {x["tune_rank"]: float(x["file_mb"]) for x in rows}
    assert mb["full"] == pytest.approx(7.15, abs=0.05) and mb["full"] > 20 * mb["2"]
    suggestion = json.loads((out / "suggestion.json").read_text())
    assert suggestion["tune_rank"] in (2, "full") and f"suggested tune_rank={suggestion['tune_rank']}" in r.stdout
    assert len(list(csv.DictReader(open(out / "sweep.csv")))) == 2  # the suggested rank's rows
