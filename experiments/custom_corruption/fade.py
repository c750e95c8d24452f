"""A new corruption in one subclass: a progressive fade to a constant level."""

from torch import Tensor

from udm.processes import Cold
from udm.processes.base import per_sample


class Fade(Cold):
    """D_t(x0) = (1 - t/T) x0 + (t/T) level: the image fades linearly into `level`."""

    def __init__(self, T: int = 20, level: float = -1.0, **kwargs):
        super().__init__(T=T, **kwargs)
        self.level = level

    def degrade(self, x0: Tensor, t: Tensor) -> Tensor:
        w = per_sample(t / self.T, x0)
        return (1 - w) * x0 + w * self.level
