"""The `latent-fit` command line: parse, call the library, report. No math here."""

from __future__ import annotations

import functools
import sys
import time
import warnings
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from .config import (
    CHOICES,
    EDIT,
    EDIT_WR,
    ENCODED,
    PROJECTION,
    SWEEP_WRS,
    TUNING_DEFAULTS,
    Tuning,
    edit_config,
    projection_config,
    sweep_config,
    tune_sweep_wr,
)
from .devices import COMPILE_MODES, PRECISIONS, default_device
from .edit import PCA_SAMPLES
from .encoder import TrainSettings
from .errors import ArgumentError, LatentFitError, one_line
from .faces import ALIGN_MODES
from .generators import BUNDLED, DEFAULT_GENERATOR, load_generator
from .outputs import Report
from .runs.encoder import CHECKPOINT_MINUTES

D = PROJECTION


def _fail(msg: str) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(1)


def _flag(ctx: click.Context, arg: str) -> str:
    """The command-line flag of the invoked command that sets library argument `arg`."""
    cmd = ctx.command.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
    for p in cmd.params if cmd else ():
        if p.name == arg or f"--{arg.replace('_', '-')}" in p.opts:
            return p.opts[0]
    return arg


class Group(click.Group):
    """Prints a LatentFitError as one line (naming the flag of a bad argument) and exits 1
    instead of a traceback; prints each distinct warning once, as one line."""

    def invoke(self, ctx):
        seen = set()

        def show(message, *_args, **_kwargs):
            if str(message) not in seen:
                seen.add(str(message))
                tqdm.write(f"warning: {message}", file=sys.stderr)  # keeps progress bars intact

        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.showwarning = show
            try:
                return super().invoke(ctx)
            except ArgumentError as e:
                _fail(e.with_flag(_flag(ctx, e.arg)))
            except LatentFitError as e:
                _fail(str(e))


def _remember(ctx, param, value):
    """Keep an option (--num-classes, --torchscript) for open_generator through the context,
    so that commands need not pass it."""
    ctx.meta[param.name] = value


def generator_options(f):
    f = click.option(
        "--generator",
        "-g",
        default=DEFAULT_GENERATOR,
        show_default=True,
        help="Bundled name, network .pkl / .pt (never run), or code that runs: a TorchScript "
        "file, module:callable or path/to/file.py:callable.",
    )(f)
    f = click.option("--network-key", default="G_ema", show_default=True, help="Which network of a .pkl to use.")(f)
    f = click.option(
        "--latent-dim", type=int, help="Latent size of a TorchScript/callable generator (probed when omitted)."
    )(f)
    f = click.option(
        "--num-classes",
        type=click.IntRange(min=0),
        expose_value=False,
        callback=_remember,
        help="A conditional TorchScript/callable generator: called as forward(z, c) with one-hot "
        "c [N, num_classes] [default: its c_dim attribute, else unconditional].",
    )(f)
    f = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")(f)
    f = click.option(
        "--torchscript",
        is_flag=True,
        expose_value=False,
        callback=_remember,
        help="Read the generator file as TorchScript whatever its name: this runs code "
        "stored in the file, so only for files you trust (.ts/.torchscript names are "
        "read so anyway).",
    )(f)
    return f


encoder_option = click.option(
    "--encoder",
    default="auto",
    show_default=True,
    help="Learned start E(x) of each target: auto (the generator's bundled encoder, where there is one), "
    "an encoder file from train-encoder, or none (random starts / the mean).",
)
spread_option = click.option(
    "--spread",
    type=float,
    help=f"With an encoder: the other starts are E(x) plus noise of this many latent stds [default: {ENCODED.spread}].",
)


def open_encoder(G, encoder: str, space: str | None, init):
    """The --encoder's learned start, or None where --init gives the starts or there is none."""
    from .encoder import load_encoder

    return None if init else load_encoder(encoder, G, space=space)


class_option = click.option(
    "--class",
    "class_index",
    type=int,
    help="Class index for a conditional generator (needed in z) [default: the "
    "class stored in the latent files, for commands that read them].",
)


def open_generator(generator, network_key, latent_dim, device):
    ctx = click.get_current_context(silent=True)
    return load_generator(
        generator,
        default_device(device),
        network_key=network_key,
        latent_dim=latent_dim,
        num_classes=ctx.meta.get("num_classes") if ctx else None,
        torchscript=bool(ctx and ctx.meta.get("torchscript")),
    )


wr_units_option = click.option(
    "--wr-units",
    type=click.Choice(CHOICES["wr_units"]),
    default=D.wr_units,
    show_default=True,
    help="raw: w_r as given; relative: w_r in units of the generator's local ||J(z0)||_F^2/(d*P) at each "
    "start, the same trade-off on every generator (see Choosing w_r).",
)


def _optimizer_options(f):
    f = wr_units_option(f)
    f = click.option("--seed", default=D.seed, show_default=True)(f)
    f = click.option("--lpips-weight", default=D.lpips_weight, show_default=True)(f)
    f = click.option(
        "--loss",
        type=click.Choice(["auto", "mse", "lpips", "mse+lpips"]),
        default=D.loss,
        show_default=True,
        help="Reconstruction terms; auto adds LPIPS when its weights are on disk.",
    )(f)
    f = click.option(
        "--reg",
        type=click.Choice(["l2", "l1"]),
        default=D.reg,
        show_default=True,
        help="l2: wr*sum(dz^2); l1: wr*sum(|dz|).",
    )(f)
    f = click.option("--lr", type=float, help="Adam learning rate [default: 0.2 in z, 0.1 in w/w+].")(f)
    f = click.option(
        "--lbfgs",
        type=float,
        help=f"Fraction of the steps, the last ones, taken by L-BFGS on the latent instead of Adam "
        f"[default: {ENCODED.lbfgs} from an encoder's start, else {D.lbfgs}].",
    )(f)
    return f


def speed_options(f):
    """--precision, --channels-last, --compile: the synthesis switches of devices.accelerate."""
    f = click.option(
        "--compile",
        "compile_mode",
        default="off",
        show_default=True,
        type=click.Choice(COMPILE_MODES),
        help="torch.compile the synthesis (reduce-overhead: with CUDA graphs).",
    )(f)
    f = click.option("--channels-last", is_flag=True, help="NHWC memory layout for the generator.")(f)
    f = click.option(
        "--precision",
        type=click.Choice(PRECISIONS),
        default="fp32",
        show_default=True,
        help="bf16: synthesis under autocast (fast on recent GPUs; the loop stays fp32).",
    )(f)
    return f


def align_options(f):
    """--align, --template, --max-faces: how whole photos become targets (photos.Alignment),
    passed to the command as one `photos` dict."""

    @functools.wraps(f)
    def command(*args, align, template, max_faces, **kwargs):
        return f(*args, photos=dict(align=align, template=template, max_faces=max_faces), **kwargs)

    command = click.option(
        "--max-faces", type=click.IntRange(min=1), help="Targets per photo at most, the largest faces [default: all]."
    )(command)
    command = click.option(
        "--template",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Face template file to align to (latent-fit template) [default: the generator's own, made on first use].",
    )(command)
    return click.option(
        "--align",
        type=click.Choice(ALIGN_MODES),
        default="auto",
        show_default=True,
        help="auto: every face of a photo aligned to the generator's face template, one target each "
        "(<stem>, <stem>_face2, ...), images already aligned or without a face used as they are, no "
        "alignment for generators without faces; faces: always align, a photo without a face is an error; "
        "none: centre crop.",
    )(command)


def tune_options(f):
    """--tune-steps, --tune-locality, --tune-lr, --tune-rank: tuning.Tuning's fields (project
    --tune, sweep --tune-reg; sweep's --tune-rank may be a list)."""
    T = Tuning()
    f = click.option(
        "--tune-rank",
        callback=_ranks,
        help="Rank R of each weight's change (dtheta = A*B, LoRA-style) or 'full'; sweep --tune-reg takes a "
        "list, e.g. 8,20,full [default: {layers} where every tuned weight is a plain layer's, as the bundled "
        "DCGAN's (it matched full in 23x smaller files), else {samples}].".format(
            **{k: v["tune_rank"] for k, v in TUNING_DEFAULTS.items()}
        ),
    )(f)
    f = click.option("--tune-lr", type=float, help=f"Adam learning rate of the tuning [default: {T.tune_lr:g}].")(f)
    f = click.option(
        "--tune-locality",
        type=float,
        help="Weight of the locality term (the rest of the generator keeps its images) [default: {samples:g}; "
        "{layers:g} at a low --tune-rank on plain layers].".format(
            **{k: v["tune_locality"] for k, v in TUNING_DEFAULTS.items()}
        ),
    )(f)
    f = click.option("--tune-steps", type=int, help=f"Tuning steps [default: {T.tune_steps}].")(f)
    return f


def _ranks(ctx, param, value) -> list | None:
    """--tune-rank's comma-separated values: whole numbers >= 1 or 'full'."""
    if value is None:
        return None
    ranks = [v.strip() for v in value.split(",")]
    if not all(r == "full" or r.isdigit() and int(r) >= 1 for r in ranks):
        raise click.BadParameter(f"{value!r}: give whole numbers >= 1 or full, comma-separated")
    return [r if r == "full" else int(r) for r in ranks]


def _tuning(on: bool, flag: str, options: dict, ranks: bool = False) -> Tuning | None:
    """The Tuning of the --tune-* options (taken out of a command's `options`) when `flag` (--tune;
    sweep's --tune-reg) is on, else None; `ranks`: --tune-rank may be a list (its first is kept)."""
    settings = {k: options.pop(k) for k in list(options) if k.startswith("tune_")}
    rank = settings.pop("tune_rank")
    if rank and len(rank) > 1 and not ranks:
        raise LatentFitError("--tune-rank takes one value here; several go with sweep --tune-reg")
    settings["tune_rank"] = rank and rank[0]
    given = [k for k, v in settings.items() if v is not None]
    if given and not on:
        raise LatentFitError(f"--{given[0].replace('_', '-')} needs {flag}")
    return Tuning().replace(**settings) if on else None


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
    from .devices import keep_freed_memory

    keep_freed_memory()


@main.command()
@click.argument("targets", nargs=-1, required=True)
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@generator_options
@click.option(
    "--space",
    help="Latent space: z (DCGAN, and StyleGAN's input), w or w+ (StyleGAN). "
    "Default: the generator's (z for DCGAN, w for StyleGAN).",
)
@click.option(
    "--steps", type=int, help=f"Optimization steps [default: {ENCODED.steps} from an encoder's start, else {D.steps}]."
)
@_optimizer_options
@click.option(
    "--wr",
    default=D.wr,
    show_default=True,
    help="Weight of the Euclidean norm term wr*||z - z0||^2 (a sum over the latent); z0 is E(x) with an encoder.",
)
@click.option(
    "--starts",
    type=int,
    help=f"Starts per target, pruned by successive halving [default: "
    f"{ENCODED.starts} around an encoder's start, else {D.starts} random ones; 1 from the mean].",
)
@encoder_option
@spread_option
@click.option(
    "--init",
    "init",
    type=click.Path(exists=True, path_type=Path),
    help="Start from this .npz latent (or a folder of <stem>.npz), instead of random starts.",
)
@click.option(
    "--init-mode",
    type=click.Choice(["random", "mean"]),
    help="Start without --init: random prior samples or the mean [default: random in z, mean in w].",
)
@click.option(
    "--sphere/--no-sphere",
    default=D.sphere,
    show_default=True,
    help="z only: keep ||z|| on the prior's typical radius sqrt(dim).",
)
@class_option
@click.option(
    "--noise/--no-noise",
    "optimize_noise",
    default=D.optimize_noise,
    show_default=True,
    help="StyleGAN: optimize the noise maps as well.",
)
@click.option(
    "--batch-size",
    default="16",
    show_default=True,
    callback=_batch_size,
    help="Targets optimized together (each with --starts candidates); auto: the largest chunk that fits the device.",
)
@click.option("--save-video", is_flag=True, help="Also write <stem>.mp4 (or .gif) of the optimization.")
@click.option(
    "--exact",
    is_flag=True,
    help="CPU: convolutions whose rounding does not depend on the batch "
    "size, so a target's latent is bit-identical however the run is batched (slower).",
)
@speed_options
@click.option(
    "--tune",
    is_flag=True,
    help="Then tune a copy of the generator's weights around each found "
    "latent (real photos): OUT/<stem>.tuned.safetensors; the images and metrics are the tuned ones.",
)
@click.option(
    "--tune-reg",
    type=float,
    help="Weight of reg*sum(dtheta^2) of the tuning [default: {samples:g}; {layers:g} at a low --tune-rank "
    "on plain layers, where locality is the layers' own].".format(
        **{k: v["tune_reg"] for k, v in TUNING_DEFAULTS.items()}
    ),
)
@tune_options
@align_options
def project(
    targets,
    out,
    generator,
    network_key,
    latent_dim,
    device,
    batch_size,
    init,
    class_index,
    encoder,
    precision,
    channels_last,
    compile_mode,
    tune,
    photos,
    **settings,
):
    """Project TARGETS (image files, folders, globs, whole photos) into the generator: OUT/<stem>.npz,
    .png, _compare.png, metrics.csv / .json (--tune: .tuned.safetensors; photos: _aligned.png, _photo.png).

    Rerun with the same arguments to finish a killed job. Under torchrun each process takes
    its share of the targets: torchrun --nproc-per-node N -m latent_fit project ..."""
    from .devices import accelerate
    from .distributed import Shard, process_group
    from .runs.project import project_files

    shard = Shard.from_env()
    G = open_generator(generator, network_key, latent_dim, shard.device(device))
    G = accelerate(G, precision=precision, channels_last=channels_last, compile=compile_mode)
    E = open_encoder(G, encoder, settings["space"], init)
    tuning = _tuning(tune, "--tune", settings)
    steps = projection_config(encoded=E is not None, **settings).steps
    progress, close = _progress_bars(steps + (tuning.tune_steps if tuning else 0))
    t0 = time.perf_counter()
    with process_group(shard, G.device):
        rep = project_files(
            G,
            list(targets),
            out,
            batch_size=batch_size,
            init=init,
            encoder=E,
            tuning=tuning,
            class_index=class_index,
            **photos,
            progress=progress if shard.rank == 0 else None,
            rank=shard.rank,
            world=shard.world,
            **settings,
        )
    close()
    _finish(rep, t0, out, f"rank {shard.rank}/{shard.world}: " if shard.world > 1 else "")


@main.command()
def generators():
    """List the bundled generators."""
    for name in BUNDLED:
        G = load_generator(name)
        click.echo(f"{name}: {G.resolution}px, spaces {', '.join(G.spaces)}, z_dim {G.z_dim}, sha256 {G.sha256[:12]}")


@main.command("template")
@generator_options
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The template file to write (JSON).",
)
@click.option("--samples", default=256, show_default=True, help="Generator samples to find landmarks on.")
@click.option("--seed", default=0, show_default=True, help="Seed of those samples.")
def template_command(generator, network_key, latent_dim, device, out, samples, seed):
    """Measure where the generator puts the face landmarks (its face template, for aligning photos)."""
    from .faces import make_template, save_template

    G = open_generator(generator, network_key, latent_dim, device)
    t = make_template(G, n=samples, seed=seed)
    sha = save_template(t, out)
    click.echo(
        f"face template of {G.name!r}: a face in {t.found} of {t.sampled} samples, "
        f"radius {t.radius:.2f} px, sha256 {sha} -> {out}"
    )


# --- the shared epilogue and helpers ----------------------------------------------------------


def _finish(rep: Report, t0: float, out, who: str = "") -> None:
    """Every command's end: its notes, its error lines, its summary; exit 1 if anything failed,
    130 after Ctrl-C."""
    for note in rep.notes:
        click.echo(f"{who}{note}")
    for e in rep.errors:
        click.echo(f"error: {one_line(e)}", err=True)
    if rep.interrupted:
        click.echo(
            f"{who}interrupted: {len(rep.done) + len(rep.skipped)} target(s) complete in {out}; "
            "run the same command again to finish the job",
            err=True,
        )
        sys.exit(130)
    click.echo(f"{who}{rep.summary} in {time.perf_counter() - t0:.1f} s -> {out}")
    if rep.errors:
        sys.exit(1)


def _progress_bars(steps: int):
    """(progress, close): progress(chunk, n_chunks, stems) opens a tqdm bar for one batch and
    returns its per-check callback; close() closes the last bar."""
    bars = []

    def close():
        if bars:
            bars[-1].close()

    def progress(ci, n, stems):
        close()
        bar = tqdm(
            total=steps, desc=f"batch {ci + 1}/{n} ({len(stems)} targets)", unit="step", leave=False, file=sys.stderr
        )
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
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@generator_options
@click.option(
    "--target",
    "request",
    type=click.Path(path_type=Path),
    help="Masked edit: the request image for every latent (an alpha channel is its mask), "
    "or a folder of <stem>.<image> requests, one per latent.",
)
@click.option(
    "--mask",
    type=click.Path(path_type=Path),
    help="Where the request applies: a grayscale image at the generator's resolution (white "
    "= edit, grays = soft), or a folder of <stem>.<image>. Default: the request's alpha, else "
    "the whole image.",
)
@click.option(
    "--wr",
    type=float,
    help="Weight of wr*||z - z0||^2 (a sum over the latent): larger keeps the "
    "latent and the unmasked image nearer the original; useful about 1e-3..1e-1 raw on the bundled "
    f"DCGAN [default: {EDIT_WR['raw']:g} raw, {EDIT_WR['relative']:g} relative].",
)
@click.option("--steps", default=EDIT.steps, show_default=True, help="Optimization steps.")
@_optimizer_options
@click.option(
    "--direction",
    type=click.Path(path_type=Path),
    help="Direction edit: a .npy of shape [*latent] or [K, *latent] (from `latent-fit direction`).",
)
@click.option("--component", default=0, show_default=True, help="Row of a [K, ...] direction file.")
@click.option(
    "--strength",
    default="-3,-1,0,1,3",
    show_default=True,
    help="Comma-separated steps along the direction, in latent units (directions have norm 1).",
)
@click.option("--batch-size", default=16, show_default=True, help="Latents optimized together.")
@class_option
def edit_command(
    latents,
    out,
    generator,
    network_key,
    latent_dim,
    device,
    request,
    mask,
    direction,
    component,
    strength,
    batch_size,
    class_index,
    **settings,
):
    """Edit LATENTS (.npz files, folders, globs) by a painted request (--target [--mask]) or
    along a direction (--direction --strength). Masked: OUT/<stem>.npz, .png, _compare.png
    (before | request | after), metrics.csv. Direction: OUT/<stem>_s<strength>.png, <stem>_strip.png.
    Latents cut from a whole photo (project --align) also give the photo back edited, one per
    photo: OUT/<stem>_photo.png (direction: <stem>_s<strength>_photo.png)."""
    from .runs.edit import direction_edit_files, edit_files

    if (request is None) == (direction is None):
        raise LatentFitError("give --target REQUEST (masked edit) or --direction D.npy (direction edit)")
    cfg = edit_config(**settings)  # for the progress bars; edit_files makes the same
    G = open_generator(generator, network_key, latent_dim, device)
    t0 = time.perf_counter()
    if direction is not None:
        rep = direction_edit_files(
            G,
            list(latents),
            out,
            direction=direction,
            component=component,
            strengths=_numbers(strength, "--strength"),
            class_index=class_index,
            batch_size=batch_size,
        )
    else:
        progress, close = _progress_bars(cfg.steps)
        rep = edit_files(
            G,
            list(latents),
            out,
            request=request,
            mask=mask,
            batch_size=batch_size,
            class_index=class_index,
            progress=progress,
            **settings,
        )
        close()
    _finish(rep, t0, out)


@main.command("direction", cls=_ManyValues)
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output .npy file.")
@generator_options
@click.option(
    "--positive",
    multiple=True,
    help="Latent files with the attribute (files, folders, globs; several may follow one flag).",
)
@click.option("--negative", multiple=True, help="Latent files without it.")
@click.option(
    "--method",
    type=click.Choice(["mean", "boundary"]),
    default="mean",
    show_default=True,
    help="mean: normalized difference of the means; boundary: normal of a linear classifier (InterFaceGAN).",
)
@click.option(
    "--pca", type=int, help="Instead: K principal directions of the generator (GANSpace-like), written as [K, *latent]."
)
@click.option("--samples", default=PCA_SAMPLES, show_default=True, help="Prior samples for --pca.")
@click.option("--space", help="Latent space for --pca [default: the generator's].")
@click.option("--seed", default=0, show_default=True, help="Seed of the --pca samples.")
@class_option
def direction_command(out, generator, network_key, latent_dim, device, **how):
    """Find a latent direction (norm 1) and write it to OUT (.npy), for `edit --direction`."""
    from .runs.edit import direction_file

    G = open_generator(generator, network_key, latent_dim, device)
    _finish(direction_file(G, out, **how), time.perf_counter(), out)


@main.command("interpolate")
@click.argument("latents", nargs=-1, required=True)
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@generator_options
@click.option("--frames", default=9, show_default=True, help="Frames per pair, both ends included.")
@click.option(
    "--mode",
    type=click.Choice(["both", "linear", "spherical"]),
    default="both",
    show_default=True,
    help="Straight line, great circle (keeps z near the prior's shell), or both.",
)
@click.option("--fps", default=12, show_default=True, help="Video frame rate.")
@class_option
def interpolate_command(latents, out, generator, network_key, latent_dim, device, frames, mode, fps, class_index):
    """Interpolate from each of LATENTS (.npz, in order) to the next: OUT/<mode>.png (a row per
    pair) and OUT/<mode>.mp4 (or .gif without ffmpeg); when the first was cut from a whole photo,
    OUT/<mode>_photo.mp4: the frames pasted back into that photo."""
    from .runs.edit import interpolate_files

    G = open_generator(generator, network_key, latent_dim, device)
    modes = ("linear", "spherical") if mode == "both" else (mode,)
    t0 = time.perf_counter()
    _finish(
        interpolate_files(G, list(latents), out, frames=frames, modes=modes, fps=fps, class_index=class_index), t0, out
    )


@main.command("sweep")
@click.argument("targets", nargs=-1, required=True)
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@generator_options
@click.option(
    "--wr",
    "wr_list",
    help="Comma-separated w_r values; every target runs at every one, in one "
    f"batch. With --tune-reg: one value, the pivots' w_r. [default: "
    f"{','.join(f'{w:g}' for w in SWEEP_WRS['raw'])} raw, "
    f"{','.join(f'{w:g}' for w in SWEEP_WRS['relative'])} relative].",
)
@click.option(
    "--init",
    type=click.Path(path_type=Path),
    help="Edit sweep: start from this .npz (or a folder of <stem>.npz); TARGETS are requests.",
)
@click.option(
    "--mask",
    type=click.Path(path_type=Path),
    help="Where the targets apply, at the generator's resolution (default: their alpha with --init, else everywhere).",
)
@click.option("--space", help="Latent space [default: the generator's].")
@click.option("--steps", type=int, help=f"Optimization steps [default: {D.steps}; {EDIT.steps} with --init].")
@_optimizer_options
@click.option("--starts", type=int, help="Starts per sample [default: as project].")
@encoder_option
@spread_option
@click.option(
    "--init-mode",
    type=click.Choice(["random", "mean"]),
    help="Start without --init [default: random in z, mean in w]. For clean curves give "
    "every w_r one shared start: --starts 1, --init-mode mean or --init.",
)
@class_option
@click.option(
    "--tune-reg",
    "tune_reg_list",
    help="Instead of w_r: comma-separated tune_reg values, e.g. "
    "0,1e-4,1e-3,1e-2; each target is projected once, then the generator tuned around it at every "
    "value in one batch (fidelity against locality); prints a suggested tune_reg.",
)
@tune_options
@align_options
def sweep_command(
    targets,
    out,
    generator,
    network_key,
    latent_dim,
    device,
    wr_list,
    init,
    mask,
    class_index,
    encoder,
    tune_reg_list,
    photos,
    **settings,
):
    """Project (or edit, with --init) TARGETS at every w_r in one batched run: OUT/sweep.csv,
    OUT/sweep.png (fidelity against realism), OUT/grid.png; prints a suggested w_r.
    With --tune-reg: tune the generator around each target's projection at every tune_reg."""
    from .runs.sweep import sweep_files, tune_sweep_files

    wrs = _numbers(wr_list, "--wr") if wr_list else None
    ranks = settings.get("tune_rank")
    tuning = _tuning(bool(tune_reg_list), "--tune-reg", settings, ranks=True)
    G = open_generator(generator, network_key, latent_dim, device)
    E = open_encoder(G, encoder, settings["space"], init)
    t0 = time.perf_counter()
    if tuning is not None:
        settings["wr"] = tune_sweep_wr(wrs, init, mask)
        steps = projection_config(encoded=E is not None, **settings).steps + tuning.tune_steps
    else:
        steps = sweep_config(init=bool(init), encoded=E is not None, **settings).steps
    progress, close = _progress_bars(steps)
    common = dict(class_index=class_index, encoder=E, progress=progress, **photos, **settings)
    if tuning is not None:
        regs = _numbers(tune_reg_list, "--tune-reg")
        rep = tune_sweep_files(G, list(targets), out, regs, tuning=tuning, tune_ranks=ranks, **common)
    else:
        rep = sweep_files(G, list(targets), out, wrs, init=init, mask=mask, **common)
    close()
    _finish(rep, t0, out)


@main.command("bench")
@generator_options
@click.option(
    "--batch-sizes",
    help="Comma-separated batch sizes of the batched loop; the largest gives "
    "the headline [default: 1,8,64 on CPU, 1,64,1024,4096 on GPU].",
)
@click.option("--steps", default=20, show_default=True, help="Steps per timed projection.")
@click.option("--loss", type=click.Choice(["mse", "lpips", "mse+lpips"]), default="mse", show_default=True)
@click.option("--space", help="Latent space [default: the generator's].")
@click.option("--repeats", default=2, show_default=True, help="Each time is the best of this many runs.")
@speed_options
@click.option(
    "--quality",
    default=32,
    show_default=True,
    help="Targets of the time-to-quality table (our defaults vs NVIDIA's schedule); 0: skip it.",
)
@encoder_option
@click.option(
    "--tuning",
    "tuning_photos",
    multiple=True,
    help="Photos (files, folders, globs; repeatable) for the tuning table: one batched projection, then "
    "one batched tuning of them all at each --tune-rank (PSNR, locality, file size, time) [default: skip].",
)
@click.option(
    "--tune-rank",
    "tune_ranks",
    default="full,20",
    show_default=True,
    callback=_ranks,
    help="The ranks of the --tuning table (the first is the reference of its PSNR gap).",
)
@click.option("--json", "as_json", is_flag=True, help="Also print the result as one JSON line, last.")
def bench_command(
    generator,
    network_key,
    latent_dim,
    device,
    batch_sizes,
    steps,
    loss,
    space,
    repeats,
    precision,
    channels_last,
    compile_mode,
    quality,
    encoder,
    tuning_photos,
    tune_ranks,
    as_json,
):
    """Measure the batched loop on one device: speedup over one target at a time (batch 1, as
    NVIDIA's projector), loop overhead over a bare forward+backward, image-steps per second,
    memory per sample and the largest batch that fits."""
    import json

    from .bench import bench, format_table
    from .devices import accelerate

    sizes = _numbers(batch_sizes, "--batch-sizes") if batch_sizes else None
    if sizes and any(b < 1 or b != int(b) for b in sizes):
        raise LatentFitError(f"--batch-sizes {batch_sizes!r}: whole numbers >= 1, e.g. 1,8,64")
    G = accelerate(
        open_generator(generator, network_key, latent_dim, device),
        precision=precision,
        channels_last=channels_last,
        compile=compile_mode,
    )
    res = bench(
        G, batch_sizes=sizes and [int(b) for b in sizes], steps=steps, loss=loss, space=space, repeats=repeats
    ) | {"precision": precision, "channels_last": channels_last, "compile": compile_mode}
    click.echo(format_table(res))
    if quality > 0:
        from .bench import format_quality, time_to_quality

        res["time_to_quality"] = time_to_quality(G, open_encoder(G, encoder, space, None), n=quality, loss=loss)
        click.echo(format_quality(res["time_to_quality"], quality))
    if tuning_photos:
        res["tuning"] = _tuning_table(G, tuning_photos, tune_ranks, loss, open_encoder(G, encoder, space, None))
    if as_json:
        click.echo(json.dumps(res, sort_keys=True))


def _tuning_table(G, specs, ranks, loss: str, encoder) -> list[dict]:
    """bench --tuning: the photos' tuning table (bench.tuning_table), printed; its rows."""
    import torch

    from .bench import format_tuning, tuning_table
    from .images import find_images, load_image

    paths, errors = find_images(list(specs))
    if errors or not paths:
        raise LatentFitError(errors[0] if errors else f"--tuning {' '.join(specs)!r}: no images found")
    targets = torch.stack([load_image(p, G.resolution, channels=G.img_channels) for p in paths]).to(G.device)
    rows = tuning_table(G, targets, [p.stem for p in paths], ranks, encoder=encoder, loss=loss)
    click.echo(format_tuning(rows))
    return rows


# --- train-encoder (latent_fit/runs/encoder.py does the work) ----------------------------------


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
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Encoder file to write (.safetensors; a .md model card and, while training, a .ckpt checkpoint go beside it).",
)
@click.option("--space", help="Latent space the encoder predicts: z, w or w+ [default: the generator's].")
@click.option("--steps", default=TrainSettings.steps, show_default=True, help="Training steps.")
@click.option("--batch-size", default=TrainSettings.batch_size, show_default=True, help="Generator samples per step.")
@click.option(
    "--images",
    type=click.Path(exists=True, file_okay=False),
    help="Folder of real images added with a reconstruction loss through G (for photos).",
)
@click.option(
    "--checkpoint-minutes",
    default=CHECKPOINT_MINUTES,
    show_default=True,
    help="Minutes between checkpoints; rerunning the same command resumes from the last one.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the training samples.")
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="fp32",
    show_default=True,
    help="bf16: encoder and generator under autocast (for GPUs).",
)
@click.option("--compile", "compile_encoder", is_flag=True, help="torch.compile the encoder (for GPUs).")
def train_encoder_command(
    generator,
    network_key,
    latent_dim,
    device,
    out,
    space,
    steps,
    batch_size,
    images,
    checkpoint_minutes,
    seed,
    precision,
    compile_encoder,
):
    """Train an image -> latent encoder for a generator from its own samples (no dataset needed);
    `project --encoder` starts from its guess."""
    from .runs.encoder import run_train_encoder

    G = open_generator(generator, network_key, latent_dim, device)
    bar = tqdm(total=steps, desc="train-encoder", unit="step", dynamic_ncols=True)

    def progress(step, terms):
        bar.n = step
        bar.set_postfix({k: f"{v:.4g}" for k, v in terms.items()}, refresh=False)
        if step % 10 == 0 or step == steps:
            bar.refresh()

    _E, val = run_train_encoder(
        G,
        out,
        space=space,
        steps=steps,
        batch_size=batch_size,
        images=images,
        precision=precision,
        compile=compile_encoder,
        seed=seed,
        checkpoint_minutes=checkpoint_minutes,
        progress=progress,
        say=tqdm.write,
        command=_command_line(click.get_current_context()),
    )
    bar.close()
    click.echo(
        f"validation PSNR of G(E(x)) on {len(val)} held-out samples: median {val.median():.2f} dB, "
        f"worst {val.min():.2f} dB -> {out}"
    )


# --- serve (latent_fit/serve does the work) ----------------------------------------------------


@main.command("serve")
@generator_options
@encoder_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; anything but loopback lets other machines in (with a warning).",
)
@click.option("--port", default=8000, show_default=True, help="Port (0: any free one).")
@click.option(
    "--out",
    "-o",
    default="out",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder the page saves into.",
)
@click.option("--steps", default=200, show_default=True, help="Steps of each projection and edit in the page.")
@click.option("--starts", default=4, show_default=True, help="Random starts of each projection.")
@click.option(
    "--loss",
    type=click.Choice(["auto", "mse", "lpips", "mse+lpips"]),
    default="mse",
    show_default=True,
    help="Reconstruction terms (LPIPS fits better but is slower).",
)
@click.option("--seed", default=D.seed, show_default=True)
@wr_units_option
def serve_command(
    generator, network_key, latent_dim, device, encoder, host, port, out, steps, starts, loss, seed, wr_units
):
    """A local web editor: upload or pick an image, watch it project, paint an edit and choose
    w_r, move along directions, sweep w_r, and save OUT/<stem>.npz and .png. Prints its URL."""
    from .serve import run_server

    G = open_generator(generator, network_key, latent_dim, device)
    run_server(
        G,
        out,
        host=host,
        port=port,
        encoder=encoder,
        steps=steps,
        starts=starts,
        loss=loss,
        seed=seed,
        wr_units=wr_units,
    )
