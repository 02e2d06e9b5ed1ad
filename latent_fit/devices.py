"""The device side: switches that make synthesis faster, and what a projection step costs in
memory (for --batch-size auto and out-of-memory handling)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import torch

from .config import Config
from .errors import ArgumentError
from .generators.base import Generator

CUDA_MEMORY_FRACTION = 0.9  # share of the free GPU memory a chunk may fill
CPU_MEMORY_FRACTION = 0.5  # share of the available RAM (the CPU figure is an estimate)
PRECISIONS = ("fp32", "bf16")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")


def accelerate(
    G: Generator, *, precision: str = "fp32", channels_last: bool = False, compile: str = "off"
) -> Generator:
    """Switch G's synthesis to a faster path, in place; returns G.

    precision bf16: synthesis under autocast (images come back float32; latents, loss and Adam
    stay float32). channels_last: NHWC weights and activations. compile: torch.compile mode
    (`reduce-overhead` adds CUDA graphs on GPU). Every switch also runs on CPU.
    """
    if precision not in PRECISIONS:
        raise ArgumentError("precision", precision, f"choose {' or '.join(PRECISIONS)}")
    if compile not in COMPILE_MODES:
        raise ArgumentError("compile", compile, f"choose one of {', '.join(COMPILE_MODES)}")
    if channels_last:
        G.to(memory_format=torch.channels_last)
    if precision == "fp32" and compile == "off":
        return G
    synth = G.synthesize
    if compile != "off":
        synth = torch.compile(synth, mode=None if compile == "default" else compile)
    device_type = G.device.type

    def synthesize(*args, **kwargs):
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            return synth(*args, **kwargs).float()

    G.synthesize = synthesize
    return G


# --- memory ---------------------------------------------------------------------------------


def is_oom(e: BaseException) -> bool:
    """Whether `e` says the device ran out of memory (CUDA, or a failed CPU allocation)."""
    return isinstance(e, torch.cuda.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and ("out of memory" in str(e) or "not enough memory" in str(e))
    )


def free_memory(device: torch.device) -> int:
    """Bytes a chunk may use on `device`: a share of the free GPU memory (plus what PyTorch
    holds cached) or of the available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(CUDA_MEMORY_FRACTION * (free + cached))
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        avail = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(CPU_MEMORY_FRACTION * avail)


def step_memory(G: Generator, n_targets: int, config: Config) -> int:
    """Bytes one projection step of `n_targets` targets needs.

    On CUDA the measured peak above what was allocated before. Elsewhere an estimate, as CPU
    allocators keep no peak: twice the bytes autograd keeps for the backward pass (activations,
    then as much again for their gradients and temporaries).
    """
    dev = G.device
    targets = torch.zeros(n_targets, G.img_channels, G.resolution, G.resolution, device=dev)
    c = G.cycled_labels(n_targets)
    from .optimize import one_step

    cfg = config.replace(wr_units="raw")  # relative units' estimate at the start is not a step
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        one_step(G, targets, c=c, config=cfg)
        return torch.cuda.max_memory_allocated(dev) - base
    saved: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        saved[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        one_step(G, targets, c=c, config=cfg)
    return 2 * sum(saved.values())


def memory_fit(G: Generator, config: Config, budget: int | None = None) -> tuple[int, int]:
    """(bytes per target, how many targets fit in one chunk) for projection with `config`,
    from the step memory of 1 and 3 targets, within `budget` bytes (default: free_memory).
    (0, 1) when even the probe runs out of memory."""
    try:
        m1, m3 = step_memory(G, 1, config), step_memory(G, 3, config)
    except RuntimeError as e:  # torch.cuda.OutOfMemoryError included
        if not is_oom(e):
            raise
        return 0, 1
    per = max(1, (m3 - m1) // 2)
    fixed = max(0, m1 - per)
    budget = free_memory(G.device) if budget is None else min(budget, free_memory(G.device))
    return per, max(1, (budget - fixed) // per)


def keep_freed_memory() -> bool:
    """glibc: serve every allocation from the heap and keep what is freed, instead of mapping
    each large tensor afresh (the kernel then zeroes its pages at every step: half the CPU time
    of a batched tuning went there). The process keeps its peak memory. True where it applied."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def default_device(device: str) -> str:
    """`auto`: cuda when there is one, else cpu; a cuda device on a machine without one is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ArgumentError("device", device, "no CUDA device on this machine; use cpu")
    return device
