"""Forward processes x_t = F_t(x0, eps): one abstract base, one small subclass per corruption."""

from udm.processes.affine import Affine
from udm.processes.base import ForwardProcess
from udm.processes.cold import Blur, Cold, Inpaint, Pixelate
from udm.processes.discrete import TokenEstimate, TokenMask, TokenNoise, TokenProcess, TokenReplace
from udm.processes.gaussian import Gaussian
from udm.processes.latent import Latent
from udm.processes.uniform import TokenUniform
from udm.processes.ve import VarianceExploding

__all__ = ["Affine", "Blur", "Cold", "ForwardProcess", "Gaussian", "Inpaint", "Latent", "Pixelate", "TokenEstimate", "TokenMask", "TokenNoise", "TokenProcess", "TokenReplace", "TokenUniform", "VarianceExploding"]
