"""Data modules. Images yield x0 in [-1, 1] as [B, C, H, W]."""

from udm.data.images import MNIST, ArrayFile, Digits, ImageData, ImageFolder

__all__ = ["MNIST", "ArrayFile", "Digits", "ImageData", "ImageFolder"]
