"""Learned starts: an encoder E maps an image to a latent of a generator G, so projection can
begin near the answer (IDInvert / e4e style) instead of at random.

Architecture (per sample; no batch statistics anywhere, so E in eval mode is a pure per-sample
function): the image is resized to 64 px, then four levels of [4x4 stride-2 conv + LeakyReLU,
3x3 conv + LeakyReLU] with widths 32, 64, 128, 256 (64 -> 4 px), then a 4096 -> 512 -> latent MLP.
Its output is parametrised around the space's centre: E(x) = centre + scale * out, with the
centre the space's mean latent (0 in z, w_avg in w / w+) and the scale the prior's per-element std.

Loss per sample, trained on the generator's own samples (x = G(l), l from the prior, fresh every
step, so no dataset is needed): latent_weight * mean(((E(x) - l) / scale)^2)
+ pixel_weight * MSE(G(E(x)), x) [+ lpips_weight * LPIPS(G(E(x)), x) when the LPIPS weights are
on disk]. Real images (optional) add the reconstruction terms only.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import LatentFitError
from .fields import NotJSON, misfits, parse_json, regular_file
from .files import atomic_write, file_sha256
from .generators.base import Generator
from .objective import LPIPS, lpips_available, pixel_mse, psnr

ENCODER_RES = 64  # E sees every image at this size
WIDTHS = (32, 64, 128, 256)  # channels of the four stride-2 levels (64 -> 4 px)
HIDDEN = 512  # width of the MLP head
FORMAT = "latent-fit-encoder/1"
CARD_TYPES = {"format": str, "generator": str, "generator_sha256": str, "space": str, "architecture": dict}
MAX_WIDTH = 4096  # channels of a level or of the head in a file (WIDTHS are up to 256, HIDDEN 512)
MAX_LATENT = 2**24  # elements of a latent (a 1024 px StyleGAN's w+ has 9216)
VAL_SEED = 999_999_937  # held-out samples; training seeds are >= 10**10 (see train_seed)
VAL_SAMPLES = 256
STAT_SAMPLES = 2000  # prior samples for the output scale
BUNDLED_ENCODERS = {  # generator name -> (file in weights/, sha256)
    "digiface-dcgan64": (
        "digiface-dcgan64-encoder.safetensors",
        "d8183e762c386f82c9998cfcc626648373be6a9c6722027f73c65735be08c82c",
    ),
}


class Encoder(nn.Module):
    """Image [N, C, H, W] in [-1, 1] -> latent [N, *latent_shape] in `space`."""

    def __init__(
        self,
        space: str,
        latent_shape: tuple[int, ...],
        centre: torch.Tensor,
        scale: torch.Tensor,
        widths: tuple[int, ...] = WIDTHS,
        hidden: int = HIDDEN,
    ):
        super().__init__()
        self.space, self.latent_shape = space, tuple(latent_shape)
        self.widths, self.hidden = tuple(widths), hidden
        self.info: dict = {}  # the model card, when loaded from a file
        self.sha256 = ""  # of that file
        self.features, self.head = _layers(self.widths, hidden, math.prod(self.latent_shape))
        for m in self.modules():  # He init for LeakyReLU: signals keep their scale through the depth
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, a=0.2, nonlinearity="leaky_relu")
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.head[-1].weight.mul_(0.1)  # start near the centre
        self.register_buffer("centre", centre.reshape(1, *self.latent_shape).float().clone())
        self.register_buffer("scale", scale.reshape(1, *self.latent_shape).float().clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        if x.shape[-1] != ENCODER_RES or x.shape[-2] != ENCODER_RES:
            mode = "area" if x.shape[-1] > ENCODER_RES else "bilinear"
            x = F.interpolate(
                x,
                size=(ENCODER_RES, ENCODER_RES),
                mode=mode,
                **({"align_corners": False} if mode == "bilinear" else {}),
            )
        out = self.head(self.features(x)).float().view(-1, *self.latent_shape)
        return self.centre + self.scale * out

    @torch.no_grad()
    def start(self, G: Generator, targets: torch.Tensor, space: str, one_by_one: bool = False) -> torch.Tensor:
        """E(x) for targets [N, C, H, W]: the loop's given starts (one per target, per sample).
        one_by_one: each target through the network alone, so its start does not depend on the
        batch (the kernels of a batched convolution or matrix product round by batch size)."""
        if space != self.space:
            raise LatentFitError(
                f"the encoder predicts {self.space} latents, not {space}; "
                f"use space {self.space} or an encoder trained for {space}"
            )
        x = targets.to(G.device, torch.float32)
        return torch.cat([self(x[i : i + 1]) for i in range(len(x))]) if one_by_one else self(x)

    def architecture(self) -> dict:
        return {
            "input": ENCODER_RES,
            "widths": list(self.widths),
            "hidden": self.hidden,
            "latent_shape": list(self.latent_shape),
        }


def _layers(widths: tuple[int, ...], hidden: int, n_out: int) -> tuple[nn.Sequential, nn.Sequential]:
    """An encoder's (features, head), in torch's default init: a level of [4x4 stride-2 conv +
    LeakyReLU, 3x3 conv + LeakyReLU] per width, flattened, then the MLP to n_out numbers."""
    layers: list[nn.Module] = []
    c = 3
    for w in widths:
        layers += [nn.Conv2d(c, w, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(w, w, 3, 1, 1), nn.LeakyReLU(0.2)]
        c = w
    side = ENCODER_RES >> len(widths)
    return (
        nn.Sequential(*layers, nn.Flatten()),
        nn.Sequential(nn.Linear(c * side * side, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, n_out)),
    )


def new_encoder(G: Generator, space: str) -> Encoder:
    """An untrained encoder for G in `space`, centred on the space's mean latent and scaled by
    the prior's per-element std (measured on fixed samples: a function of G only)."""
    G.check_space(space)
    with torch.no_grad():
        if space == "z":
            centre, scale = torch.zeros(G.latent_shape(space)), torch.ones(G.latent_shape(space))
        else:
            lat = G.sample(STAT_SAMPLES, seed=0, space=space, c=G.cycled_labels(STAT_SAMPLES)).float()
            centre = G.mean_latent(space).reshape(G.latent_shape(space)).cpu()
            scale = lat.std(0).cpu().clamp_min(1e-6)
    return Encoder(space, G.latent_shape(space), centre, scale).to(G.device)


# --- training -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSettings:
    """Everything that changes what training learns (a checkpoint resumes only when these match)."""

    space: str
    steps: int = 20000
    batch_size: int = 32
    lr: float = 5e-4
    warmup: int = 200  # steps of linear warm-up; then a cosine decay to 0
    latent_weight: float = 1.0
    pixel_weight: float = 10.0
    lpips_weight: float = 0.0  # > 0 only when LPIPS weights are on disk (see train_encoder)
    image_batch: int = 0  # real images per step (0: none)
    seed: int = 0
    generator: str = ""  # the generator's sha256 (its name when unknown)
    images: str = ""  # sha256 of the real images ("" when none)

    def validate(self) -> TrainSettings:
        if self.steps < 1 or self.batch_size < 1:
            raise LatentFitError(f"--steps {self.steps} / --batch-size {self.batch_size}: give whole numbers >= 1")
        return self


def make_settings(
    G: Generator,
    *,
    space: str | None = None,
    steps: int,
    batch_size: int,
    images: torch.Tensor | None = None,
    **options,
) -> TrainSettings:
    """The TrainSettings of a run; LPIPS joins (weight 1) when its weights are on disk, real
    images come a quarter batch per step."""
    import hashlib

    space = G.check_space(space or G.default_space)
    options.setdefault("lpips_weight", 1.0 if lpips_available() else 0.0)
    if images is not None:
        if G.c_dim and space == "z":
            raise LatentFitError(
                f"--images: generator {G.name!r} is conditional and real images have no "
                "class; train in w or w+ (--space w)"
            )
        options.setdefault("image_batch", max(1, batch_size // 4))
        options["images"] = hashlib.sha256(images.float().cpu().numpy().tobytes()).hexdigest()
    return TrainSettings(
        space=space, steps=steps, batch_size=batch_size, generator=G.sha256 or G.name, **options
    ).validate()


def train_seed(seed: int, step: int) -> int:
    """The seed of step `step`'s prior samples: disjoint from VAL_SEED, a function of (seed, step)
    only, so a resumed run sees exactly the samples an uninterrupted one would."""
    return (seed + 1) * 10**10 + step


def prior_batch(G: Generator, n: int, seed: int, space: str):
    """(images, latents, labels) of n prior samples from `seed` (random classes if conditional)."""
    with torch.no_grad():
        c = None
        if G.c_dim:
            gen = torch.Generator().manual_seed(seed ^ 0x5EED)
            c = F.one_hot(torch.randint(G.c_dim, (n,), generator=gen), G.c_dim).float().to(G.device)
        lat = G.sample(n, seed=seed, space=space, c=c)
        return G.synthesize(lat, space, c).float().clamp(-1, 1), lat, c


def encoder_losses(
    E: Encoder,
    G: Generator,
    images: torch.Tensor,
    latents: torch.Tensor | None,
    c: torch.Tensor | None,
    s: TrainSettings,
    lpips_net=None,
) -> dict[str, torch.Tensor]:
    """Per-sample terms [N] of the training loss (latent is 0 where no latent is known)."""
    pred = E(images)
    recon = G.synthesize(pred, E.space, c).float()
    terms = {"pixel": pixel_mse(recon, images)}
    terms["latent"] = (
        (((pred - latents) / E.scale) ** 2).flatten(1).mean(1)
        if latents is not None
        else torch.zeros_like(terms["pixel"])
    )
    if lpips_net is not None:
        terms["lpips"] = lpips_net(recon, images)
    terms["total"] = (
        s.latent_weight * terms["latent"]
        + s.pixel_weight * terms["pixel"]
        + (s.lpips_weight * terms["lpips"] if lpips_net is not None else 0)
    )
    return terms


def _lr_at(s: TrainSettings, step: int) -> float:
    warm = min(1.0, (step + 1) / s.warmup) if s.warmup else 1.0
    return s.lr * warm * 0.5 * (1 + math.cos(math.pi * step / s.steps))


def train_encoder(
    G: Generator,
    *,
    space: str | None = None,
    steps: int = TrainSettings.steps,
    batch_size: int = TrainSettings.batch_size,
    images: torch.Tensor | None = None,
    state: dict | None = None,
    precision: str = "fp32",
    compile: bool = False,
    progress=None,
    checkpoint=None,
    checkpoint_every: float = 300.0,
    **options,
) -> Encoder:
    """Train an encoder for G (on G's device) and return it in eval mode.

    images: optional real images [M, 3, R, R] in [-1, 1], trained with the reconstruction terms.
    options: other TrainSettings fields. state: a dict from `checkpoint` to resume from.
    progress(step, terms): after every step, terms a dict of batch-mean floats.
    checkpoint(state): called every `checkpoint_every` seconds and at the end.
    precision bf16 / compile: autocast and torch.compile of the encoder (for GPUs).
    """
    s = make_settings(G, space=space, steps=steps, batch_size=batch_size, images=images, **options)
    E = new_encoder(G, s.space)
    opt = torch.optim.Adam(E.parameters(), lr=s.lr)
    start = 0
    if state is not None:
        E.load_state_dict(state["encoder"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"])
    lpips_net = LPIPS().to(G.device) if s.lpips_weight > 0 else None
    fwd = torch.compile(E) if compile else E
    autocast = torch.autocast(G.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def snapshot(step):  # a copy: training goes on changing the live tensors
        return copy.deepcopy(
            {"settings": settings_json(s), "step": step, "encoder": E.state_dict(), "optimizer": opt.state_dict()}
        )

    last_save = time.monotonic()
    E.train()
    for step in range(start, s.steps):
        with autocast:
            loss, terms = _step_losses(fwd, G, s, step, images, lpips_net)
        for g in opt.param_groups:
            g["lr"] = _lr_at(s, step)
        opt.zero_grad(set_to_none=True)
        (loss / s.batch_size).backward()
        opt.step()
        if progress is not None:
            progress(step + 1, {k: float(v.detach().mean()) for k, v in terms.items()})
        if checkpoint is not None and time.monotonic() - last_save >= checkpoint_every:
            checkpoint(snapshot(step + 1))
            last_save = time.monotonic()
    if checkpoint is not None:
        checkpoint(snapshot(s.steps))
    E.info = {"training": dataclasses.asdict(s)}
    return E.eval().requires_grad_(False)


def _step_losses(fwd, G: Generator, s: TrainSettings, step: int, images: torch.Tensor | None, lpips_net):
    """(summed loss, terms) of training step `step`: a batch of prior samples keyed by the step,
    plus s.image_batch of the real `images` when given (their pixel term as real_pixel)."""
    x, lat, c = prior_batch(G, s.batch_size, train_seed(s.seed, step), s.space)
    terms = encoder_losses(fwd, G, x, lat, c, s, lpips_net)
    loss = terms["total"].sum()
    if s.image_batch:
        gen = torch.Generator().manual_seed(train_seed(s.seed, step) ^ 0x1A6E)
        pick = torch.randint(len(images), (s.image_batch,), generator=gen)
        real = encoder_losses(fwd, G, images[pick].to(G.device), None, None, s, lpips_net)
        loss = loss + real["total"].sum()
        terms["real_pixel"] = real["pixel"]
    return loss, terms


def settings_json(s: TrainSettings) -> str:
    return json.dumps(dataclasses.asdict(s), sort_keys=True)


@torch.no_grad()
def validation_psnr(E: Encoder, G: Generator, n: int = VAL_SAMPLES, chunk: int = 64) -> torch.Tensor:
    """PSNR [n] of G(E(x)) against x for n held-out prior samples (seed VAL_SEED)."""
    out = []
    x_all, _, c_all = prior_batch(G, n, VAL_SEED, E.space)
    for i in range(0, n, chunk):
        x = x_all[i : i + chunk]
        c = None if c_all is None else c_all[i : i + chunk]
        rec = G.synthesize(E(x), E.space, c).float().clamp(-1, 1)
        out.append(psnr(pixel_mse(rec, x)))
    return torch.cat(out).cpu()


# --- files ----------------------------------------------------------------------------------


def save_encoder(E: Encoder, path, G: Generator, card: dict, fp16: bool = True) -> None:
    """Write E as safetensors (weights in fp16 when `fp16`; centre and scale fp32) with the model
    card `card` (plus generator, space, architecture) in its header, atomically."""
    from pathlib import Path

    from safetensors.torch import save_file

    tensors = {
        k: (v.half() if fp16 and k not in ("centre", "scale") else v.float()).contiguous().cpu()
        for k, v in E.state_dict().items()
    }
    meta = {
        "format": FORMAT,
        "generator": G.name,
        "generator_sha256": G.sha256,
        "space": E.space,
        "architecture": E.architecture(),
    } | card
    header = {k: json.dumps(v) for k, v in meta.items()}  # every value JSON, strings too
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=header))


def read_encoder(path, G: Generator | None = None, space: str | None = None) -> Encoder:
    """An encoder from a file written by save_encoder (its card in `.info`), on the CPU. Before
    any tensor is read or a real module built, the card's fields are checked (read_card), its
    architecture against the shapes of the file's tensors (_check_shapes) and, with G, the
    generator and space it was made for (check_fits)."""
    from safetensors import SafetensorError, safe_open

    path = regular_file(path, "encoder file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            info = read_card(path, f.metadata() or {})
            arch = info["architecture"]
            _check_shapes(path, arch, {k: f.get_slice(k) for k in f.keys()})
            if G is not None:
                check_fits(info, G, space, path)
            tensors = {k: f.get_tensor(k).float() for k in f.keys()}
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise LatentFitError(f"{path}: not a readable safetensors encoder ({' '.join(str(e).split())[:150]})") from None
    if not all(torch.isfinite(t).all() for t in tensors.values()):
        raise LatentFitError(f"{path}: encoder weights hold values that are not finite")
    E = Encoder(
        info["space"],
        tuple(arch["latent_shape"]),
        tensors["centre"],
        tensors["scale"],
        tuple(arch["widths"]),
        arch["hidden"],
    )
    E.load_state_dict(tensors)
    E.info = info
    return E.eval().requires_grad_(False)


def read_card(path, meta: dict[str, str]) -> dict:
    """The model card of an encoder file: every value JSON (fields.parse_json; plain text
    allowed), the fields of CARD_TYPES of their types, the architecture's numbers in range."""
    info = {k: _json_or_text(v, f"{path}: {k}") for k, v in meta.items()}
    if info.get("format") != FORMAT:
        raise LatentFitError(f"{path}: not a latent-fit encoder (format {info.get('format')!r}, want {FORMAT!r})")
    for key, kind in CARD_TYPES.items():
        if not isinstance(info.get(key), kind):
            what = "missing" if key not in info else f"not a {kind.__name__}"
            raise LatentFitError(f"{path}: the encoder's {key!r} is {what}")
    if not _architecture_in_range(info["architecture"]):
        raise LatentFitError(f"{path}: encoder architecture out of range: {json.dumps(info['architecture'])[:120]}")
    return info


def _architecture_in_range(arch: dict) -> bool:
    """Whether an architecture record has 1 to 6 levels (64 px down to 1) of 1..MAX_WIDTH channels,
    a head of 1..MAX_WIDTH and a latent shape of 1 to 3 sizes, at most MAX_LATENT elements."""
    widths, hidden, shape = arch.get("widths"), arch.get("hidden"), arch.get("latent_shape")

    def whole(x, top: int) -> bool:
        return type(x) is int and 1 <= x <= top

    return (
        isinstance(widths, list)
        and 1 <= len(widths) < ENCODER_RES.bit_length()
        and all(whole(w, MAX_WIDTH) for w in widths)
        and whole(hidden, MAX_WIDTH)
        and isinstance(shape, list)
        and 1 <= len(shape) <= 3
        and all(whole(n, MAX_LATENT) for n in shape)
        and math.prod(shape) <= MAX_LATENT
        and arch.get("input", ENCODER_RES) == ENCODER_RES
    )


def _check_shapes(path, arch: dict, slices: dict) -> None:
    """Refuse a file whose tensors (names, shapes, float dtypes) are not those of the encoder its
    architecture describes; the shapes come from its layers built on the meta device (no memory used)."""
    shape = (1, *arch["latent_shape"])
    with torch.device("meta"):
        parts = dict(zip(("features", "head"), _layers(tuple(arch["widths"]), arch["hidden"], math.prod(shape))))
    want = {f"{part}.{k}": v.shape for part, m in parts.items() for k, v in m.state_dict().items()}
    want |= {"centre": shape, "scale": shape}
    bad = misfits(slices, want)
    if bad:
        raise LatentFitError(f"{path}: tensor {bad[0]!r} does not fit the encoder its architecture describes")


def _json_or_text(value: str, what: str):
    try:
        return parse_json(value, what, object)
    except NotJSON:  # a plain string
        return value


def bundled_encoder_path(G: Generator):
    """The weights/ file of the bundled encoder for G: None unless G is a bundled generator
    (same name and sha256) that has one."""
    from .generators import BUNDLED, dcgan, weights_dir

    if G.name not in BUNDLED or G.name not in BUNDLED_ENCODERS or G.sha256 != dcgan.SHA256:
        return None
    return weights_dir() / BUNDLED_ENCODERS[G.name][0]


def check_fits(info: dict, G: Generator, space: str | None, what) -> None:
    """Refuse (one line) an encoder card made for another generator, latent shape or space."""
    made_for, name = info.get("generator_sha256", ""), info.get("generator", "")
    same = made_for == G.sha256 if made_for and G.sha256 else name == G.name
    shape = info["architecture"]["latent_shape"]
    if not same or info["space"] not in G.spaces or list(G.latent_shape(info["space"])) != shape:
        raise LatentFitError(
            f"{what}: encoder trained for generator {name!r} (sha256 {made_for[:12] or '?'}…), "
            f"not {G.name!r} ({G.sha256[:12] or '?'}…); train one with train-encoder"
        )
    if space is not None and space != info["space"]:
        raise LatentFitError(
            f"{what}: encoder predicts {info['space']} latents, not {space}; "
            f"use --space {info['space']} or an encoder trained with --space {space}"
        )


def load_encoder(spec, G: Generator, space: str | None = None) -> Encoder | None:
    """The encoder `spec` names for G, on G's device: a file path, "auto" (the bundled encoder
    when G is the bundled generator, else None) or "none" (None). Refuses (one line) an encoder
    made for another generator (by sha256) or another space, and a bundled file whose sha256
    is not the one recorded here."""
    spec = str(spec)
    if spec == "none":
        return None
    if spec == "auto":
        path = bundled_encoder_path(G)
        if path is None:
            return None
        from .generators import check_bundled

        check_bundled(path, BUNDLED_ENCODERS[G.name][1], " (or use --encoder none)")
    else:
        path = regular_file(spec, "encoder file not found (or give --encoder auto or none)")
    E = read_encoder(path, G, space)
    E.sha256 = file_sha256(path)
    return E.to(G.device)
