"""udm: a unified diffusion framework — one forward-process abstraction, one reverse loop, samplers as objects."""

from udm.models import TrainedModel, open_model
from udm.processes import ForwardProcess, Gaussian
from udm.samplers import DDIM, DDPM, Sampler

__version__ = "0.1.0"

__all__ = ["DDIM", "DDPM", "ForwardProcess", "Gaussian", "Sampler", "TrainedModel", "open_model", "__version__"]
