"""x0-predictor backbones. They map (x_t, t) to a raw tensor; processes give it meaning."""

from udm.nets.autoencoder import ConvDecoder, ConvEncoder, IdentityCoder, TokenEmbedding, TokenHead
from udm.nets.diffusers_unet import DiffusersUNet
from udm.nets.mlp import MLP
from udm.nets.transformer import Transformer
from udm.nets.unet import UNet

__all__ = ["ConvDecoder", "ConvEncoder", "DiffusersUNet", "IdentityCoder", "MLP", "TokenEmbedding", "TokenHead", "Transformer", "UNet"]
