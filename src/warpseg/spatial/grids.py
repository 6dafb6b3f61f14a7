"""Sampling grids in voxel units and their conversion to ``grid_sample`` coordinates."""
from __future__ import annotations

from collections.abc import Sequence

import torch


def identity_grid(shape: Sequence[int], *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Voxel coordinates of every voxel.

    Shapes
    ------
    returns ``(ndim, *shape)``; channel ``d`` holds the index along axis ``d``.
    """
    axes = [torch.arange(size, device=device, dtype=dtype) for size in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def affine_displacement(matrix: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Displacement of a voxel-space affine map ``x -> A x + t``.

    Shapes
    ------
    matrix: ``(B, ndim, ndim + 1)`` acting on voxel coordinates; returns ``(B, ndim, *shape)``.
    """
    ndim = len(shape)
    grid = identity_grid(shape, device=matrix.device, dtype=matrix.dtype).reshape(ndim, -1)
    mapped = matrix[:, :, :ndim] @ grid + matrix[:, :, ndim:]
    return (mapped - grid).reshape(matrix.shape[0], ndim, *shape)
