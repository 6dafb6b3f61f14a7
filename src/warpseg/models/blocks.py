"""Dimension-generic building blocks shared by the registration networks (2D and 3D).

Everything here picks the 2D or 3D flavour of a layer from ``ndim``, so each network is written
once for both.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from warpseg.errors import InputError

LEAKY_SLOPE = 0.2
"""Negative slope of every LeakyReLU in the networks (NICE-Trans and VoxelMorph both use 0.2)."""


def check_ndim(ndim: int) -> int:
    """Return ``ndim`` if the networks support it (2 or 3), else raise a ValueError."""
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    return ndim


def conv_layer(ndim: int) -> type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return (nn.Conv2d, nn.Conv3d)[check_ndim(ndim) - 2]


def max_pool_layer(ndim: int) -> type[nn.Module]:
    """``nn.MaxPool2d`` or ``nn.MaxPool3d``."""
    return (nn.MaxPool2d, nn.MaxPool3d)[check_ndim(ndim) - 2]


def linear_mode(ndim: int) -> str:
    """The ``F.interpolate`` mode for linear interpolation in ``ndim`` dimensions."""
    return ("bilinear", "trilinear")[check_ndim(ndim) - 2]


class ConvActivation(nn.Sequential):
    """A same-padded convolution followed by LeakyReLU(0.2).

    Shapes
    ------
    input ``(B, in_channels, *S)``; output ``(B, out_channels, *S)``.
    """

    def __init__(self, ndim: int, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(
            conv_layer(ndim)(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.LeakyReLU(LEAKY_SLOPE),
        )


class DoubleConv(nn.Sequential):
    """Two 3x3(x3) convolutions, each followed by LeakyReLU(0.2): one encoder "conv module".

    Shapes
    ------
    input ``(B, in_channels, *S)``; output ``(B, out_channels, *S)``.
    """

    def __init__(self, ndim: int, in_channels: int, out_channels: int) -> None:
        super().__init__(
            ConvActivation(ndim, in_channels, out_channels),
            ConvActivation(ndim, out_channels, out_channels),
        )


def displacement_head(ndim: int, in_channels: int, std: float = 1e-5) -> nn.Module:
    """A 3x3(x3) convolution to ``ndim`` displacement channels with tiny normal weights and zero bias.

    At initialisation the predicted field is ~0 (identity), yet every weight upstream still
    receives a gradient (unlike an exactly-zero initialisation).

    Shapes
    ------
    input ``(B, in_channels, *S)``; output ``(B, ndim, *S)``.
    """
    head = conv_layer(ndim)(in_channels, ndim, 3, padding=1)
    nn.init.normal_(head.weight, mean=0.0, std=std)
    nn.init.zeros_(head.bias)
    return head


def resize_features(features: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Linear resize of feature maps onto a grid of ``shape`` (voxel centres aligned, as pooling).

    Shapes
    ------
    features ``(B, C, *S_in)``; returns ``(B, C, *shape)``.
    """
    ndim = features.dim() - 2
    if tuple(features.shape[2:]) == tuple(shape):
        return features
    return F.interpolate(features, size=tuple(shape), mode=linear_mode(ndim), align_corners=False)


def resize_displacement(displacement: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Resample a displacement field onto a grid of ``shape`` and rescale it to that grid's voxels.

    The grids share their extent with voxel centres aligned as by 2x pooling
    (``x_fine = f * x_coarse + (f - 1) / 2``), so channel ``d`` is multiplied by
    ``shape[d] / S_in[d]``.

    Shapes
    ------
    displacement ``(B, ndim, *S_in)``; returns ``(B, ndim, *shape)``.
    """
    ndim = displacement.shape[1]
    old_shape = displacement.shape[2:]
    if tuple(old_shape) == tuple(shape):
        return displacement
    factors = torch.tensor([new / old for new, old in zip(shape, old_shape)],
                           dtype=displacement.dtype, device=displacement.device)
    resized = resize_features(displacement, shape)
    return resized * factors.view(1, ndim, *([1] * ndim))


def apply_linear(matrix: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    """Multiply every vector of a field by a per-batch matrix.

    Shapes
    ------
    matrix ``(B, ndim, ndim)``; field ``(B, ndim, *S)``; returns ``(B, ndim, *S)``.
    """
    batch, ndim = field.shape[:2]
    flat = matrix @ field.reshape(batch, ndim, -1)
    return flat.reshape(field.shape)


def check_image_pair(moving: torch.Tensor, fixed: torch.Tensor, *, ndim: int, in_channels: int,
                     size_multiple: int) -> None:
    """Raise an :class:`~warpseg.errors.InputError` (a ValueError) if a pair cannot enter a network.

    Shapes
    ------
    moving, fixed: ``(B, in_channels, *S)`` with ``len(S) == ndim`` and every ``S[d]`` a multiple of
    ``size_multiple``.
    """
    expected = f"(B, {in_channels}, {', '.join('S' + str(d) for d in range(ndim))})"
    for name, image in (("moving", moving), ("fixed", fixed)):
        if image.dim() != ndim + 2 or image.shape[1] != in_channels:
            raise InputError(f"{name} has shape {tuple(image.shape)}; expected {expected} "
                             f"for a {ndim}D network with {in_channels} input channel(s)")
    if moving.shape != fixed.shape:
        raise InputError(f"moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} differ; "
                         "resample both onto one grid first")
    spatial = tuple(fixed.shape[2:])
    if any(size % size_multiple for size in spatial):
        padded = tuple(-(-size // size_multiple) * size_multiple for size in spatial)
        raise InputError(f"spatial shape {spatial} is not a multiple of {size_multiple} "
                         f"(model.size_multiple); pad the images to e.g. {padded}")
