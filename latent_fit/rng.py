"""Counter-based random numbers: the same (key, counter) gives the same numbers on any device,
whatever else is in the batch. This is what makes a sample's result independent of its batch."""

from __future__ import annotations

import hashlib
import math

import torch

_M32 = 0xFFFFFFFF


def name_key(seed: int, name: str, start: int = 0) -> int:
    """A 32-bit key for one start of one named target (a name from a file name that is not
    UTF-8 is hashed as its bytes)."""
    digest = hashlib.blake2b(f"{seed}\0{name}\0{start}".encode("utf-8", "surrogateescape"), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def _mix(x: torch.Tensor) -> torch.Tensor:
    # lowbias32 integer hash on uint32 values held in int64 (low 32 bits survive wrap-around)
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def keyed_normal(keys: torch.Tensor, counter: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal numbers [len(keys), *shape], a pure function of (key, counter, position)."""
    n = math.prod(shape)
    ctr = int(_mix(torch.tensor(counter & _M32)))  # on the host: a device copy would sync each step
    base = _mix((keys.long()[:, None] ^ ctr) & _M32)
    idx = torch.arange(2 * n, device=keys.device)[None]
    bits = _mix(base ^ _mix(idx + 0x9E3779B9 & _M32)).to(torch.float64)
    u = (bits + 0.5) / 2.0**32  # uniform in (0, 1)
    u1, u2 = u[:, :n], u[:, n:]
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)  # Box-Muller
    return z.to(torch.float32).view(len(keys), *shape)
