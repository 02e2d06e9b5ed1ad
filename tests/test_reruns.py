"""Trust: a rerun reuses a result only when what made it matches; a full disk and Ctrl-C lose nothing."""

import csv
import errno
import shutil
import subprocess
from pathlib import Path

import pytest

from latent_fit import read_latent_file
from latent_fit.runs import project as runner

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
FAST = ["--steps", "4", "--starts", "1", "--loss", "mse"]


def test_reruns_redo_targets_made_with_other_settings(cli, one_target, tmp_path):
    out = tmp_path / "out"
    assert cli("project", one_target, "-o", out, *FAST).exit_code == 0
    same = cli("project", one_target, "-o", out, *FAST)
    assert "projected 0 target(s), skipped 1 complete" in same.stdout and "redoing" not in same.stdout

    wr = cli("project", one_target, "-o", out, *FAST, "--wr", "10")
    assert wr.exit_code == 0
    assert "redoing 1 target(s) made with other settings: wr 0.0 → 10.0" in wr.stdout
    assert "projected 1 target(s), skipped 0 complete" in wr.stdout
    assert read_latent_file(out / "face_00.npz")["record"]["wr"] == 10.0

    steps = cli("project", one_target, "-o", out, "--wr", "10", "--steps", "5", "--starts", "1", "--loss", "mse")
    assert "redoing 1 target(s) made with other settings: steps 4 → 5" in steps.stdout

    shutil.copy(SAMPLES / "targets" / "face_01.png", one_target / "face_00.png")  # another image, same name
    image = cli("project", one_target, "-o", out, "--wr", "10", "--steps", "5", "--starts", "1", "--loss", "mse")
    assert "redoing 1 target(s) made with other settings: target_sha256" in image.stdout


def test_metrics_list_only_targets_made_with_this_runs_settings(cli, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for s in ("face_00", "face_01"):
        shutil.copy(SAMPLES / "targets" / f"{s}.png", d)
    out = tmp_path / "out"
    assert cli("project", d, "-o", out, *FAST).exit_code == 0
    assert cli("project", d / "face_00.png", "-o", out, *FAST, "--wr", "1").exit_code == 0
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["target"] for r in rows] == ["face_00"]


def test_a_full_disk_while_writing_metrics_is_one_line_and_a_rerun_redoes_nothing(
    cli, one_target, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    import latent_fit.outputs as outputs

    real = outputs.OutputFolder.write_metrics

    def full(*a, **k):
        monkeypatch.setattr(
            outputs,
            "write_csv",
            lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")),
        )
        return real(*a, **k)

    monkeypatch.setattr(outputs.OutputFolder, "write_metrics", full)
    r = cli("project", one_target, "-o", out, *FAST)
    assert r.exit_code == 1
    assert [line for line in r.stderr.splitlines() if line.startswith("error")] == [
        f"error: {out}: could not write metrics.csv / metrics.json (No space left on device); "
        "free space and rerun the same command"
    ]
    monkeypatch.undo()
    again = cli("project", one_target, "-o", out, *FAST)
    assert again.exit_code == 0 and "projected 0 target(s), skipped 1 complete" in again.stdout
    assert (out / "metrics.csv").is_file()


def test_a_real_full_disk(cli, tmp_path):
    out = tmp_path / "small"
    out.mkdir()
    if (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(out)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("mounting a small tmpfs is not allowed here")
    try:
        d = tmp_path / "in"
        d.mkdir()
        for s in ("face_00", "face_01", "face_02", "face_03", "face_04", "face_05"):
            shutil.copy(SAMPLES / "targets" / f"{s}.png", d)
        r = cli("project", d, "-o", out, *FAST, "--batch-size", "6")
        assert r.exit_code == 1
        lines = [line for line in r.stderr.splitlines() if line.startswith("error")]
        assert lines and all(line.startswith("error: ") and "No space left" in line for line in lines)
        assert not list(out.glob(".*tmp*"))  # nothing half-written
        for npz in out.glob("*.npz"):
            read_latent_file(npz)  # what is there is whole
    finally:
        subprocess.run(["umount", str(out)], capture_output=True)


def test_ctrl_c_says_how_much_is_complete_and_how_to_finish(cli, tmp_path, monkeypatch):
    d = tmp_path / "in"
    d.mkdir()
    for s in ("face_00", "face_01", "face_02"):
        shutil.copy(SAMPLES / "targets" / f"{s}.png", d)
    real, calls = runner.project, []

    def interrupted_on_second_chunk(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(runner, "project", interrupted_on_second_chunk)
    out = tmp_path / "out"
    r = cli("project", d, "-o", out, *FAST, "--batch-size", "1")
    assert r.exit_code == 130
    assert f"interrupted: 1 target(s) complete in {out}; run the same command again to finish the job" in r.stderr
    monkeypatch.undo()
    again = cli("project", d, "-o", out, *FAST, "--batch-size", "1")
    assert "projected 2 target(s), skipped 1 complete" in again.stdout
