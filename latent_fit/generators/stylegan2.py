"""StyleGAN2 generator with the semantics of stylegan2-ada-pytorch, written from the equations.

Module and parameter names follow the official networks so that `G_ema.state_dict()` loads strictly.
Everything runs in fp32 (the fp16 blocks of the original behave as with force_fp32=True), and every
operation works per sample: a sample's image never depends on the rest of its batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LatentFitError
from .base import Generator

_ACTIVATIONS = {  # name -> (function, gain that keeps the signal's magnitude)
    "linear": (lambda x: x, 1.0),
    "relu": (F.relu, math.sqrt(2)),
    "lrelu": (lambda x: F.leaky_relu(x, 0.2), math.sqrt(2)),
}
# Constructor options that only concern fp16 speed or training: no effect on the fp32 forward pass.
_NO_EFFECT = {
    "num_fp16_res",
    "fp16_channels_last",
    "channels_last",
    "fused_modconv_default",
    "freeze_layers",
    "freeze_embed",
    "magnitude_ema_beta",
}


def lowpass_filter(taps=(1, 3, 3, 1)) -> torch.Tensor:
    """The normalized 2D low-pass filter (outer product of `taps`) that resampling layers store."""
    f = torch.tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def _effective(kwargs):
    return {k: v for k, v in kwargs.items() if k not in _NO_EFFECT}


def _bias_act(x, bias, act="linear", gain=1.0, clamp=None):
    """bias, activation, gain and clamp to [-clamp, clamp], in that order (upstream bias_act)."""
    if bias is not None:
        x = x + bias.reshape(1, -1, *[1] * (x.ndim - 2))
    x = _ACTIVATIONS[act][0](x)
    if gain != 1:
        x = x * gain
    return x if clamp is None else x.clamp(-clamp, clamp)


def _normalize_2nd_moment(x, eps=1e-8):
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def _filter2d(x, f, padding):
    """Depthwise true convolution of x with the 2D filter f (upfirdn2d without resampling)."""
    c = x.shape[1]
    return F.conv2d(x, f.flip([0, 1]).expand(c, 1, *f.shape), padding=padding, groups=c)


def _upsample2d(x, f):
    """2x upsampling: zero insertion, then filtering with 4 * f (f has 4 taps)."""
    c = x.shape[1]
    return F.conv_transpose2d(x, (f * 4).expand(c, 1, *f.shape), stride=2, padding=1, groups=c)


def _conv(x, w, up, f, padding=None):
    """Grouped convolution of x [B, G*I, H, W] with weights w [G, O, I, k, k] ('same' size unless
    `padding` is given).

    With `up`, a stride-2 transposed convolution followed by the 4-tap filter f doubles the size
    (conv2d_resample with up=2).
    """
    g, o, i, k, _ = w.shape
    if not up:
        return F.conv2d(x, w.reshape(g * o, i, k, k), padding=k // 2 if padding is None else padding, groups=g)
    x = F.conv_transpose2d(x, w.transpose(1, 2).reshape(g * i, o, k, k), stride=2, groups=g)
    return _filter2d(x, f * 4, padding=2 - k // 2)


def _modulated_conv2d(x, weight, styles, demodulate=True, up=False, f=None, fused=True, padding=None):
    """Convolution with weights scaled per sample by styles [N, I], optionally demodulated.

    fused: one grouped convolution with per-sample weights; otherwise the input is scaled before and
    the output after a shared convolution. Both give the same result.
    """
    n = x.shape[0]
    dcoefs = None
    if demodulate:  # 1 / ||weight * style|| per output channel: [N, O]
        dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()
    if not fused:
        x = _conv(x * styles.reshape(n, -1, 1, 1), weight.unsqueeze(0), up, f, padding)
        return x if dcoefs is None else x * dcoefs.reshape(n, -1, 1, 1)
    w = weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)
    if dcoefs is not None:
        w = w * dcoefs.reshape(n, -1, 1, 1, 1)
    x = _conv(x.reshape(1, -1, *x.shape[2:]), w, up, f, padding)
    return x.reshape(n, -1, *x.shape[2:])


class FullyConnected(nn.Module):
    """Linear layer with equalized learning rate: stored weights are divided by their runtime gains."""

    def __init__(self, in_features, out_features, activation="linear", lr_multiplier=1.0, bias_init=0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.activation = activation
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x):
        w, b = self.weight * self.weight_gain, self.bias * self.bias_gain
        if self.activation == "linear":
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return _bias_act(x @ w.t(), b, self.activation, _ACTIVATIONS[self.activation][1])


class MappingNetwork(nn.Module):
    """z (and label c) -> w, broadcast to num_ws copies, with optional truncation towards w_avg."""

    def __init__(
        self,
        z_dim,
        c_dim,
        w_dim,
        num_ws,
        num_layers=8,
        embed_features=None,
        layer_features=None,
        activation="lrelu",
        lr_multiplier=0.01,
        w_avg_beta=0.995,
    ):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, c_dim, w_dim, num_ws, num_layers
        embed_features = 0 if c_dim == 0 else (w_dim if embed_features is None else embed_features)
        layer_features = w_dim if layer_features is None else layer_features
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnected(c_dim, embed_features)
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnected(features[i], features[i + 1], activation, lr_multiplier))
        if w_avg_beta is not None:  # the tracked mean of w (a buffer; frozen here)
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z, c=None, truncation_psi=1.0, truncation_cutoff=None):
        """ws [N, num_ws, w_dim]; truncation applies to the first truncation_cutoff ws (None: all)."""
        x = []
        if self.z_dim > 0:
            x.append(_normalize_2nd_moment(z.to(torch.float32)))
        if self.c_dim > 0:
            if c is None:
                raise LatentFitError(f"this generator is conditional: pass labels c of shape [N, {self.c_dim}]")
            x.append(_normalize_2nd_moment(self.embed(c.to(torch.float32))))
        x = torch.cat(x, dim=1)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        x = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            cut = self.num_ws if truncation_cutoff is None else truncation_cutoff
            x = torch.cat([self.w_avg.lerp(x[:, :cut], truncation_psi), x[:, cut:]], dim=1)
        return x


class SynthesisLayer(nn.Module):
    """Modulated, demodulated convolution (optionally 2x up), noise, bias, activation and clamp."""

    def __init__(
        self,
        in_channels,
        out_channels,
        w_dim,
        resolution,
        up=False,
        kernel_size=3,
        use_noise=True,
        activation="lrelu",
        conv_clamp=None,
        taps=(1, 3, 3, 1),
    ):
        super().__init__()
        self.resolution, self.up, self.use_noise = resolution, up, use_noise
        self.activation, self.conv_clamp = activation, conv_clamp
        self.register_buffer("resample_filter", lowpass_filter(taps))
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x, w, noise=None, fused=True, gain=1.0):
        x = _modulated_conv2d(x, self.weight, self.affine(w), up=self.up, f=self.resample_filter, fused=fused)
        if noise is not None:
            x = x + noise * self.noise_strength
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return _bias_act(x, self.bias, self.activation, _ACTIVATIONS[self.activation][1] * gain, clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution to image channels, without demodulation."""

    def __init__(self, in_channels, out_channels, w_dim, kernel_size=1, conv_clamp=None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)

    def forward(self, x, w, fused=True):
        x = _modulated_conv2d(x, self.weight, self.affine(w) * self.weight_gain, demodulate=False, fused=fused)
        return _bias_act(x, self.bias, clamp=self.conv_clamp)


class SkipUpConv(nn.Module):
    """The 1x1 upsampling convolution of the 'resnet' shortcut (no bias, linear)."""

    def __init__(self, in_channels, out_channels, taps=(1, 3, 3, 1)):
        super().__init__()
        self.register_buffer("resample_filter", lowpass_filter(taps))
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x, gain=1.0):
        return _conv(x, (self.weight * self.weight_gain).unsqueeze(0), True, self.resample_filter) * gain


class SynthesisBlock(nn.Module):
    """One resolution: [const | conv0 (2x up)], conv1, and ToRGB added to the upsampled image."""

    def __init__(
        self,
        in_channels,
        out_channels,
        w_dim,
        resolution,
        img_channels,
        is_last,
        architecture="skip",
        resample_filter=(1, 3, 3, 1),
        conv_clamp=None,
        **layer_kwargs,
    ):
        super().__init__()
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"unknown architecture {architecture!r}")
        if len(resample_filter) != 4:
            raise ValueError(f"only 4-tap resample filters are supported, not {list(resample_filter)}")
        self.in_channels, self.architecture = in_channels, architecture
        self.register_buffer("resample_filter", lowpass_filter(resample_filter))
        layer = dict(w_dim=w_dim, resolution=resolution, conv_clamp=conv_clamp, **layer_kwargs)
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, up=True, taps=resample_filter, **layer)
        self.conv1 = SynthesisLayer(out_channels, out_channels, **layer)
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        if in_channels != 0 and architecture == "resnet":
            self.skip = SkipUpConv(in_channels, out_channels, resample_filter)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = int(hasattr(self, "torgb"))

    def forward(self, x, img, ws, noise, fused=True):
        """ws [N, num_conv + num_torgb, w_dim]; noise maps a layer to its noise input (or lacks it)."""
        w = iter(ws.unbind(dim=1))
        if self.in_channels == 0:
            x = self.const.expand(ws.shape[0], *self.const.shape)
            x = self.conv1(x, next(w), noise.get(self.conv1), fused)
        elif self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x, next(w), noise.get(self.conv0), fused)
            x = y + self.conv1(x, next(w), noise.get(self.conv1), fused, gain=math.sqrt(0.5))
        else:
            x = self.conv0(x, next(w), noise.get(self.conv0), fused)
            x = self.conv1(x, next(w), noise.get(self.conv1), fused)
        if img is not None:
            img = _upsample2d(img, self.resample_filter)
        if self.num_torgb:
            y = self.torgb(x, next(w), fused)
            img = y if img is None else img + y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> images [N, img_channels, R, R] through blocks b4 ... bR."""

    def __init__(self, w_dim, img_resolution, img_channels, channel_base=32768, channel_max=512, **block_kwargs):
        super().__init__()
        log2 = int(math.log2(img_resolution))
        if img_resolution < 4 or 2**log2 != img_resolution:
            raise ValueError(f"img_resolution must be a power of 2 >= 4, not {img_resolution}")
        self.w_dim = w_dim
        self.resolutions = [2**i for i in range(2, log2 + 1)]
        channels = {r: min(channel_base // r, channel_max) for r in self.resolutions}
        for r in self.resolutions:
            setattr(
                self,
                f"b{r}",
                SynthesisBlock(
                    channels[r // 2] if r > 4 else 0,
                    channels[r],
                    w_dim,
                    r,
                    img_channels,
                    r == img_resolution,
                    **block_kwargs,
                ),
            )
        self.blocks = [getattr(self, f"b{r}") for r in self.resolutions]
        self.num_ws = sum(b.num_conv for b in self.blocks) + self.blocks[-1].num_torgb
        self.noise_layers = [m for m in self.modules() if isinstance(m, SynthesisLayer) and m.use_noise]

    @property
    def noise_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Per-sample shape (1, H, W) of every noise input, in the order `noise` lists them."""
        return tuple((1, m.resolution, m.resolution) for m in self.noise_layers)

    def forward(self, ws, noise_mode="const", noise=None, fused_modconv=True):
        """noise: one tensor [N, 1, H, W] per noise input; it replaces noise_mode
        ('const': the stored noise_const buffers, 'random': fresh N(0, 1), 'none': no noise)."""
        ws = ws.to(torch.float32)
        if noise is None:
            if noise_mode not in ("const", "random", "none"):
                raise ValueError(f"noise_mode must be 'const', 'random' or 'none', not {noise_mode!r}")
            noise = [
                None
                if noise_mode == "none"
                else m.noise_const
                if noise_mode == "const"
                else torch.randn(ws.shape[0], 1, m.resolution, m.resolution, device=ws.device)
                for m in self.noise_layers
            ]
        noise = dict(zip(self.noise_layers, noise))
        x = img = None
        i = 0
        for block in self.blocks:
            x, img = block(x, img, ws[:, i : i + block.num_conv + block.num_torgb], noise, fused_modconv)
            i += block.num_conv
        return img


class StyleGAN2Generator(Generator):
    """StyleGAN2 G built from a network pickle's init_kwargs; latent spaces w (default), w+ and z."""

    spaces = ("w", "w+", "z")
    default_space = "w"
    family = "StyleGAN2"
    synthesis_network = SynthesisNetwork  # the StyleGAN3 generator swaps in its own
    mapping_defaults: dict = {}  # mapping kwargs whose default differs from MappingNetwork's

    def __init__(
        self,
        z_dim,
        c_dim,
        w_dim,
        img_resolution,
        img_channels,
        mapping_kwargs=None,
        synthesis_kwargs=None,
        **more_synthesis_kwargs,
    ):
        """The official constructor arguments; the stylegan3 repo passes synthesis kwargs flat."""
        super().__init__()
        synthesis_kwargs = {**(synthesis_kwargs or {}), **more_synthesis_kwargs}
        self.synthesis = self.synthesis_network(w_dim, img_resolution, img_channels, **_effective(synthesis_kwargs))
        self.num_ws = self.synthesis.num_ws
        mapping_kwargs = {**self.mapping_defaults, **_effective(mapping_kwargs or {})}
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, **mapping_kwargs)
        self.z_dim, self.c_dim, self.w_dim, self.resolution = z_dim, c_dim, w_dim, img_resolution
        self.img_channels = img_channels
        self.noise_shapes = self.synthesis.noise_shapes

    @classmethod
    def from_state_dict(
        cls, init_kwargs: dict, state_dict: dict, name: str = "", sha256: str = ""
    ) -> StyleGAN2Generator:
        """Build from init_kwargs, load the official G_ema.state_dict() strictly and freeze."""
        try:
            gen = cls(**init_kwargs)
        except (TypeError, ValueError) as e:
            raise LatentFitError(f"unsupported {cls.family} configuration {init_kwargs} ({e})") from None
        try:
            gen.load_state_dict(state_dict, strict=True)
        except RuntimeError as e:
            detail = " ".join(str(e).split())
            raise LatentFitError(f"weights do not fit a {cls.family} generator: {detail[:400]}") from None
        gen.name, gen.sha256 = name or cls.family.lower(), sha256
        return gen.freeze()

    def forward(self, z, c=None, truncation_psi=1.0, truncation_cutoff=None, noise_mode="const", fused_modconv=True):
        """G(z, c): images [N, C, R, R] (upstream G.forward)."""
        ws = self.mapping(z, self._labels(c, len(z)), truncation_psi, truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode, fused_modconv=fused_modconv)

    def _labels(self, c, n):
        return None if self.c_dim == 0 or c is None else c.to(self.device, torch.float32).expand(n, -1)

    def latent_shape(self, space):
        return {"w": (self.w_dim,), "w+": (self.num_ws, self.w_dim), "z": (self.z_dim,)}[self.check_space(space)]

    def from_z(self, z, space, c=None):
        if self.check_space(space) == "z":
            return z
        ws = self.mapping(z, self._labels(c, len(z)))
        return ws[:, 0] if space == "w" else ws

    def mean_latent(self, space, c=None):
        """w_avg in w and w+ (for every label), zeros in z."""
        shape = (1, *self.latent_shape(space))
        if space == "z":
            return torch.zeros(shape, device=self.device)
        return self.mapping.w_avg.expand(shape).clone()

    def file_ws(self, latent, space):
        """w / w+ latents in NVIDIA's projected_w layout [1, num_ws, w_dim]; None in z."""
        if space == "z":
            return None
        return latent.reshape(1, -1, self.w_dim).expand(1, self.num_ws, -1)

    def tunable(self):
        return {k: v for k, v in super().tunable().items() if k.startswith("synthesis.")}

    def const_noise(self):
        return [m.noise_const[None] for m in self.synthesis.noise_layers]

    def synthesize(self, latent, space, c=None, noise=None):
        """Images for latents in `space`; noise (see noise_shapes) replaces the const noise buffers."""
        if tuple(latent.shape[1:]) != self.latent_shape(space):
            raise LatentFitError(
                f"generator {self.name!r}: latents in {space} must have shape "
                f"[N, {', '.join(map(str, self.latent_shape(space)))}], not {list(latent.shape)}"
            )
        if noise is not None and len(noise) != len(self.noise_shapes):
            raise LatentFitError(f"generator {self.name!r} has {len(self.noise_shapes)} noise inputs, got {len(noise)}")
        if space == "z":
            ws = self.mapping(latent, self._labels(c, len(latent)))
        elif space == "w":
            ws = latent.unsqueeze(1).expand(-1, self.num_ws, -1)
        else:
            ws = latent
        return self.synthesis(ws, noise=noise)
