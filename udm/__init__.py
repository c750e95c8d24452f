"""udm: a unified diffusion framework — one forward-process abstraction, one reverse loop."""

from udm.processes import ForwardProcess, Gaussian
from udm.sampling import sample

__version__ = "0.1.0"

__all__ = ["ForwardProcess", "Gaussian", "sample", "__version__"]
