"""The bundled DCGAN face generator `digiface-dcgan64` (64 px, z ~ N(0, I) of shape [100]).

Weights: weights/digiface-dcgan64.safetensors, converted from the MIT-licensed PyPI package
gan-face-generate 1.1.1 (see weights/digiface-dcgan64.md). BatchNorm is folded into the
transposed convolutions at load time: the network is then a pure per-sample function.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Generator

SHA256 = "e29fa54763dce3d34f234d3a358eccf26e133e04e420bd3f48453950e9b0b9a2"
BN_EPS = 1e-5


class DCGAN(Generator):
    """DCGAN generator: ConvTranspose2d blocks 1 -> 4 -> 8 -> ... -> resolution, Tanh output."""

    def __init__(self, state: dict[str, torch.Tensor], name: str = "dcgan", sha256: str = ""):
        super().__init__()
        convs = sorted(
            (k for k in state if k.endswith(".weight") and state[k].ndim == 4), key=lambda k: int(k.split(".")[1])
        )
        layers: list[nn.Module] = []
        for i, key in enumerate(convs):
            w = state[key]
            last = i == len(convs) - 1
            conv = nn.ConvTranspose2d(w.shape[0], w.shape[1], 4, 1 if i == 0 else 2, 0 if i == 0 else 1)
            bias = torch.zeros(w.shape[1])
            if not last:  # fold the eval-mode BatchNorm that follows into weight and bias
                bn = key.split(".")[0] + f".{int(key.split('.')[1]) + 1}."
                scale = state[bn + "weight"] / torch.sqrt(state[bn + "running_var"] + BN_EPS)
                w = w * scale.view(1, -1, 1, 1)
                bias = state[bn + "bias"] - state[bn + "running_mean"] * scale
            conv.weight.data.copy_(w)
            conv.bias.data.copy_(bias)
            layers += [conv, nn.Tanh() if last else nn.ReLU()]
        self.net = nn.Sequential(*layers)
        self.name, self.sha256 = name, sha256
        self.z_dim = state[convs[0]].shape[0]
        self.resolution = 4 * 2 ** (len(convs) - 1)
        self.freeze()

    def synthesize(self, latent, space="z", c=None, noise=None):
        return self.net(latent.view(latent.shape[0], -1, 1, 1))
