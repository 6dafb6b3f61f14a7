"""A plain U-Net segmentation network: the few-shot baseline (one image in, label logits out).

The honest competitor of NICE-Transeg's segmentation (the paper compares with FCN-ResNet trained on
the same K labels): the same encoder conv modules as NICE-Trans (two 3x3(x3) convs + LeakyReLU 0.2,
max-pool 2), a mirrored decoder (linear upsampling, skip concatenation, two convs) and a 1x1 conv
to the class logits.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from warpseg.errors import InputError
from warpseg.models.blocks import DoubleConv, check_ndim, conv_layer, max_pool_layer, resize_features


class SegmentationUNet(nn.Module):
    """U-Net to ``num_labels`` logits (background included).

    Parameters
    ----------
    ndim : 2 or 3.
    num_labels : output classes, background included.
    in_channels : image channels.
    channels : encoder widths, fine to coarse; the decoder mirrors them.

    Shapes
    ------
    ``forward(image)``: ``(B, in_channels, *S)`` with ``S`` multiples of :attr:`size_multiple`;
    returns ``{"segmentation": (B, num_labels, *S)}`` logits.
    """

    def __init__(self, ndim: int = 2, num_labels: int = 5, in_channels: int = 1,
                 channels: Sequence[int] = (16, 32, 64, 64)) -> None:
        super().__init__()
        self.ndim, self.num_labels, self.in_channels = check_ndim(ndim), int(num_labels), int(in_channels)
        self.channels = [int(c) for c in channels]
        if len(self.channels) < 2 or self.num_labels < 2:
            raise ValueError(f"need >= 2 levels and >= 2 labels, got channels={channels}, num_labels={num_labels}")
        self.size_multiple = 2 ** (len(self.channels) - 1)
        widths = [self.in_channels] + self.channels
        self.encoder = nn.ModuleList([DoubleConv(ndim, widths[i], widths[i + 1]) for i in range(len(self.channels))])
        self.pool = max_pool_layer(ndim)(2)
        self.decoder = nn.ModuleList([DoubleConv(ndim, self.channels[k] + self.channels[k + 1], self.channels[k])
                                      for k in range(len(self.channels) - 1)])
        self.classify = conv_layer(ndim)(self.channels[0], self.num_labels, 1)

    @property
    def config(self) -> dict:
        """Constructor arguments: ``SegmentationUNet(**model.config)`` rebuilds this architecture."""
        return {"ndim": self.ndim, "num_labels": self.num_labels, "in_channels": self.in_channels,
                "channels": list(self.channels)}

    def forward(self, image: torch.Tensor) -> dict:
        self._check(image)
        skips = []
        for level, module in enumerate(self.encoder):
            image = module(image if level == 0 else self.pool(image))
            skips.append(image)
        state = skips[-1]
        for level in reversed(range(len(self.decoder))):
            state = resize_features(state, skips[level].shape[2:])
            state = self.decoder[level](torch.cat([skips[level], state], dim=1))
        return {"segmentation": self.classify(state)}

    def _check(self, image: torch.Tensor) -> None:
        if image.dim() != self.ndim + 2 or image.shape[1] != self.in_channels:
            raise InputError(f"image has shape {tuple(image.shape)}; expected (B, {self.in_channels}, "
                             f"{self.ndim} spatial sizes) for a {self.ndim}D network")
        if any(size % self.size_multiple for size in image.shape[2:]):
            raise InputError(f"spatial shape {tuple(image.shape[2:])} is not a multiple of {self.size_multiple} "
                             "(model.size_multiple); pad the image first")
