"""Jacobian determinant of a deformation and the share of folded voxels."""
from __future__ import annotations

import torch


def jacobian_determinant(displacement: torch.Tensor) -> torch.Tensor:
    """det(d(x + u)/dx) by central differences (one-sided at the borders).

    The determinant is unit-free, so voxel units suffice for any spacing.

    Shapes
    ------
    displacement: ``(B, ndim, *S)``; returns ``(B, *S)``.
    """
    ndim = displacement.shape[1]
    spatial_dims = tuple(range(2, 2 + ndim))
    rows = []
    for component in range(ndim):
        field = displacement[:, component]
        grads = []
        for axis, dim in enumerate(spatial_dims):
            if displacement.shape[dim] > 1:
                grad = torch.gradient(field, dim=dim - 1)[0]
            else:
                grad = torch.zeros_like(field)
            grads.append(grad + (1.0 if axis == component else 0.0))
        rows.append(torch.stack(grads, dim=-1))
    return torch.linalg.det(torch.stack(rows, dim=-2))


def folding_percent(determinant: torch.Tensor) -> float:
    """Percentage of voxels whose Jacobian determinant is <= 0."""
    return float((determinant <= 0).to(torch.float64).mean() * 100.0)
