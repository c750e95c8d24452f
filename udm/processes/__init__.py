"""Forward processes x_t = F_t(x0, eps): one abstract base, one small subclass per corruption."""

from udm.processes.base import ForwardProcess
from udm.processes.gaussian import Gaussian

__all__ = ["ForwardProcess", "Gaussian"]
