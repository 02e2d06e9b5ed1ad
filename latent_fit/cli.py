"""The `latent-fit` command line: parse, call the library, report. No math here."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from .devices import COMPILE_MODES, PRECISIONS
from .edit import EDIT_DEFAULTS, PCA_SAMPLES
from .errors import LatentFitError
from .generators import BUNDLED, DEFAULT_GENERATOR, load_generator
from .optimize import Config
from .sweep import SWEEP_WRS

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


class_option = click.option("--class", "klass", type=int,
                            help="Class index for a conditional generator (needed in z).")


def open_generator(generator, network_key, latent_dim, device):
    from .jobs import default_device
    return load_generator(generator, default_device(device), network_key=network_key,
                          latent_dim=latent_dim)


def _optimizer_options(f):
    f = click.option("--seed", default=D.seed, show_default=True)(f)
    f = click.option("--lpips-weight", default=D.lpips_weight, show_default=True)(f)
    f = click.option("--loss", type=click.Choice(["auto", "mse", "lpips", "mse+lpips"]), default=D.loss,
                     show_default=True, help="Reconstruction terms; auto adds LPIPS when its weights are on disk.")(f)
    f = click.option("--reg", type=click.Choice(["l2", "l1"]), default=D.reg, show_default=True,
                     help="l2: wr*sum(dz^2); l1: wr*sum(|dz|).")(f)
    f = click.option("--lr", type=float, help="Adam learning rate [default: 0.2 in z, 0.1 in w/w+].")(f)
    return f


def speed_options(f):
    """--precision, --channels-last, --compile: the synthesis switches of devices.accelerate."""
    f = click.option("--compile", "compile_mode", default="off", show_default=True,
                     type=click.Choice(COMPILE_MODES),
                     help="torch.compile the synthesis (reduce-overhead: with CUDA graphs).")(f)
    f = click.option("--channels-last", is_flag=True, help="NHWC memory layout for the generator.")(f)
    f = click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
                     help="bf16: synthesis under autocast (fast on recent GPUs; the loop stays fp32).")(f)
    return f


def _batch_size(ctx, param, value):
    if value == "auto":
        return value
    try:
        if int(value) >= 1:
            return int(value)
    except ValueError:
        pass
    raise click.BadParameter(f"{value!r}: give a whole number >= 1 or auto")


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
@_optimizer_options
@click.option("--wr", default=D.wr, show_default=True,
              help="Weight of the Euclidean norm term wr*||z - z0||^2 (a sum over the latent).")
@click.option("--starts", default=D.starts, show_default=True,
              help="Random starts per target, pruned by successive halving (random init only).")
@click.option("--init", "init", type=click.Path(exists=True, path_type=Path),
              help="Start from this .npz latent (or a folder of <stem>.npz), instead of random starts.")
@click.option("--init-mode", type=click.Choice(["random", "mean"]),
              help="Start without --init: random prior samples or the mean [default: random in z, mean in w].")
@click.option("--sphere/--no-sphere", default=D.sphere, show_default=True,
              help="z only: keep ||z|| on the prior's typical radius sqrt(dim).")
@class_option
@click.option("--noise/--no-noise", "optimize_noise", default=D.optimize_noise, show_default=True,
              help="StyleGAN: optimize the noise maps as well.")
@click.option("--batch-size", default="16", show_default=True, callback=_batch_size,
              help="Targets optimized together (each with --starts candidates); auto: the largest "
              "chunk that fits the device.")
@click.option("--save-video", is_flag=True, help="Also write <stem>.mp4 (or .gif) of the optimization.")
@click.option("--exact", is_flag=True, help="CPU: convolutions whose rounding does not depend on the batch "
              "size, so a target's latent is bit-identical however the run is batched (slower).")
@speed_options
def project(targets, out, generator, network_key, latent_dim, device, space, steps, lr, wr, reg,
            loss, lpips_weight, starts, init, init_mode, sphere, klass, optimize_noise, batch_size,
            seed, save_video, exact, precision, channels_last, compile_mode):
    """Project TARGETS (image files, folders, globs) into the generator; write OUT/<stem>.npz,
    OUT/<stem>.png, OUT/<stem>_compare.png and OUT/metrics.csv / metrics.json.

    Rerun with the same arguments to finish a killed job. Under torchrun each process takes
    its share of the targets: torchrun --nproc-per-node N -m latent_fit project ..."""
    from .devices import accelerate
    from .distributed import Shard, process_group
    from .jobs import project_files
    shard = Shard.from_env()
    G = accelerate(open_generator(generator, network_key, latent_dim, shard.device(device)),
                   precision=precision, channels_last=channels_last, compile=compile_mode)
    progress, close = _progress_bars(steps)
    t0 = time.perf_counter()
    with process_group(shard, G.device):
        rep = project_files(G, list(targets), out, batch_size=batch_size, init=init, classes=klass,
                            save_vid=save_video, progress=progress if shard.rank == 0 else None,
                            rank=shard.rank, world=shard.world, space=space, steps=steps, lr=lr,
                            wr=wr, reg=reg, loss=loss, lpips_weight=lpips_weight, starts=starts,
                            init_mode=init_mode, sphere=sphere, optimize_noise=optimize_noise,
                            seed=seed, exact=exact)
    close()
    _report_errors(rep.errors)
    rows = {r["target"]: r for r in rep.metrics}
    ps = [rows[s]["psnr"] for s in rep.done if s in rows]
    med = f", median PSNR {np.median(ps):.1f} dB" if ps else ""
    who = f"rank {shard.rank}/{shard.world}: " if shard.world > 1 else ""
    click.echo(f"{who}projected {len(rep.done)} target(s), skipped {len(rep.skipped)} complete, "
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


# --- edit, direction, interpolate, sweep (latent_fit/edit_jobs.py does the file work) ---------

def _progress_bars(steps: int):
    """(progress, close): progress(chunk, n_chunks, stems) opens a tqdm bar for one batch and
    returns its per-check callback; close() closes the last bar."""
    bars = []

    def close():
        if bars:
            bars[-1].close()

    def progress(ci, n, stems):
        close()
        bar = tqdm(total=steps, desc=f"batch {ci + 1}/{n} ({len(stems)} targets)", unit="step",
                   leave=False, file=sys.stderr)
        bars.append(bar)

        def cb(step, loss_value):
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{loss_value:.4g}")
        return cb
    return progress, close


def _numbers(text: str, option: str) -> list[float]:
    """Comma-separated finite numbers, or a one-line error naming the option and the text."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or not np.all(np.isfinite(values)):
        raise LatentFitError(f"{option} {text!r}: not a comma-separated list of numbers (e.g. -3,-1,0,1,3)")
    return values


def _report_errors(errors: list[str]) -> None:
    for e in errors:
        click.echo(f"error: {e}", err=True)


class _ManyValues(click.Command):
    """Lets --positive / --negative take several values, as an unquoted shell glob gives them
    (`--positive A/*.npz`): each extra value gets its flag repeated."""

    many = ("--positive", "--negative")

    def parse_args(self, ctx, args):
        out, flag = [], None
        for a in args:
            if a.startswith("-") and len(a) > 1:
                flag = a if a in self.many else None
                out.append(a)
            elif flag and out[-1] != flag:
                out += [flag, a]
            else:
                out.append(a)
        return super().parse_args(ctx, out)




@main.command("edit")
@click.argument("latents", nargs=-1, required=True)
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder.")
@generator_options
@click.option("--target", "request", type=click.Path(path_type=Path),
              help="Masked edit: the request image for every latent (an alpha channel is its mask), "
              "or a folder of <stem>.<image> requests, one per latent.")
@click.option("--mask", type=click.Path(path_type=Path),
              help="Where the request applies: a grayscale image at the generator's resolution (white "
              "= edit, grays = soft), or a folder of <stem>.<image>. Default: the request's alpha, else "
              "the whole image.")
@click.option("--wr", default=EDIT_DEFAULTS["wr"], show_default=True,
              help="Weight of wr*||z - z0||^2 (a sum over the latent): larger keeps the latent and the "
              "unmasked image nearer the original; useful about 1e-3..1e-1 on the bundled DCGAN.")
@click.option("--steps", default=EDIT_DEFAULTS["steps"], show_default=True, help="Optimization steps.")
@_optimizer_options
@click.option("--direction", type=click.Path(path_type=Path),
              help="Direction edit: a .npy of shape [*latent] or [K, *latent] (from `latent-fit direction`).")
@click.option("--component", default=0, show_default=True, help="Row of a [K, ...] direction file.")
@click.option("--strength", default="-3,-1,0,1,3", show_default=True,
              help="Comma-separated steps along the direction, in latent units (directions have norm 1).")
@click.option("--batch-size", default=16, show_default=True, help="Latents optimized together.")
@class_option
def edit_command(latents, out, generator, network_key, latent_dim, device, request, mask, wr, steps,
                 lr, reg, loss, lpips_weight, seed, direction, component, strength, batch_size, klass):
    """Edit LATENTS (.npz files, folders, globs) by a painted request (--target [--mask]) or
    along a direction (--direction --strength). Masked: OUT/<stem>.npz, .png, _compare.png
    (before | request | after), metrics.csv. Direction: OUT/<stem>_s<strength>.png, <stem>_strip.png."""
    from .edit_jobs import direction_edit_files, edit_files
    if (request is None) == (direction is None):
        raise LatentFitError("give --target REQUEST (masked edit) or --direction D.npy (direction edit)")
    G = open_generator(generator, network_key, latent_dim, device)
    t0 = time.perf_counter()
    if direction is not None:
        strengths = _numbers(strength, "--strength")
        rep = direction_edit_files(G, list(latents), out, direction=direction, strengths=strengths,
                                   component=component, batch_size=batch_size)
        _report_errors(rep.errors)
        click.echo(f"moved {len(rep.done)} latent(s) by {len(strengths)} strength(s), {len(rep.errors)} "
                   f"failed in {time.perf_counter() - t0:.1f} s -> {out}")
    else:
        progress, close = _progress_bars(steps)
        rep = edit_files(G, list(latents), out, request=request, mask=mask, batch_size=batch_size,
                         classes=klass, progress=progress, wr=wr, steps=steps, lr=lr, reg=reg, loss=loss,
                         lpips_weight=lpips_weight, seed=seed)
        close()
        _report_errors(rep.errors)
        rows = {r["target"]: r for r in rep.metrics}
        done = [rows[s] for s in rep.done if s in rows]
        med = (f", median error in the mask {np.median([r['mask_mse_before'] for r in done]):.4g} -> "
               f"{np.median([r['mask_mse_after'] for r in done]):.4g}") if done else ""
        click.echo(f"edited {len(rep.done)} latent(s), skipped {len(rep.skipped)} complete, "
                   f"{len(rep.errors)} failed in {time.perf_counter() - t0:.1f} s{med} -> {out}")
    if rep.errors:
        sys.exit(1)


@main.command("direction", cls=_ManyValues)
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output .npy file.")
@generator_options
@click.option("--positive", multiple=True, help="Latent files with the attribute (files, folders, globs; "
              "several may follow one flag).")
@click.option("--negative", multiple=True, help="Latent files without it.")
@click.option("--method", type=click.Choice(["mean", "boundary"]), default="mean", show_default=True,
              help="mean: normalized difference of the means; boundary: normal of a linear classifier "
              "(InterFaceGAN).")
@click.option("--pca", type=int, help="Instead: K principal directions of the generator (GANSpace-like), "
              "written as [K, *latent].")
@click.option("--samples", default=PCA_SAMPLES, show_default=True, help="Prior samples for --pca.")
@click.option("--space", help="Latent space for --pca [default: the generator's].")
@click.option("--seed", default=0, show_default=True, help="Seed of the --pca samples.")
def direction_command(out, generator, network_key, latent_dim, device, positive, negative, method, pca,
                      samples, space, seed):
    """Find a latent direction (norm 1) and write it to OUT (.npy), for `edit --direction`."""
    from .edit_jobs import direction_file
    G = open_generator(generator, network_key, latent_dim, device)
    errors, summary = direction_file(G, out, positive=positive, negative=negative, method=method,
                                     pca=pca, samples=samples, space=space, seed=seed)
    _report_errors(errors)
    click.echo(f"{summary} -> {out}")
    if errors:
        sys.exit(1)


@main.command("interpolate")
@click.argument("latents", nargs=-1, required=True)
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder.")
@generator_options
@click.option("--frames", default=9, show_default=True, help="Frames per pair, both ends included.")
@click.option("--mode", type=click.Choice(["both", "linear", "spherical"]), default="both",
              show_default=True, help="Straight line, great circle (keeps z near the prior's shell), or both.")
@click.option("--fps", default=12, show_default=True, help="Video frame rate.")
def interpolate_command(latents, out, generator, network_key, latent_dim, device, frames, mode, fps):
    """Interpolate from each of LATENTS (.npz, in order) to the next: OUT/<mode>.png (a row per
    pair) and OUT/<mode>.mp4 (or .gif without ffmpeg)."""
    from .edit_jobs import interpolate_files
    G = open_generator(generator, network_key, latent_dim, device)
    modes = ("linear", "spherical") if mode == "both" else (mode,)
    written, errors = interpolate_files(G, list(latents), out, frames=frames, modes=modes, fps=fps)
    _report_errors(errors)
    click.echo("wrote " + ", ".join(str(p) for p in written))
    if errors:
        sys.exit(1)


@main.command("sweep")
@click.argument("targets", nargs=-1, required=True)
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder.")
@generator_options
@click.option("--wr", "wr_list", default=",".join(f"{w:g}" for w in SWEEP_WRS), show_default=True,
              help="Comma-separated w_r values; every target runs at every one, in one batch.")
@click.option("--init", type=click.Path(path_type=Path),
              help="Edit sweep: start from this .npz (or a folder of <stem>.npz); TARGETS are requests.")
@click.option("--mask", type=click.Path(path_type=Path),
              help="Where the targets apply, at the generator's resolution (default: their alpha "
              "with --init, else everywhere).")
@click.option("--space", help="Latent space [default: the generator's].")
@click.option("--steps", type=int, help=f"Optimization steps [default: {D.steps}; "
              f"{EDIT_DEFAULTS['steps']} with --init].")
@_optimizer_options
@click.option("--starts", default=D.starts, show_default=True, help="Random starts per sample.")
@click.option("--init-mode", type=click.Choice(["random", "mean"]),
              help="Start without --init [default: random in z, mean in w]. For clean curves give "
              "every w_r one shared start: --starts 1, --init-mode mean or --init.")
@class_option
def sweep_command(targets, out, generator, network_key, latent_dim, device, wr_list, init, mask, space,
                  steps, lr, reg, loss, lpips_weight, seed, starts, init_mode, klass):
    """Project (or edit, with --init) TARGETS at every w_r in one batched run: OUT/sweep.csv,
    OUT/sweep.png (fidelity against realism), OUT/grid.png; prints a suggested w_r."""
    from .edit_jobs import sweep_files
    wrs = _numbers(wr_list, "--wr")
    G = open_generator(generator, network_key, latent_dim, device)
    options = {"space": space, "steps": steps, "lr": lr, "reg": reg, "loss": loss,
               "lpips_weight": lpips_weight, "seed": seed, "starts": starts, "init_mode": init_mode}
    options = {k: v for k, v in options.items() if v is not None}
    progress, close = _progress_bars(steps or (EDIT_DEFAULTS["steps"] if init else D.steps))
    t0 = time.perf_counter()
    sw, errors, reason = sweep_files(G, list(targets), out, wrs, init=init, mask=mask, classes=klass,
                                     progress=progress, **options)
    close()
    _report_errors(errors)
    if sw is not None:
        click.echo(f"swept {len(sw.names)} target(s) x {len(sw.wrs)} w_r in one run of "
                   f"{len(sw.names) * len(sw.wrs)} samples, {time.perf_counter() - t0:.1f} s -> {out}")
        click.echo(f"suggested {reason}")
    if errors or sw is None:
        sys.exit(1)


@main.command("bench")
@generator_options
@click.option("--batch-sizes", help="Comma-separated batch sizes of the batched loop; the largest gives "
              "the headline [default: 1,8,64 on CPU, 1,64,1024,4096 on GPU].")
@click.option("--steps", default=20, show_default=True, help="Steps per timed projection.")
@click.option("--loss", type=click.Choice(["mse", "lpips", "mse+lpips"]), default="mse", show_default=True)
@click.option("--space", help="Latent space [default: the generator's].")
@click.option("--repeats", default=2, show_default=True, help="Each time is the best of this many runs.")
@speed_options
@click.option("--json", "as_json", is_flag=True, help="Also print the result as one JSON line, last.")
def bench_command(generator, network_key, latent_dim, device, batch_sizes, steps, loss, space, repeats,
                  precision, channels_last, compile_mode, as_json):
    """Measure the batched loop on one device: speedup over one target at a time (batch 1, as
    NVIDIA's projector), loop overhead over a bare forward+backward, image-steps per second,
    memory per sample and the largest batch that fits."""
    import json

    from .bench import bench, format_table
    from .devices import accelerate
    sizes = _numbers(batch_sizes, "--batch-sizes") if batch_sizes else None
    if sizes and any(b < 1 or b != int(b) for b in sizes):
        raise LatentFitError(f"--batch-sizes {batch_sizes!r}: whole numbers >= 1, e.g. 1,8,64")
    G = accelerate(open_generator(generator, network_key, latent_dim, device),
                   precision=precision, channels_last=channels_last, compile=compile_mode)
    res = bench(G, batch_sizes=sizes and [int(b) for b in sizes], steps=steps, loss=loss, space=space,
                repeats=repeats) | {"precision": precision, "channels_last": channels_last,
                                    "compile": compile_mode}
    click.echo(format_table(res))
    if as_json:
        click.echo(json.dumps(res, sort_keys=True))


from .encoder import TrainSettings  # noqa: E402  (train-encoder block: self-contained)
from .encoder_run import CHECKPOINT_MINUTES  # noqa: E402


def _command_line(ctx: click.Context) -> str:
    """The command with every option that differs from its default (for model cards)."""
    import shlex
    words = ["latent-fit", ctx.info_name]
    for p in ctx.command.params:
        value = ctx.params.get(p.name)
        if value is None or value == p.default or value is False:
            continue
        words += [p.opts[0]] if value is True else [p.opts[0], str(value)]
    return shlex.join(words)


@main.command("train-encoder")
@generator_options
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Encoder file to write (.safetensors; a .md model card and, while training, a .ckpt "
              "checkpoint go beside it).")
@click.option("--space", help="Latent space the encoder predicts: z, w or w+ [default: the generator's].")
@click.option("--steps", default=TrainSettings.steps, show_default=True, help="Training steps.")
@click.option("--batch-size", default=TrainSettings.batch_size, show_default=True,
              help="Generator samples per step.")
@click.option("--images", type=click.Path(exists=True, file_okay=False),
              help="Folder of real images added with a reconstruction loss through G (for photos).")
@click.option("--checkpoint-minutes", default=CHECKPOINT_MINUTES, show_default=True,
              help="Minutes between checkpoints; rerunning the same command resumes from the last one.")
@click.option("--seed", default=0, show_default=True, help="Seed of the training samples.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="bf16: encoder and generator under autocast (for GPUs).")
@click.option("--compile", "compile_encoder", is_flag=True, help="torch.compile the encoder (for GPUs).")
def train_encoder_command(generator, network_key, latent_dim, device, out, space, steps, batch_size, images,
                          checkpoint_minutes, seed, precision, compile_encoder):
    """Train an image -> latent encoder for a generator from its own samples (no dataset needed);
    `project --encoder` starts from its guess."""
    from .encoder_run import run_train_encoder
    G = open_generator(generator, network_key, latent_dim, device)
    bar = tqdm(total=steps, desc="train-encoder", unit="step", dynamic_ncols=True)

    def progress(step, terms):
        bar.n = step
        bar.set_postfix({k: f"{v:.4g}" for k, v in terms.items()}, refresh=False)
        if step % 10 == 0 or step == steps:
            bar.refresh()

    _E, val = run_train_encoder(G, out, space=space, steps=steps, batch_size=batch_size, images=images,
                                precision=precision, compile=compile_encoder, seed=seed,
                                checkpoint_minutes=checkpoint_minutes, progress=progress, say=tqdm.write,
                                command=_command_line(click.get_current_context()))
    bar.close()
    click.echo(f"validation PSNR of G(E(x)) on {len(val)} held-out samples: median {val.median():.2f} dB, "
               f"worst {val.min():.2f} dB -> {out}")
