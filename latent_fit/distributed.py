"""Running under torchrun: each process projects its own shard of the targets.

`torchrun --nproc-per-node N -m latent_fit project ...` sets RANK, WORLD_SIZE and LOCAL_RANK;
rank r takes every WORLD_SIZE-th target from the r-th on. The process group (nccl on GPU, gloo
on CPU) is used for one thing only: a barrier at the end, after which rank 0 merges the metrics.
That barrier runs on a gloo group with a long timeout, because ranks may finish hours apart
(after a resume, one rank may have nothing left to do).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

WAIT_TIMEOUT = timedelta(days=7)  # how long a finished rank waits for the others
_wait_group = None


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Shard:
        """The shard torchrun assigned to this process (rank 0 of 1 outside torchrun)."""
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))

    def device(self, device: str) -> str:
        """`auto` / `cuda` become this process's own GPU, cuda:LOCAL_RANK, when sharded."""
        if self.world > 1 and torch.cuda.is_available() and device in ("auto", "cuda"):
            return f"cuda:{self.local_rank}"
        return device


@contextlib.contextmanager
def process_group(shard: Shard, device: torch.device | str):
    """Join the job's process group for the duration of the block (nothing when world is 1)."""
    global _wait_group
    if shard.world == 1:
        yield
        return
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo", rank=shard.rank, world_size=shard.world, timeout=WAIT_TIMEOUT
    )
    _wait_group = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
    try:
        yield
    finally:
        _wait_group = None
        dist.destroy_process_group()


def active() -> bool:
    """Whether this process is one rank of a running job's process group."""
    return _wait_group is not None


def barrier() -> None:
    """Wait until every rank has got here."""
    dist.barrier(group=_wait_group)
