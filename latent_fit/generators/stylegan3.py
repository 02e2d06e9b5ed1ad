"""StyleGAN3 (alias-free) generator, configurations -T and -R, written from the paper
(Karras et al. 2021, "Alias-Free Generative Adversarial Networks") with the semantics of
NVlabs/stylegan3.

Module and parameter names follow the official networks so that `G_ema.state_dict()` loads strictly.
The mapping network, latent spaces and loading are StyleGAN2's; only the synthesis network differs:
Fourier features in, then layers of modulated convolution and a filtered leaky ReLU that upsamples,
applies the nonlinearity and downsamples with windowed-sinc (Kaiser) filters designed from each
layer's cutoff and stopband. Everything runs in fp32 and per sample.
"""

from __future__ import annotations

import contextvars
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .stylegan2 import FullyConnected, StyleGAN2Generator, _bias_act, _modulated_conv2d

_LOADING = contextvars.ContextVar("stylegan3_loading", default=False)  # see design_lowpass_filter


def _kaiser_beta(numtaps: int, width: float) -> float:
    """Kaiser window beta for a filter of `numtaps` taps and transition width (relative to Nyquist)."""
    atten = 2.285 * (numtaps - 1) * math.pi * width + 7.95  # attenuation in dB such a filter reaches
    if atten > 50:
        return 0.1102 * (atten - 8.7)
    if atten > 21:
        return 0.5842 * (atten - 21) ** 0.4 + 0.07886 * (atten - 21)
    return 0.0


def design_lowpass_filter(
    numtaps: int, cutoff: float, width: float, fs: float, radial: bool = False
) -> torch.Tensor | None:
    """Kaiser-windowed low-pass filter with unit DC gain: separable [numtaps] (a windowed sinc, as
    scipy.signal.firwin designs it) or radially symmetric [numtaps, numtaps] (a windowed jinc).
    None for one tap (the identity). While a network file is loaded, an empty tensor of that
    shape: the file's own filters fill it, and its size is checked (a torch allocation) before
    numpy would design a filter of any size the file's init_kwargs ask for."""
    if numtaps == 1:
        return None
    if _LOADING.get():
        return torch.empty([numtaps] * (2 if radial else 1))
    window = np.kaiser(numtaps, _kaiser_beta(numtaps, width / (fs / 2)))
    t = np.arange(numtaps) - (numtaps - 1) / 2
    if not radial:
        f = np.sinc(2 * cutoff / fs * t) * window
    else:
        r = torch.from_numpy(np.hypot(*np.meshgrid(t / fs, t / fs)))
        jinc = torch.where(
            r > 0,
            torch.special.bessel_j1(2 * math.pi * cutoff * r) / (math.pi * r.clamp_min(1e-30)),
            torch.full_like(r, cutoff),
        )
        f = jinc.numpy() * np.outer(window, window)
    return torch.as_tensor(f / f.sum(), dtype=torch.float32)


def _depthwise(x, f, dim, stride=1, transposed=False):
    """Convolve every channel of x along `dim` (2: height, 3: width) with the 1D filter f."""
    c = x.shape[1]
    shape = (c, 1, len(f), 1) if dim == 2 else (c, 1, 1, len(f))
    f = f.reshape(shape[1:])
    stride = (stride, 1) if dim == 2 else (1, stride)
    if transposed:  # zero insertion between samples, then convolution
        return F.conv_transpose2d(x, f.expand(shape), stride=stride, groups=c)
    return F.conv2d(x, f.flip(0).expand(shape), stride=stride, groups=c)


def _upsample(x, f, up, padding):
    """Zero insertion by `up`, padding (x0, x1, y0, y1; negative crops) and convolution with the
    separable filter f times `up` per axis; output size in*up + pad - taps + 1 (upfirdn2d)."""
    px0, px1, py0, py1 = padding
    if f is None:  # the identity: only the padding
        return F.pad(x, [px0, px1, py0, py1])
    k = len(f)
    for dim in (3, 2):
        x = _depthwise(x, f * up, dim, up, transposed=True)  # the full convolution, (in - 1)*up + k long
    return F.pad(x, [px0 - k + 1, px1 + up - k, py0 - k + 1, py1 + up - k])


def _downsample(x, f, down):
    """Convolution with f (separable [taps] or radial [taps, taps]), keeping every `down`-th sample."""
    if f is None:
        return x
    if f.ndim == 2:
        return F.conv2d(x, f.flip([0, 1]).expand(x.shape[1], 1, *f.shape), stride=down, groups=x.shape[1])
    for dim in (3, 2):
        x = _depthwise(x, f, dim, down)
    return x


def filtered_lrelu(x, fu, fd, bias, up, down, padding, gain, slope, clamp):
    """Bias, upsampling with fu, leaky ReLU (times gain, clamped to +-clamp), downsampling with fd:
    the paper's alias-suppressing nonlinearity (upstream filtered_lrelu). slope 1 is linear."""
    x = _upsample(x + bias.reshape(1, -1, 1, 1), fu, up, padding)
    x = _bias_act(x, None, "linear" if slope == 1 else "lrelu", gain, clamp)
    return _downsample(x, fd, down)


class SynthesisInput(nn.Module):
    """Fourier features of fixed random frequencies, rotated and translated per sample by w,
    then by the user's `transform` (the inverse of a transform of the output image)."""

    def __init__(self, w_dim, channels, size, sampling_rate, bandwidth):
        super().__init__()
        self.channels, self.size, self.sampling_rate, self.bandwidth = channels, size, sampling_rate, bandwidth
        self.weight = nn.Parameter(torch.randn(channels, channels))
        self.affine = FullyConnected(w_dim, 4)
        self.register_buffer("transform", torch.eye(3))
        # Random frequencies within the disc of radius `bandwidth`, and random phases.
        freqs = torch.randn(channels, 2)
        radii = freqs.norm(dim=1, keepdim=True)
        self.register_buffer("freqs", freqs / (radii * radii.square().exp().pow(0.25)) * bandwidth)
        self.register_buffer("phases", torch.rand(channels) - 0.5)

    def _transforms(self, w):
        """Per-sample 3x3 maps: rotation and translation from w, then the user's transform."""
        t = self.affine(w)
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        cos, sin, tx, ty = t.unbind(1)
        one, zero = torch.ones_like(cos), torch.zeros_like(cos)
        rotate = torch.stack([cos, -sin, zero, sin, cos, zero, zero, zero, one], 1).reshape(-1, 3, 3)
        translate = torch.stack([one, zero, -tx, zero, one, -ty, zero, zero, one], 1).reshape(-1, 3, 3)
        return rotate @ translate @ self.transform

    def forward(self, w):
        m = self._transforms(w)
        phases = self.phases + (self.freqs @ m[:, :2, 2:]).squeeze(2)  # [N, C]
        freqs = self.freqs @ m[:, :2, :2]  # [N, C, 2]
        # Frequencies the user's transform pushed out of band fade to zero before the Nyquist limit.
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)
        coords = (
            torch.arange(self.size, device=w.device, dtype=torch.float32) + 0.5 - self.size / 2
        ) / self.sampling_rate
        grid = torch.stack(torch.meshgrid(coords, coords, indexing="xy"), dim=-1)  # [H, W, (x, y)]
        x = torch.einsum("hwk,nck->nhwc", grid, freqs) + phases[:, None, None]
        x = torch.sin(x * (2 * math.pi)) * amplitudes[:, None, None]
        x = x @ (self.weight / math.sqrt(self.channels)).t()
        return x.permute(0, 3, 1, 2)


class SynthesisLayer(nn.Module):
    """Modulated convolution of the input (scaled by 1/sqrt of its tracked magnitude), then the
    filtered leaky ReLU between the input and output sampling rates; the last one (ToRGB) is a
    linear 1x1 convolution without demodulation."""

    def __init__(
        self,
        w_dim,
        is_torgb,
        is_critically_sampled,
        in_channels,
        out_channels,
        in_size,
        out_size,
        in_sampling_rate,
        out_sampling_rate,
        in_cutoff,
        out_cutoff,
        in_half_width,
        out_half_width,
        conv_kernel=3,
        filter_size=6,
        lrelu_upsampling=2,
        use_radial_filters=False,
        conv_clamp=256,
    ):
        super().__init__()
        self.is_torgb, self.conv_clamp = is_torgb, conv_clamp
        self.conv_kernel = 1 if is_torgb else conv_kernel
        tmp_sampling_rate = max(in_sampling_rate, out_sampling_rate) * (1 if is_torgb else lrelu_upsampling)
        self.up = int(round(tmp_sampling_rate / in_sampling_rate))
        self.down = int(round(tmp_sampling_rate / out_sampling_rate))
        up_taps = filter_size * self.up if self.up > 1 and not is_torgb else 1
        down_taps = filter_size * self.down if self.down > 1 and not is_torgb else 1
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, self.conv_kernel, self.conv_kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("magnitude_ema", torch.ones([]))
        self.register_buffer(
            "up_filter", design_lowpass_filter(up_taps, in_cutoff, in_half_width * 2, tmp_sampling_rate)
        )
        self.register_buffer(
            "down_filter",
            design_lowpass_filter(
                down_taps,
                out_cutoff,
                out_half_width * 2,
                tmp_sampling_rate,
                radial=use_radial_filters and not is_critically_sampled,
            ),
        )
        # Padding that yields out_size samples, placed for the symmetric interpretation of sample
        # locations (pixel centres at half-integers; the paper's appendix C.3).
        pad_total = (
            (out_size - 1) * self.down + 1 - (in_size + self.conv_kernel - 1) * self.up + up_taps + down_taps - 2
        )
        pad_lo = (pad_total + self.up) // 2
        self.padding = [pad_lo, pad_total - pad_lo] * 2

    def forward(self, x, w, fused=True):
        styles = self.affine(w)
        weight = self.weight
        if self.is_torgb:
            styles = styles / math.sqrt(weight[0].numel())
        else:  # normalize weight and styles before modulating; demodulation makes it exact
            weight = weight * weight.square().mean(dim=[1, 2, 3], keepdim=True).rsqrt()
            styles = styles * styles.square().mean(dim=1, keepdim=True).rsqrt()
        x = x * self.magnitude_ema.rsqrt()
        x = _modulated_conv2d(
            x, weight, styles, demodulate=not self.is_torgb, fused=fused, padding=self.conv_kernel - 1
        )
        gain, slope = (1.0, 1.0) if self.is_torgb else (math.sqrt(2), 0.2)
        return filtered_lrelu(
            x,
            self.up_filter,
            self.down_filter,
            self.bias,
            self.up,
            self.down,
            self.padding,
            gain,
            slope,
            self.conv_clamp,
        )


def layer_specs(
    img_resolution,
    img_channels,
    channel_base,
    channel_max,
    num_layers,
    num_critical,
    first_cutoff,
    first_stopband,
    last_stopband_rel,
    margin_size,
):
    """Per layer 0..num_layers (the last is ToRGB): cutoff f_c, minimum stopband f_t, sampling rate,
    transition half-width f_h, size in pixels and channels. Cutoffs and stopbands grow geometrically
    from the first layer's to the image's Nyquist frequency, reached num_critical layers before the end.
    The architecture's defaults are SynthesisNetwork's (one place)."""
    last_cutoff = img_resolution / 2
    exponents = np.minimum(np.arange(num_layers + 1) / (num_layers - num_critical), 1)
    cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
    stopbands = first_stopband * (last_cutoff * last_stopband_rel / first_stopband) ** exponents
    rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, img_resolution))))
    half_widths = np.maximum(stopbands, rates / 2) - cutoffs
    sizes = rates + margin_size * 2
    sizes[-2:] = img_resolution
    channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
    channels[-1] = img_channels
    return [
        dict(cutoff=float(c), sampling_rate=int(s), half_width=float(h), size=int(n), channels=int(k))
        for c, s, h, n, k in zip(cutoffs, rates, half_widths, sizes, channels)
    ]


class SynthesisNetwork(nn.Module):
    """ws [N, num_layers + 2, w_dim] -> images [N, img_channels, R, R]: input, layers L0 ... ToRGB.

    The signature of StyleGAN2's synthesis; there are no noise inputs (noise_shapes is empty)."""

    noise_shapes: tuple = ()

    def __init__(
        self,
        w_dim,
        img_resolution,
        img_channels,
        channel_base=32768,
        channel_max=512,
        num_layers=14,
        num_critical=2,
        first_cutoff=2,
        first_stopband=2**2.1,
        last_stopband_rel=2**0.3,
        margin_size=10,
        output_scale=0.25,
        **layer_kwargs,
    ):
        super().__init__()
        specs = layer_specs(
            img_resolution,
            img_channels,
            channel_base,
            channel_max,
            num_layers,
            num_critical,
            first_cutoff,
            first_stopband,
            last_stopband_rel,
            margin_size,
        )
        self.num_ws, self.output_scale = num_layers + 2, output_scale
        first = specs[0]
        self.input = SynthesisInput(w_dim, first["channels"], first["size"], first["sampling_rate"], first["cutoff"])
        self.layer_names = []
        for idx, out in enumerate(specs):
            inp = specs[max(idx - 1, 0)]
            layer = SynthesisLayer(
                w_dim,
                idx == num_layers,
                idx >= num_layers - num_critical,
                inp["channels"],
                out["channels"],
                inp["size"],
                out["size"],
                inp["sampling_rate"],
                out["sampling_rate"],
                inp["cutoff"],
                out["cutoff"],
                inp["half_width"],
                out["half_width"],
                **layer_kwargs,
            )
            name = f"L{idx}_{out['size']}_{out['channels']}"
            setattr(self, name, layer)
            self.layer_names.append(name)

    def forward(self, ws, noise_mode="const", noise=None, fused_modconv=True):
        """noise_mode and noise exist for StyleGAN2's signature: StyleGAN3 has no noise inputs."""
        if noise:
            raise ValueError(f"StyleGAN3 has no noise inputs; got {len(noise)} noise tensors")
        ws = ws.to(torch.float32).unbind(dim=1)
        x = self.input(ws[0])
        for name, w in zip(self.layer_names, ws[1:]):
            x = getattr(self, name)(x, w, fused_modconv)
        return x * self.output_scale


class StyleGAN3Generator(StyleGAN2Generator):
    """StyleGAN3 G built from a network pickle's init_kwargs: StyleGAN2's mapping and latent spaces
    (w default, w+, z) with the alias-free synthesis network."""

    family = "StyleGAN3"
    synthesis_network = SynthesisNetwork
    mapping_defaults = {"num_layers": 2}

    @classmethod
    def from_state_dict(
        cls, init_kwargs: dict, state_dict: dict, name: str = "", sha256: str = ""
    ) -> StyleGAN3Generator:
        """StyleGAN2's, with the filters taken from the state dict instead of designed."""
        token = _LOADING.set(True)
        try:
            return super().from_state_dict(init_kwargs, state_dict, name=name, sha256=sha256)
        finally:
            _LOADING.reset(token)
