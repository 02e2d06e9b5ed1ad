"""The `latent-fit` command line: parse, call the library, report. No math here."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from .errors import LatentFitError
from .generators import BUNDLED, DEFAULT_GENERATOR, load_generator
from .optimize import Config

D = Config()


def _fail(msg: str) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(1)


class Group(click.Group):
    """Prints a LatentFitError as one line and exits 1 instead of a traceback; prints each
    distinct warning once, as one line."""

    def invoke(self, ctx):
        seen = set()

        def show(message, *_args, **_kwargs):
            if str(message) not in seen:
                seen.add(str(message))
                tqdm.write(f"warning: {message}", file=sys.stderr)   # keeps progress bars intact

        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.showwarning = show
            try:
                return super().invoke(ctx)
            except LatentFitError as e:
                _fail(str(e))


def generator_options(f):
    f = click.option("--generator", "-g", default=DEFAULT_GENERATOR, show_default=True,
                     help="Bundled name, network .pkl / .pt, TorchScript file or module:callable.")(f)
    f = click.option("--network-key", default="G_ema", show_default=True,
                     help="Which network of a .pkl to use.")(f)
    f = click.option("--latent-dim", type=int, help="Latent size of a TorchScript/callable generator "
                     "(probed when omitted).")(f)
    f = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")(f)
    return f


def open_generator(generator, network_key, latent_dim, device):
    from .jobs import default_device
    return load_generator(generator, default_device(device), network_key=network_key,
                          latent_dim=latent_dim)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="latent-fit")
def main():
    """Project images into a pretrained generator's latent space and edit them there."""


@main.command()
@click.argument("targets", nargs=-1, required=True)
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder.")
@generator_options
@click.option("--space", help="Latent space: z (DCGAN, and StyleGAN's input), w or w+ (StyleGAN). "
              "Default: the generator's (z for DCGAN, w for StyleGAN).")
@click.option("--steps", default=D.steps, show_default=True, help="Optimization steps.")
@click.option("--lr", type=float, help="Adam learning rate [default: 0.2 in z, 0.1 in w/w+].")
@click.option("--wr", default=D.wr, show_default=True,
              help="Weight of the Euclidean norm term wr*||z - z0||^2 (a sum over the latent).")
@click.option("--reg", type=click.Choice(["l2", "l1"]), default=D.reg, show_default=True,
              help="l2: wr*sum(dz^2); l1: wr*sum(|dz|), sparser changes.")
@click.option("--loss", type=click.Choice(["auto", "mse", "lpips", "mse+lpips"]), default=D.loss,
              show_default=True, help="Reconstruction terms; auto adds LPIPS when its weights are on disk.")
@click.option("--lpips-weight", default=D.lpips_weight, show_default=True)
@click.option("--starts", default=D.starts, show_default=True,
              help="Random starts per target, pruned by successive halving (random init only).")
@click.option("--init", "init", type=click.Path(exists=True, path_type=Path),
              help="Start from this .npz latent (or a folder of <stem>.npz), instead of random starts.")
@click.option("--init-mode", type=click.Choice(["random", "mean"]),
              help="Start without --init: random prior samples or the mean [default: random in z, mean in w].")
@click.option("--sphere/--no-sphere", default=D.sphere, show_default=True,
              help="z only: keep ||z|| on the prior's typical radius sqrt(dim).")
@click.option("--class", "klass", type=int, help="Class index for a conditional generator.")
@click.option("--noise/--no-noise", "optimize_noise", default=D.optimize_noise, show_default=True,
              help="StyleGAN: optimize the noise maps as well.")
@click.option("--batch-size", default=16, show_default=True, help="Targets optimized together "
              "(each with --starts candidates).")
@click.option("--seed", default=D.seed, show_default=True)
@click.option("--save-video", is_flag=True, help="Also write <stem>.mp4 (or .gif) of the optimization.")
def project(targets, out, generator, network_key, latent_dim, device, space, steps, lr, wr, reg,
            loss, lpips_weight, starts, init, init_mode, sphere, klass, optimize_noise, batch_size,
            seed, save_video):
    """Project TARGETS (image files, folders, globs) into the generator; write OUT/<stem>.npz,
    OUT/<stem>.png, OUT/<stem>_compare.png and OUT/metrics.csv / metrics.json."""
    from .jobs import project_files
    G = open_generator(generator, network_key, latent_dim, device)
    bars = []

    def progress(ci, n, stems):
        if bars:
            bars[-1].close()
        bar = tqdm(total=steps, desc=f"batch {ci + 1}/{n} ({len(stems)} targets)", unit="step",
                   leave=False, file=sys.stderr)
        bars.append(bar)

        def cb(step, loss_value):
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{loss_value:.4g}")
        return cb

    t0 = time.perf_counter()
    rep = project_files(G, list(targets), out, batch_size=batch_size, init=init, classes=klass,
                        save_vid=save_video, progress=progress, space=space, steps=steps, lr=lr,
                        wr=wr, reg=reg, loss=loss, lpips_weight=lpips_weight, starts=starts,
                        init_mode=init_mode, sphere=sphere, optimize_noise=optimize_noise, seed=seed)
    if bars:
        bars[-1].close()
    for e in rep.errors:
        click.echo(f"error: {e}", err=True)
    rows = {r["target"]: r for r in rep.metrics}
    ps = [rows[s]["psnr"] for s in rep.done if s in rows]
    med = f", median PSNR {np.median(ps):.1f} dB" if ps else ""
    click.echo(f"projected {len(rep.done)} target(s), skipped {len(rep.skipped)} complete, "
               f"{len(rep.errors)} failed in {time.perf_counter() - t0:.1f} s{med} -> {out}")
    if rep.errors:
        sys.exit(1)


@main.command()
def generators():
    """List the bundled generators."""
    for name in BUNDLED:
        G = load_generator(name)
        click.echo(f"{name}: {G.resolution}px, spaces {', '.join(G.spaces)}, z_dim {G.z_dim}, "
                   f"sha256 {G.sha256[:12]}")
