"""`latent-fit train-encoder`: files in (a generator, optional real images, a checkpoint),
an encoder file, its model card and a resumable checkpoint out."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..encoder import (
    VAL_SAMPLES,
    VAL_SEED,
    Encoder,
    make_settings,
    save_encoder,
    settings_json,
    train_encoder,
    validation_psnr,
)
from ..errors import LatentFitError
from ..fields import parse_json
from ..files import atomic_write
from ..generators.base import Generator
from ..images import find_images, load_image

CHECKPOINT_MINUTES = 5.0


def checkpoint_path(out: Path) -> Path:
    return out.with_name(out.name + ".ckpt")


def read_checkpoint(path: Path, settings: str, say) -> dict | None:
    """The checkpoint's state when it was made with the same settings, else None (saying why).
    Its settings must be a JSON object (fields.parse_json), its step a whole number >= 0, its
    encoder and optimizer states dicts."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        old = parse_json(state.get("settings", "{}"), f"{path}: settings")
    except Exception as e:  # any unreadable file: start over rather than fail
        say(f"checkpoint {path} is unreadable ({type(e).__name__}): starting over")
        return None
    new = json.loads(settings)
    diff = [f"{k} {old.get(k)!r} -> {new[k]!r}" for k in sorted(new) if old.get(k) != new[k]]
    if diff:
        say(f"checkpoint {path} was made with other settings ({', '.join(diff)}): starting over")
        return None
    if (
        type(state.get("step")) is not int
        or state["step"] < 0
        or not all(isinstance(state.get(k), dict) for k in ("encoder", "optimizer"))
    ):
        say(f"checkpoint {path} is unreadable (its step or states are damaged): starting over")
        return None
    say(f"resuming from {path} at step {state['step']}/{new['steps']}")
    return state


def write_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def read_images(folder: str, resolution: int) -> torch.Tensor:
    paths, errors = find_images([folder])
    if errors or not paths:
        raise LatentFitError(errors[0] if errors else f"{folder}: no images")
    return torch.stack([load_image(p, resolution) for p in paths])


def model_card(E: Encoder, G: Generator, out: Path, val: torch.Tensor, seconds: float, command: str) -> str:
    t = E.info["training"]
    arch = E.architecture()
    return "\n".join(
        [
            f"# Model card: encoder `{out.name}`",
            "",
            "| | |",
            "|---|---|",
            f"| generator | `{G.name}` (sha256 `{G.sha256 or 'unknown'}`) |",
            f"| space | `{E.space}`, latents of shape {list(E.latent_shape)} |",
            f"| architecture | input resized to {arch['input']} px; per level a 4x4 stride-2 conv + LeakyReLU(0.2) "
            f"and a 3x3 conv + LeakyReLU, widths {arch['widths']}; MLP {arch['hidden']} -> latent; "
            f"output = centre + scale * out (centre: the space's mean latent, scale: the prior's per-element std); "
            f"no normalization layers (per sample); {sum(p.numel() for p in E.parameters()):,} parameters, "
            "stored in fp16 (centre and scale fp32) |",
            "| loss | per sample: latent_weight * mean(((E(x) - l) / scale)^2) + pixel_weight * MSE(G(E(x)), x)"
            " + lpips_weight * LPIPS(G(E(x)), x); x = G(l) for fresh prior samples l every step (no dataset);"
            " real images (if any) add the reconstruction terms only |",
            f"| training | {', '.join(f'{k}={v}' for k, v in sorted(t.items()))}; Adam, linear warm-up then cosine "
            f"decay to 0; {seconds / 60:.1f} min of the last run |",
            f"| command | `{command}` |",
            f"| validation | {len(val)} held-out prior samples (seed {VAL_SEED}; training seeds are >= 1e10): PSNR of G(E(x)) vs x "
            f"median {val.median():.2f} dB, mean {val.mean():.2f} dB, worst {val.min():.2f} dB |",
            "",
        ]
    )


VAL_STATS = {"median": torch.median, "mean": torch.mean, "worst": torch.min}  # of the validation PSNRs in the card


def run_train_encoder(
    G: Generator,
    out: Path,
    *,
    space: str | None,
    steps: int,
    batch_size: int,
    images: str | None = None,
    precision: str = "fp32",
    compile: bool = False,
    checkpoint_minutes: float = CHECKPOINT_MINUTES,
    seed: int = 0,
    progress=None,
    say=print,
    command: str = "",
) -> tuple[Encoder, torch.Tensor]:
    """Train (or resume) an encoder for G and write `out` (.safetensors), its .md card and,
    while training, `out`.ckpt. `command` (the command line) goes into the model card.
    Returns (encoder, validation PSNR [VAL_SAMPLES])."""
    out = Path(out)
    if not out.parent.is_dir():
        raise LatentFitError(f"{out.parent}: output folder does not exist")
    real = read_images(images, G.resolution) if images else None
    space = G.check_space(space or G.default_space)
    ckpt = checkpoint_path(out)
    probe = make_settings(G, space=space, steps=steps, batch_size=batch_size, images=real, seed=seed)
    state = read_checkpoint(ckpt, settings_json(probe), say)
    t0 = time.monotonic()
    E = train_encoder(
        G,
        space=space,
        steps=steps,
        batch_size=batch_size,
        images=real,
        state=state,
        precision=precision,
        compile=compile,
        progress=progress,
        seed=seed,
        checkpoint=lambda st: write_checkpoint(ckpt, st),
        checkpoint_every=60 * checkpoint_minutes,
    )
    seconds = time.monotonic() - t0
    val = validation_psnr(E, G)
    psnr = {"samples": VAL_SAMPLES} | {k: round(float(f(val)), 3) for k, f in VAL_STATS.items()}
    card = {"training": E.info["training"], "steps": steps, "images": images or "", "validation_psnr": psnr}
    card["command"] = command
    save_encoder(E, out, G, card)
    md = out.with_suffix(".md")
    atomic_write(md, lambda tmp: Path(tmp).write_text(model_card(E, G, out, val, seconds, command)))
    ckpt.unlink(missing_ok=True)
    return E, val
