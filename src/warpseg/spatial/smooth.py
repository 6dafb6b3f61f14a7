"""Separable Gaussian smoothing of 2D and 3D tensors."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_blur(image: torch.Tensor, sigma: float, truncate: float = 2.5) -> torch.Tensor:
    """Smooth each channel by a Gaussian of ``sigma`` voxels, cut at ``truncate`` sigmas (zero padding).

    Shapes
    ------
    image: ``(B, C, *S)``, 2D or 3D; returns the same shape.
    """
    if sigma <= 0:
        return image
    radius = max(1, int(math.ceil(truncate * sigma)))
    taps = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-taps**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    ndim, channels = image.dim() - 2, image.shape[1]
    convolve = F.conv2d if ndim == 2 else F.conv3d
    for axis in range(ndim):
        shape = [channels, 1] + [1] * ndim
        shape[2 + axis] = kernel.numel()
        padding = [0] * ndim
        padding[axis] = radius
        image = convolve(image, kernel.expand(channels, -1).reshape(shape), padding=tuple(padding), groups=channels)
    return image
