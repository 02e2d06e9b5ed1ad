"""`latent-fit bench` smoke test, the synthesis switches on CPU, and the memory helpers.
No timing is asserted: the numbers depend on the machine and its load."""

import json
import math

import pytest
import torch
from click.testing import CliRunner

from latent_fit import Config, devices, load_generator, project
from latent_fit import bench as B
from latent_fit.cli import main
from latent_fit.errors import LatentFitError


def test_bench_cli_prints_a_table_and_one_json_line():
    res = CliRunner().invoke(
        main,
        [
            "bench",
            "--device",
            "cpu",
            "--steps",
            "2",
            "--batch-sizes",
            "1,3",
            "--repeats",
            "1",
            "--quality",
            "0",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert "speedup" in res.output and "largest batch that fits" in res.output
    r = json.loads(lines[-1])
    for key in (
        "speedup_batched_vs_sequential",
        "loop_overhead",
        "images_per_second",
        "memory_per_sample_mb",
        "max_batch",
        "sequential_ms_per_image_step",
    ):
        assert math.isfinite(r[key]), key
    assert r["device"].startswith("cpu") and r["batch"] == 3 and [x["batch"] for x in r["rows"]] == [1, 3]
    assert r["images_per_second"] > 0 and r["memory_per_sample_mb"] > 0 and r["max_batch"] >= 1


def test_bench_rejects_bad_settings():
    res = CliRunner().invoke(main, ["bench", "--device", "cpu", "--batch-sizes", "1,x"])
    assert res.exit_code == 1 and "--batch-sizes" in res.output
    with pytest.raises(LatentFitError):
        B.bench(load_generator(), steps=1)


def test_switches_run_on_cpu_and_keep_the_images():
    G = load_generator()
    z = G.sample(3, seed=4)
    with torch.no_grad():
        ref = G.synthesize(z)
    devices.accelerate(G, precision="bf16", channels_last=True)
    with torch.no_grad():
        fast = G.synthesize(z)
    assert fast.dtype == torch.float32 and fast.shape == ref.shape
    assert (fast - ref).abs().max() < 0.1  # bf16 rounding
    # The loop under the switches; its Jacobian metrics would rerun the same synthesis and
    # backward on ~700 rows, ~0.35 s a row under CPU bf16 + channels_last (minutes, nothing new).
    res = project(G, ref, ["a", "b", "c"], steps=3, starts=2, loss="mse", jacobian_metrics=False)
    assert torch.isfinite(res.latent).all()
    with pytest.raises(LatentFitError, match="precision"):
        devices.accelerate(G, precision="fp16")


def test_memory_helpers():
    G = load_generator()
    one, three = (devices.step_memory(G, n, Config(steps=1, starts=2, loss="mse")) for n in (1, 3))
    assert 0 < one < three
    per, fit = devices.memory_fit(G, Config(starts=2, loss="mse"), 100 * 2**20)
    assert per > 0 and 1 <= fit and fit * per <= 100 * 2**20
    assert devices.is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert devices.is_oom(RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1 GB"))
    assert not devices.is_oom(RuntimeError("shape mismatch"))


def test_memory_fit_when_even_the_probe_runs_out_of_memory(monkeypatch):
    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(devices, "step_memory", oom)
    assert devices.memory_fit(load_generator(), Config()) == (0, 1)
