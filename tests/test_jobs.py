"""Large jobs: resume after SIGKILL, stale temp files, out-of-memory splitting, --batch-size auto,
and two CPU processes under torchrun sharing the targets."""

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from latent_fit import Config, load_generator, read_latent_file
from latent_fit.cli import main
from latent_fit.outputs import OutputFolder
from latent_fit.runs import project as runner

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "targets"
STEMS = [f"face_{i:02d}" for i in range(6)]
FAST = ["--steps", "3", "--starts", "1", "--loss", "mse", "--device", "cpu"]
OPTIONS = dict(steps=3, starts=1, loss="mse")


@pytest.fixture(scope="module")
def G():
    return load_generator("digiface-dcgan64", "cpu")


@pytest.fixture
def targets(tmp_path):
    d = tmp_path / "targets"
    d.mkdir()
    for s in STEMS:
        shutil.copy(SAMPLES / f"{s}.png", d / f"{s}.png")
    return d


def env():
    return os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def assert_finished(out: Path, stems=STEMS):
    """Every target complete, metrics list each once, no temp file left, every .npz reads."""
    assert all(OutputFolder(out).is_complete(s) for s in stems)
    assert sorted(p.stem for p in out.glob("*.npz")) == sorted(stems)
    for p in out.glob("*.npz"):
        read_latent_file(p)
    with open(out / "metrics.csv") as f:
        assert sorted(r["target"] for r in csv.DictReader(f)) == sorted(stems)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_rerun_after_sigkill_finishes_the_job_without_redoing(targets, tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "latent_fit",
        "project",
        str(targets),
        "--out",
        str(out),
        "--steps",
        "20",  # a target still takes over a second (its metrics, images): killed after two of six
        "--starts",
        "1",
        "--batch-size",
        "1",
        "--loss",
        "mse",
        "--device",
        "cpu",
    ]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.npz"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the job ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.stem: p.stat().st_mtime_ns for p in out.glob("*.npz")}
    assert 2 <= len(finished) < len(STEMS)

    res = CliRunner().invoke(main, cmd[3:])
    assert res.exit_code == 0, res.output
    assert f"projected {len(STEMS) - len(finished)} target(s), skipped {len(finished)} complete" in res.output
    assert {s: (out / f"{s}.npz").stat().st_mtime_ns for s in finished} == finished
    assert_finished(out)


def test_rerun_removes_stale_temps_and_redoes_a_half_written_target(G, targets, tmp_path):
    out = tmp_path / "out"
    runner.project_files(G, [str(targets)], out, batch_size=6, **OPTIONS)
    (out / "face_01.npz").unlink()  # killed after its images, before its .npz
    stale = [".face_01.npz.k3j9x0q2.tmp.npz", ".face_02_compare.png.a1b2c3d4.tmp.png", ".metrics.csv.zz11yy22.tmp.csv"]
    for name in stale:
        (out / name).write_bytes(b"half")
    foreign = out / ".other.png.a1b2c3d4.tmp.png"  # not this job's: another writer may own it
    foreign.write_bytes(b"x")
    before = (out / "face_00.npz").stat().st_mtime_ns

    rep = runner.project_files(G, [str(targets)], out, batch_size=6, **OPTIONS)
    assert rep.done == ["face_01"] and len(rep.skipped) == 5 and not rep.errors
    assert (out / "face_00.npz").stat().st_mtime_ns == before
    assert foreign.exists()
    foreign.unlink()
    assert_finished(out)


def test_out_of_memory_chunks_are_split_and_results_do_not_change(G, targets, tmp_path, monkeypatch):
    ref = runner.project_files(G, [str(targets)], tmp_path / "ref", batch_size=6, **OPTIONS)
    assert len(ref.done) == 6
    real, sizes = runner.project, []

    def small_device(G, batch, names, **kw):
        sizes.append(len(names))
        if len(names) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(G, batch, names, **kw)

    monkeypatch.setattr(runner, "project", small_device)
    rep = runner.project_files(G, [str(targets)], tmp_path / "out", batch_size=6, **OPTIONS)
    assert sorted(rep.done) == STEMS and not rep.errors
    assert sizes[:2] == [6, 3] and max(n for n in sizes[2:]) <= 3
    for s in STEMS:
        a = read_latent_file(tmp_path / "ref" / f"{s}.npz")["latent"]
        b = read_latent_file(tmp_path / "out" / f"{s}.npz")["latent"]
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert_finished(tmp_path / "out")


def test_a_target_too_big_even_alone_is_reported_and_the_rest_goes_on(G, targets, tmp_path, monkeypatch):
    real = runner.project

    def no_room_for_face_03(G, batch, names, **kw):
        if "face_03" in names:
            raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 9 GB")
        return real(G, batch, names, **kw)

    monkeypatch.setattr(runner, "project", no_room_for_face_03)
    rep = runner.project_files(G, [str(targets)], tmp_path / "out", batch_size=4, **OPTIONS)
    assert sorted(rep.done) == [s for s in STEMS if s != "face_03"]
    assert len(rep.errors) == 1 and "face_03.png: out of memory" in rep.errors[0]


def test_batch_size_auto(G, targets, tmp_path, monkeypatch):
    from latent_fit.devices import memory_fit

    per, fit = memory_fit(G, Config(**OPTIONS), runner.CPU_CHUNK_BYTES)
    n = runner.auto_batch_size(G, 10**6, Config(**OPTIONS))
    assert per > 0 and n == fit and 1 <= n * per <= runner.CPU_CHUNK_BYTES
    assert runner.auto_batch_size(G, 3, Config(**OPTIONS)) == 3
    # with tuning, a chunk also holds every target's tuned weights (5 copies of 14.3 MB here)
    from latent_fit.tuning import Tuning, tuning_bytes

    tuned = runner.auto_batch_size(G, 10**6, Config(**OPTIONS), Tuning(tune_rank="full"))
    assert 1 <= tuned < n and tuned * tuning_bytes(G, per) <= runner.CPU_CHUNK_BYTES
    low = runner.auto_batch_size(G, 10**6, Config(**OPTIONS), Tuning())  # the default here: rank 20
    assert tuned < low and low * tuning_bytes(G, per, 20) <= runner.CPU_CHUNK_BYTES

    calls = []
    real = runner.project
    monkeypatch.setattr(
        runner, "project", lambda G, batch, names, **kw: calls.append(len(names)) or real(G, batch, names, **kw)
    )
    res = CliRunner().invoke(
        main, ["project", str(targets), "--out", str(tmp_path / "out"), "--batch-size", "auto", *FAST]
    )
    assert res.exit_code == 0, res.output
    assert calls == [6]
    res = CliRunner().invoke(main, ["project", str(targets), "--out", str(tmp_path / "o2"), "--batch-size", "0", *FAST])
    assert res.exit_code != 0 and "--batch-size" in res.output


def test_torchrun_two_cpu_processes_cover_every_target_once(targets, tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "latent_fit",
        "project",
        str(targets),
        "--out",
        str(out),
        "--batch-size",
        "2",
        *FAST,
    ]
    res = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    for r in (0, 1):  # 3 each: together 6, so no target was done twice
        assert f"rank {r}/2: projected 3 target(s), skipped 0 complete, 0 failed" in res.stdout
    assert_finished(out)


def test_ranks_share_the_targets_with_no_overlap_and_no_gap(G, targets, tmp_path):
    out = tmp_path / "out"
    done = [
        runner.project_files(G, [str(targets)], out, batch_size=2, rank=r, world=4, **OPTIONS).done for r in range(4)
    ]
    assert sorted(s for d in done for s in d) == STEMS
    assert not (out / "metrics.csv").exists()  # no process group: merged by a later write_metrics
    OutputFolder(out).write_metrics(runner.METRIC_COLUMNS)
    assert_finished(out)
