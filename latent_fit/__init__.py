"""latent-fit: project images into a pretrained generator's latent space and edit them there."""

from .errors import LatentFitError
from .generators import load_generator
from .latents import read_latent_file, write_latent_file
from .optimize import Config, Result, project

__all__ = ["LatentFitError", "load_generator", "project", "Config", "Result",
           "read_latent_file", "write_latent_file"]
