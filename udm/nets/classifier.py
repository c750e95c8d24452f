"""A small CNN classifier whose penultimate layer is udm's FID feature space.

Inception weights cannot be fetched here, so FID and KID use features of a classifier
trained on the data itself (the usual MNIST practice); `udm.jobs.features` trains it.
"""

from __future__ import annotations

from torch import Tensor, nn


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())


class Classifier(nn.Module):
    """x [B, C, H, W] in [-1, 1] -> class logits [B, num_classes]; `features(x)` -> [B, num_features].

    Conv blocks with a 2x max-pool after each but the last (any H, W >= 2^(len(channels)-1)),
    a global average pool, then the feature layer (ReLU) and the linear class head.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: tuple[int, ...] = (32, 64, 128),
                 num_features: int = 128, dropout: float = 0.2):
        super().__init__()
        widths = [in_channels, *channels]
        blocks: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(widths, widths[1:])):
            blocks += [conv_block(c_in, c_out), conv_block(c_out, c_out)]
            if i < len(channels) - 1:
                blocks.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed = nn.Sequential(nn.Linear(widths[-1], num_features), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, num_classes))
        self.num_features = num_features

    def features(self, x: Tensor) -> Tensor:
        return self.embed(self.body(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
