"""latent-fit: project images into a pretrained generator's latent space and edit them there."""

from .config import EDIT, ENCODED, PROJECTION, Config
from .edit import (
    EditResult,
    apply_direction,
    edit,
    interpolate,
    interpolate_noise,
    linear_boundary,
    mean_difference,
    pca_directions,
    render,
)
from .encoder import Encoder, load_encoder, train_encoder
from .errors import LatentFitError
from .generators import load_generator
from .latents import read_latent_file, write_latent_file
from .objective import Objective
from .optimize import Result, project
from .sweep import SweepResult, realism, suggest_wr, sweep

__all__ = [
    "LatentFitError",
    "load_generator",
    "Encoder",
    "load_encoder",
    "train_encoder",
    "project",
    "Config",
    "PROJECTION",
    "ENCODED",
    "EDIT",
    "Objective",
    "Result",
    "read_latent_file",
    "write_latent_file",
    "edit",
    "EditResult",
    "render",
    "apply_direction",
    "interpolate",
    "interpolate_noise",
    "mean_difference",
    "linear_boundary",
    "pca_directions",
    "sweep",
    "SweepResult",
    "suggest_wr",
    "realism",
]
