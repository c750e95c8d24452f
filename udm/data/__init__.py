"""Data modules. Images yield x0 in [-1, 1] as [B, C, H, W]; text yields token ids [B, L]."""

from udm.data.cifar import CIFAR10
from udm.data.hf import HFImages, HFText
from udm.data.images import MNIST, ArrayFile, Digits, ImageData, ImageFolder
from udm.data.text import Poems, TextData, TextFile
from udm.data.toy import Toy2D

__all__ = ["CIFAR10", "HFImages", "HFText", "MNIST", "ArrayFile", "Digits", "ImageData", "ImageFolder", "Poems", "TextData", "TextFile", "Toy2D"]
