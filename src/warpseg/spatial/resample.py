"""Resampling a volume into another volume's world grid, optionally through a displacement."""
from __future__ import annotations

import numpy as np
import torch

from warpseg.io.volume import Volume
from warpseg.spatial.grids import identity_grid
from warpseg.spatial.warp import sample_at


def moving_voxel_coordinates(moving: Volume, fixed: Volume,
                             displacement: torch.Tensor | None = None) -> torch.Tensor:
    """For every fixed voxel ``x``, the moving voxel at world point ``A_f (x + u(x))``.

    Shapes
    ------
    displacement: ``(1, ndim, *fixed.shape)`` in fixed voxel units or None;
    returns ``(1, ndim, *fixed.shape)`` in moving voxel units.
    """
    ndim = fixed.ndim
    device = displacement.device if displacement is not None else None
    points = identity_grid(fixed.shape, device=device, dtype=torch.float64).unsqueeze(0)
    if displacement is not None:
        points = points + displacement.to(torch.float64)
    fixed_to_moving = np.linalg.inv(moving.affine) @ fixed.affine
    matrix = torch.as_tensor(fixed_to_moving[:ndim, :ndim], dtype=torch.float64, device=points.device)
    offset = torch.as_tensor(fixed_to_moving[:ndim, 3], dtype=torch.float64, device=points.device)
    mapped = torch.einsum("ij,bj...->bi...", matrix, points) + offset.view(1, ndim, *([1] * ndim))
    return mapped.to(torch.float32)


def resample_volume(moving: Volume, fixed: Volume, displacement: torch.Tensor | None = None,
                    *, mode: str | None = None) -> Volume:
    """``moving`` sampled on ``fixed``'s grid (through ``displacement`` when given), in one interpolation.

    Label maps use nearest-neighbour sampling and stay integer; images use linear sampling.
    Points outside the moving image read 0.
    """
    if moving.ndim != fixed.ndim:
        raise ValueError(f"cannot resample a {moving.ndim}D volume into a {fixed.ndim}D grid")
    mode = mode or ("nearest" if moving.is_labels else "bilinear")
    coordinates = moving_voxel_coordinates(moving, fixed, displacement)
    data = torch.as_tensor(moving.array.astype(np.float32), device=coordinates.device)[None, None]
    sampled = sample_at(data, coordinates, mode=mode)[0, 0].cpu().numpy()
    if moving.is_labels:
        sampled = np.rint(sampled).astype(moving.array.dtype)
    return Volume(sampled, fixed.affine, is_labels=moving.is_labels, label_names=moving.label_names)
