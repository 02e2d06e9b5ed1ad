"""`latent-fit bench`: the batched loop against one-target-at-a-time projection, loop overhead,
throughput and memory, on one device."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from .config import PROJECTION, Config, projection_config
from .devices import memory_fit
from .errors import LatentFitError
from .generators.base import Generator
from .objective import Inputs, Objective
from .optimize import project

BENCH_BATCH_SIZES = {"cpu": (1, 8, 64), "cuda": (1, 64, 1024, 4096)}  # defaults per device type


# --- bench ----------------------------------------------------------------------------------


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def describe_device(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    name = "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu ({name}, {torch.get_num_threads()} threads)"


def _fastest(marks: list[tuple[int, float]]) -> float:
    """Seconds per step of the fastest interval between (step, time) marks."""
    return min((t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(marks, marks[1:]) if s1 > s0)


class _Timer:
    """Times the batched loop on slices of fixed targets, and a bare forward+backward."""

    def __init__(self, G: Generator, cfg: Config, n: int, loss: str):
        self.G, self.cfg, self.space = G, cfg, cfg.space
        self.names = [f"bench{i}" for i in range(n)]
        self.c = G.cycled_labels(n)
        with torch.no_grad():
            z = G.sample(n, seed=123, space=cfg.space, c=self.c)
            self.targets = G.synthesize(z, cfg.space, self.c).float().clamp(-1, 1)
        self.objective = Objective.build(loss, reg=None, device=G.device)  # the loop's reconstruction terms

    def loop(self, b: int, first: int = 0, **over) -> tuple[float, float]:
        """(wall time of one project call on b targets from `first` on, its step time)."""
        rows = slice(first, first + b)
        marks = []
        t0 = time.perf_counter()
        project(
            self.G,
            self.targets[rows],
            self.names[rows],
            c=None if self.c is None else self.c[rows],
            config=self.cfg.replace(**over),
            progress=lambda s, _: marks.append((s, time.perf_counter())),
        )
        return time.perf_counter() - t0, _fastest(marks)

    def bare(self, b: int) -> float:
        """Seconds per step of forward+backward passes of generator and loss alone."""
        G, steps, every = self.G, self.cfg.steps, self.cfg.check_every
        cb = None if self.c is None else self.c[:b]
        z = G.sample(b, seed=7, space=self.space, c=cb).requires_grad_(True)
        marks = []
        for i in range(steps):
            if i % every == 0:
                _sync(G.device)
                marks.append((i, time.perf_counter()))
            img = G.synthesize(z, self.space, cb)
            lv = self.objective(Inputs(images=img, targets=self.targets[:b], dz=z, wr=z.new_zeros(b)))
            torch.autograd.grad(lv.sum(), [z])
        _sync(G.device)
        return _fastest(marks[1:] + [(steps, time.perf_counter())])  # the first interval warms up


def bench(
    G: Generator,
    *,
    batch_sizes=None,
    steps: int = 20,
    loss: str = "mse",
    space: str | None = None,
    repeats: int = 2,
    seq_targets: int = 4,
) -> dict:
    """Time the batched loop at each batch size against projecting `seq_targets` targets one
    after another (batch 1), at the same steps and loss, and against a bare forward+backward of
    generator and loss. Every time is the best of `repeats` (the least disturbed by other load);
    step times are the best interval between timestamps, taken every step on CPU (where that
    costs no sync) and twice per run on GPU.
    batch_sizes: default BENCH_BATCH_SIZES of the device type; sizes that do not fit are left out.
    Returns a dict: the headline figures at the largest batch (`speedup_batched_vs_sequential`,
    `loop_overhead`, `images_per_second` = image-steps per second: images rendered and
    back-propagated), one row per batch size, and memory per sample / largest batch that fits.
    """
    dev = G.device
    if batch_sizes is None:
        batch_sizes = BENCH_BATCH_SIZES.get(dev.type, BENCH_BATCH_SIZES["cpu"])
    if steps < 2 or repeats < 1 or seq_targets < 1 or not batch_sizes or min(batch_sizes) < 1:
        raise LatentFitError("bench needs steps >= 2, repeats >= 1 and batch sizes >= 1")
    space = G.check_space(space or G.default_space)
    every = 1 if dev.type == "cpu" else max(1, steps // 2)
    cfg = PROJECTION.replace(steps=steps, starts=1, loss=loss, space=space, optimize_noise=False, patience=steps + 1)
    cfg = cfg.replace(jacobian_metrics=False, check_every=every)
    per_sample, fit = memory_fit(G, cfg)
    too_big = sorted(b for b in set(batch_sizes) if b > fit)
    batch_sizes = sorted(b for b in set(batch_sizes) if b <= fit) or [1]
    timer = _Timer(G, cfg, max(max(batch_sizes), seq_targets), loss)
    for b in batch_sizes:  # warm-up: allocator, kernels, compilation
        timer.loop(b, steps=2, check_every=1)
    seq, best = _best_times(timer, batch_sizes, repeats, seq_targets, steps)
    rows = [_row(b, *best[b], seq, steps) for b in batch_sizes]
    top = rows[-1]
    return {
        "generator": G.name,
        "device": describe_device(dev),
        "steps": steps,
        "loss": loss,
        "space": space,
        "batch": top["batch"],
        "speedup_batched_vs_sequential": top["speedup"],
        "loop_overhead": top["loop_overhead"],
        "images_per_second": top["images_per_second"],
        "sequential_ms_per_image_step": 1e3 * seq,
        "rows": rows,
        "memory_per_sample_mb": per_sample / 2**20,
        "memory_measured": "cuda peak" if dev.type == "cuda" else "estimate (autograd saved tensors x2)",
        "max_batch": fit,
        "batch_sizes_too_big": too_big,
        "repeats": repeats,
        "torch": torch.__version__,
    }


def _best_times(timer: _Timer, batch_sizes: list[int], repeats: int, seq_targets: int, steps: int):
    """(seconds per image-step of seq_targets targets one after another, batch size -> [total,
    loop step, bare step] seconds), each the best of `repeats`."""
    seq = math.inf
    best = {b: [math.inf] * 3 for b in batch_sizes}
    for _ in range(repeats):
        seq = min(seq, sum(timer.loop(1, i)[0] for i in range(seq_targets)) / (seq_targets * steps))
        for b in batch_sizes:
            total, step = timer.loop(b)
            best[b] = [min(best[b][0], total), min(best[b][1], step), min(best[b][2], timer.bare(b))]
    return seq, best


def _row(b: int, total: float, step: float, bare_s: float, seq: float, steps: int) -> dict:
    per = total / (b * steps)
    return {
        "batch": b,
        "ms_per_image_step": 1e3 * per,
        "images_per_second": 1 / per,
        "loop_step_ms": 1e3 * step,
        "bare_step_ms": 1e3 * bare_s,
        "loop_overhead": 1 - bare_s / step,
        "speedup": seq / per,
    }


def format_table(r: dict) -> str:
    """The bench result as a few lines of text."""
    lines = [
        f"{r['generator']} on {r['device']}: {r['steps']} steps, loss {r['loss']}, best of {r['repeats']}",
        f"sequential (batch 1, one target after another): {r['sequential_ms_per_image_step']:.2f} ms per image-step",
        f"{'batch':>6} {'ms/img-step':>12} {'img-steps/s':>12} {'loop ms/step':>13} "
        f"{'bare ms/step':>13} {'overhead':>9} {'speedup':>8}",
    ]
    for row in r["rows"]:
        lines.append(
            f"{row['batch']:>6} {row['ms_per_image_step']:>12.3f} {row['images_per_second']:>12.1f} "
            f"{row['loop_step_ms']:>13.2f} {row['bare_step_ms']:>13.2f} "
            f"{row['loop_overhead']:>9.3f} {row['speedup']:>7.2f}x"
        )
    lines.append(
        f"memory per sample: {r['memory_per_sample_mb']:.2f} MiB ({r['memory_measured']}); "
        f"largest batch that fits: {r['max_batch']}"
    )
    if r["batch_sizes_too_big"]:
        lines.append(f"left out, too big for the device: {', '.join(map(str, r['batch_sizes_too_big']))}")
    return "\n".join(lines)


# --- time to quality ------------------------------------------------------------------------

PEER = PROJECTION.replace(starts=1, lr=0.1, patience=10**9)  # NVIDIA's projector: one start, 1000 steps
QUALITY_SEED = 2024  # targets G(z*) from seeds the tests do not use


def time_to_quality(G: Generator, encoder=None, *, n: int = 32, loss: str = "mse") -> list[dict]:
    """Our defaults (from the encoder's start when there is one), the same with twice the steps,
    and NVIDIA's schedule (one start x 1000 steps, batched), on n targets G(z*) from QUALITY_SEED
    rounded to 8 bits (as saved in a PNG), in one process, each with the end-of-run metrics: per
    run its seconds, their ratio to the peer's, and median / worst PSNR."""
    space = encoder.space if encoder is not None else G.default_space
    c = G.cycled_labels(n)
    with torch.no_grad():
        x = G.synthesize(G.sample(n, seed=QUALITY_SEED, space=space, c=c), space, c).clamp(-1, 1)
    targets = torch.round((x + 1) * 127.5) / 127.5 - 1  # the 8-bit levels of a PNG
    names = [f"q{i}" for i in range(n)]
    ours = projection_config(encoded=encoder is not None)
    label = "latent-fit defaults" + (" (encoder)" if encoder is not None else "")
    runs = [
        (f"{label}, {ours.steps} steps", ours, encoder),
        (f"{label}, {2 * ours.steps} steps", ours.replace(steps=2 * ours.steps), encoder),
        ("NVIDIA schedule (1 start x 1000 steps)", PEER, None),
    ]
    rows = []
    for label, cfg, E in runs:
        t0 = time.perf_counter()
        res = project(G, targets, names, config=cfg.replace(loss=loss, space=space), c=c, encoder=E)
        p = res.metrics["psnr"]
        rows.append(
            {
                "run": label,
                "seconds": time.perf_counter() - t0,
                "median_psnr": float(np.median(p)),
                "worst_psnr": float(p.min()),
                "candidate_steps_per_target": float(res.metrics["sample_steps"].mean()),
            }
        )
    for r in rows:
        r["time_vs_peer"] = r["seconds"] / rows[-1]["seconds"]
    return rows


def format_quality(rows: list[dict], n: int) -> str:
    lines = [
        f"time to quality on {n} generated targets (8-bit):",
        f"{'run':<46} {'seconds':>8} {'x peer':>7} {'median dB':>10} {'worst dB':>9} {'cand-steps':>11}",
    ]
    lines += [
        f"{r['run']:<46} {r['seconds']:>8.1f} {r['time_vs_peer']:>7.2f} {r['median_psnr']:>10.1f} "
        f"{r['worst_psnr']:>9.1f} {r['candidate_steps_per_target']:>11.0f}"
        for r in rows
    ]
    return "\n".join(lines)


# --- tuning: full against low rank ------------------------------------------------------------


def tuning_table(
    G: Generator, targets: torch.Tensor, names: list[str], ranks, *, encoder=None, loss: str = "mse"
) -> list[dict]:
    """One batched projection of `targets` (the defaults from `encoder`'s start, as `project`
    runs it), then one batched tuning of all of them around their pivots at each of `ranks` (the
    other tuning settings default), in one process:
    per run its wall and CPU seconds, median / worst PSNR and locality_psnr, the worst PSNR gap to
    the first rank's (per target) and the tuned file's megabytes."""
    from .lowrank import file_mb
    from .tuning import tune

    def timed(fn):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        _sync(G.device)
        return out, time.perf_counter() - t0, time.process_time() - c0

    space = None if encoder is None else encoder.space
    cfg = projection_config(encoded=encoder is not None, loss=loss, space=space)
    piv, wall, cpu = timed(lambda: project(G, targets, names, config=cfg, encoder=encoder))
    rows = [
        {"run": "projection", "seconds": wall, "cpu_seconds": cpu, "median_psnr": float(np.median(piv.metrics["psnr"]))}
    ]
    first = None
    for rank in ranks:
        res, wall, cpu = timed(
            lambda: tune(G, piv.latent, targets, names, space=piv.space, noise=piv.noise, loss=loss, tune_rank=rank)
        )
        p, loc = res.metrics["psnr"], res.metrics["locality_psnr"]
        first = p if first is None else first
        rows.append(
            {"run": f"tune_rank {rank}", "seconds": wall, "cpu_seconds": cpu, "median_psnr": float(np.median(p))}
            | {"worst_psnr": float(p.min()), "worst_gap_db": float((first - p).max())}
            | {"median_locality": float(np.median(loc)), "worst_locality": float(loc.min())}
            | {"file_mb": file_mb(res.delta), "per_target_psnr": [round(float(v), 2) for v in p]}
        )
    return rows


def format_tuning(rows: list[dict]) -> str:
    """tuning_table's rows as text: the projection, then a line per rank (gap: worst PSNR loss
    against the first rank; x proj: CPU seconds over the projection's)."""
    proj, n = rows[0], len(rows[1]["per_target_psnr"])
    lines = [
        f"tuning table: batched projection of {n} targets {proj['seconds']:.1f} s "
        f"({proj['cpu_seconds']:.1f} s CPU), median PSNR {proj['median_psnr']:.1f} dB; then one batched tuning per rank",
        f"{'run':<16} {'PSNR med/worst':>15} {'gap':>6} {'locality med/worst':>19} {'file MB':>8} {'s (CPU)':>9} {'x proj':>7}",
    ]
    lines += [
        f"{r['run']:<16} {r['median_psnr']:>7.1f}/{r['worst_psnr']:<7.1f} {r['worst_gap_db']:>6.2f} "
        f"{r['median_locality']:>9.1f}/{r['worst_locality']:<9.1f} {r['file_mb']:>8.3f} {r['cpu_seconds']:>9.1f} "
        f"{r['cpu_seconds'] / proj['cpu_seconds']:>7.2f}"
        for r in rows[1:]
    ]
    return "\n".join(lines)
