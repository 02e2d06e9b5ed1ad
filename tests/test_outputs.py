"""An output folder's files have one owner: no two targets of a run write the same file."""

import shutil

from latent_fit import read_latent_file

from conftest import SAMPLES

FAST = ["--steps", "2", "--starts", "1", "--loss", "mse", "--encoder", "none"]


def test_a_target_whose_outputs_would_overwrite_anothers_is_refused(cli, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(SAMPLES / "targets" / "face_00.png", d / "a.png")
    shutil.copy(SAMPLES / "targets" / "face_01.png", d / "a_compare.png")  # its a_compare.png is a's strip
    out = tmp_path / "out"
    r = cli("project", d, "-o", out, *FAST)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error")]
    assert r.exit_code == 1 and errors == [
        f"error: {d / 'a_compare.png'}: its outputs would overwrite a_compare.png of {d / 'a.png'}; rename one"
    ]
    assert read_latent_file(out / "a.npz")["record"]["target_sha256"] and not (out / "a_compare.npz").exists()
    again = cli("project", d, "-o", out, *FAST)
    assert "skipped 1 complete" in again.stdout and again.exit_code == 1  # still refused, a still complete
