"""Low-rank weight changes (`--tune-rank R`): each tuned weight moves by Δ = A·B, as LoRA does for
language models (Hu et al. 2021), so a target's change is R·(d0 + d1·k·k) numbers, not d0·d1·k·k.

A weight of shape [d0, d1, *kernel] changes by A [d0, R] @ B [R, d1·∏kernel], reshaped. A weight
where that would not be smaller (vectors, small matrices) keeps a full change. A delta maps each
tuned weight's name to its change for N targets: a tensor [N, *shape] (full) or a pair
(A [N, d0, R], B [N, R, rest]); inside vmap the same without N.

Plain layers (nn.Linear, nn.Conv2d, nn.ConvTranspose2d) render a low-rank change as dense batched
matrix products beside the unchanged layer, y = W x + A (B x) (see `layer_change`), so the
layer's own convolution stays one dense convolution over every target's rows; other layers get
their dense per-target weight θ0 + A·B.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

FULL = "full"
SUFFIXES = (".lora_a", ".lora_b")  # a low-rank change's two tensors in a tuned file


def factor_dims(shape: tuple[int, ...], rank: int | str) -> tuple[int, int] | None:
    """(d0, rest) of a weight's A [d0, rank] and B [rank, rest]; None where it keeps a full change
    (rank "full", a vector, or factors no smaller than the weight)."""
    if rank == FULL or len(shape) < 2:
        return None
    d0, rest = shape[0], math.prod(shape[1:])
    return (d0, rest) if rank * (d0 + rest) < d0 * rest else None


def zeros(
    tunable: dict[str, torch.Tensor], ranks: dict[str, int | str], n: int, init, starts: dict | None = None
) -> dict:
    """A delta of n targets that changes nothing, as leaves to optimize; ranks: each weight's rank
    (factor_dims). Full changes zeros; a pair as starts[name] where given (aligned_pair), else
    A zeros (so Δ = 0) and B init(i, (rank, rest)) [n, rank, rest] (normal numbers; i: the
    weight's index) over sqrt(rank)."""
    out = {}
    for i, (k, v) in enumerate(tunable.items()):
        rank = ranks[k]
        dims = factor_dims(tuple(v.shape), rank)
        if dims is None:
            out[k] = torch.zeros(n, *v.shape, device=v.device, requires_grad=True)
        elif starts and k in starts:
            out[k] = tuple(t.detach().clone().requires_grad_(True) for t in starts[k])
        else:
            a = torch.zeros(n, dims[0], rank, device=v.device, requires_grad=True)
            b = (init(i, (rank, dims[1])).to(v.device) / math.sqrt(rank)).requires_grad_(True)
            out[k] = (a, b)
    return out


def input_cols(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What plain layer m's weight meets in its input x [N, ...]: [N, dim, positions] (a
    transposed convolution's channel vectors at every pixel, a convolution's patches, a linear
    layer's rows). A change's input side (A of a transposed convolution, else B) acts on these."""
    if isinstance(m, nn.Conv2d):
        return F.unfold(x, m.kernel_size, padding=m.padding, stride=m.stride)
    if isinstance(m, nn.ConvTranspose2d):
        return x.flatten(2)
    return x.reshape(x.shape[0], -1, x.shape[-1]).mT


def capped(rank: int | str, cols: torch.Tensor) -> int | str:
    """A plain layer's rank: `rank`, or fewer where its input [N, dim, positions] (input_cols)
    has fewer positions per target: a pivot's input spans no more directions than that, so a
    higher rank adds nothing for the pivot (the bundled DCGAN's first layer sees the 1 x 1
    latent: rank 1)."""
    return rank if rank == FULL else min(rank, cols.shape[-1])


def aligned_pair(m: nn.Module, cols: torch.Tensor, rank: int, fill) -> tuple[torch.Tensor, torch.Tensor]:
    """The start of plain layer m's factors for targets whose pivots feed it cols [N, dim,
    positions] (input_cols): the input side (A of a transposed convolution, else B) holds the top
    `rank` principal directions of each pivot's own input, then fill(shape) normal numbers where
    the input has fewer; the output side zeros, so Δ = 0. A random input side catches ~rank/dim of
    the first gradients; these catch most, and tuning starts where the pivot's features lie
    (measured: docs/real-photos.md, low-rank tuning). Both sides as zeros()."""
    n, dim = cols.shape[:2]
    u = torch.linalg.svd(cols, full_matrices=False).U[..., :rank].mT * math.sqrt(dim)
    side = torch.cat([u, fill((rank - u.shape[1], dim)).to(u)], 1) / math.sqrt(rank)  # [N, rank, dim]
    w = m.weight
    if isinstance(m, nn.ConvTranspose2d):
        return side.mT.contiguous(), side.new_zeros(n, rank, w[0].numel())
    return side.new_zeros(n, w.shape[0], rank), side


@dataclass(frozen=True)
class Moments:
    """What the original generator feeds a plain layer over prior samples (layer_moments)."""

    sigma: torch.Tensor  # [dim, dim] mean outer product of its input_cols vectors
    positions: int  # input_cols positions per sample
    out_positions: int  # output positions per channel (where a bias change lands)
    scale: float  # 1 / the layer's mean output ‖y‖² per sample
    transposed: bool  # the input side is the weight's first dimension (A), not its last (B)


def layer_moments(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Moments:
    """Moments of plain layer m from its inputs x and outputs y over M prior samples."""
    cols = input_cols(m, x)
    sigma = cols @ cols.mT
    return Moments(
        sigma=sigma.sum(0) / (cols.shape[0] * cols.shape[2]),
        positions=cols.shape[2],
        out_positions=y[0, 0].numel(),
        scale=1 / float(y.pow(2).flatten(1).sum(1).mean()),
        transposed=isinstance(m, nn.ConvTranspose2d),
    )


def output_change(delta: dict, moments: dict[str, Moments]) -> torch.Tensor:
    """Per target [N]: Σ over plain layers of E‖Δy‖² / E‖y‖², each layer's output change over
    prior samples relative to its output, to first order (Δy = Δθ x + Δbias, their cross term left
    out): E‖Δθ x‖² = positions · tr(Δθ Σ Δθᵀ) on the input side, tr((AᵀΣA)(BBᵀ)) for a pair,
    never forming Δθ. ΣΔθ² weighted by what the layer sees. delta: weights and biases of the
    layers in `moments` (keyed by weight name)."""
    total = 0
    for k, v in delta.items():
        path, _, attr = k.rpartition(".")
        mo = moments[path + ".weight"]
        if attr == "bias":
            q = mo.out_positions * v.pow(2).sum(1)
        elif isinstance(v, tuple):
            a, b = v
            q = (a.mT @ mo.sigma @ a * (b @ b.mT)) if mo.transposed else (a.mT @ a * (b @ mo.sigma @ b.mT))
            q = mo.positions * q.sum((1, 2))
        else:
            w = v.flatten(2) if mo.transposed else v.flatten(2).mT  # [N, dim, rest]
            q = mo.positions * (w * (mo.sigma @ w)).sum((1, 2))
        total = total + mo.scale * q
    return total


def dense(change, shape: tuple[int, ...]) -> torch.Tensor:
    """A change as a dense tensor [..., *shape] (a tensor as it is; a pair as A·B)."""
    if isinstance(change, torch.Tensor):
        return change
    a, b = change
    return (a @ b).reshape(*a.shape[:-2], *shape)


def dense_delta(delta: dict, tunable: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every change of `delta` dense (tunable: the weights, for their shapes)."""
    return {k: dense(v, tuple(tunable[k].shape)) for k, v in delta.items()}


def sq_norm(change) -> torch.Tensor:
    """‖Δ‖² per target [N] of a change [N, ...] or a pair: trace(AᵀA·BBᵀ), without forming A·B."""
    if isinstance(change, torch.Tensor):
        return change.pow(2).reshape(change.shape[0], -1).sum(1)
    a, b = change
    return (a.mT @ a * (b @ b.mT)).sum((1, 2))


def leaves(delta: dict) -> list[torch.Tensor]:
    """The tensors of a delta (what the optimizer moves)."""
    return [t for v in delta.values() for t in (v if isinstance(v, tuple) else (v,))]


def each(delta: dict, fn) -> dict:
    """fn applied to every tensor of a delta (to both of a pair): detached, moved to a device."""
    return {k: tuple(fn(t) for t in v) if isinstance(v, tuple) else fn(v) for k, v in delta.items()}


def pick(delta: dict, i) -> dict:
    """Target(s) i of a delta (an index or a slice of its first dimension)."""
    return each(delta, lambda t: t[i])


def rank_of(delta: dict) -> int | str:
    """The largest rank of a delta's pairs ("full" when it has none)."""
    return max((v[0].shape[-1] for v in delta.values() if isinstance(v, tuple)), default=FULL)


def file_shapes(tunable: dict[str, torch.Tensor], rank: int | str | dict) -> dict[str, tuple[int, ...]]:
    """The tensors a tuned file holds for these weights at `rank` (one for all, or name -> rank):
    name -> shape (a pair as name.lora_a [d0, rank] and name.lora_b [rank, rest])."""
    out = {}
    for k, v in tunable.items():
        r = rank[k] if isinstance(rank, dict) else rank
        dims = factor_dims(tuple(v.shape), r)
        if dims is None:
            out[k] = tuple(v.shape)
        else:
            out[k + SUFFIXES[0]], out[k + SUFFIXES[1]] = (dims[0], r), (r, dims[1])
    return out


def file_mb(delta: dict) -> float:
    """Megabytes of target 0's tensors in a tuned file (half precision, as save_tuned writes them)."""
    return 2 * sum(t[0].numel() for t in leaves(delta)) / 1e6


def plain_layers(G: nn.Module, names) -> dict[str, nn.Module]:
    """The weights among `names` whose layer renders a low-rank change as dense products
    (layer_change): name -> its nn.Linear, nn.Conv2d or nn.ConvTranspose2d (ungrouped, undilated,
    zero padding, no output padding)."""
    out = {}
    for k in names:
        path, _, attr = k.rpartition(".")
        m = G.get_submodule(path) if attr == "weight" else None
        if type(m) is nn.Linear or (
            type(m) in (nn.Conv2d, nn.ConvTranspose2d)
            and m.groups == 1
            and set(m.dilation) == {1}
            and m.padding_mode == "zeros"
            and not isinstance(m.padding, str)
            and not any(getattr(m, "output_padding", (0,)))
        ):
            out[k] = m
    return out


def plain_at(G: nn.Module, rank: int | str) -> dict[str, nn.Module]:
    """plain_layers among the tunable weights of G that change by a pair at `rank`."""
    return plain_layers(G, [k for k, v in G.tunable().items() if factor_dims(tuple(v.shape), rank)])


def layer_change(m: nn.Module, x: torch.Tensor, out: torch.Tensor, a, b, bias) -> torch.Tensor:
    """What a change A·B of plain layer m's weight (and `bias`, a full change or None) adds to its
    output `out` for input x, as matrix products on the unfolded input (Conv2d: A (B unfold(x)))
    or folded output (ConvTranspose2d: fold(Bᵀ (Aᵀ x)))."""
    if isinstance(m, nn.Linear):
        y = x @ b.mT @ a.mT
    elif isinstance(m, nn.Conv2d):
        cols = F.unfold(x, m.kernel_size, padding=m.padding, stride=m.stride)
        y = (a @ (b @ cols)).view(out.shape)
    else:
        cols = b.mT @ (a.mT @ x.flatten(2))
        y = F.fold(cols, out.shape[-2:], m.kernel_size, padding=m.padding, stride=m.stride)
    if bias is None:
        return out + y
    return out + y + (bias if isinstance(m, nn.Linear) else bias[:, None, None])
