"""Stationary-velocity integration and composition of displacement fields."""
from __future__ import annotations

import torch

from warpseg.spatial.warp import warp_image


def compose_displacements(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """Displacement of ``(id + outer) o (id + inner)``: first ``inner``, then ``outer``.

    Warping by the result equals warping by ``outer`` and then by ``inner``
    (``m(x + inner(x) + outer(x + inner(x)))``).

    Shapes
    ------
    outer, inner: ``(B, ndim, *S)``; returns ``(B, ndim, *S)``.
    """
    return inner + warp_image(outer, inner, mode="bilinear", padding="border")


def integrate_velocity(velocity: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Exponentiate a stationary velocity field by scaling and squaring.

    Shapes
    ------
    velocity: ``(B, ndim, *S)`` in voxel units; returns the displacement ``(B, ndim, *S)``.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    displacement = velocity / (2**steps)
    for _ in range(steps):
        displacement = compose_displacements(displacement, displacement)
    return displacement
