"""Warping images and label maps with displacement fields (backward warping on the fixed grid).

Convention: a displacement ``u`` of shape ``(B, ndim, *S)`` in voxel units warps ``moving`` into
``moving(x + u(x))`` for every fixed-grid voxel ``x``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from warpseg.spatial.grids import identity_grid


def sample_at(image: torch.Tensor, coordinates: torch.Tensor, *, mode: str = "bilinear",
              padding: str = "zeros") -> torch.Tensor:
    """Sample ``image`` at voxel ``coordinates`` (of the image's own grid).

    Shapes
    ------
    image: ``(B, C, *S_in)``; coordinates: ``(B, ndim, *S_out)``; returns ``(B, C, *S_out)``.
    """
    ndim = coordinates.shape[1]
    if image.dim() != ndim + 2:
        raise ValueError(f"image of shape {tuple(image.shape)} does not match {ndim}D coordinates")
    sizes = torch.tensor(image.shape[2:], dtype=coordinates.dtype, device=coordinates.device)
    scale = torch.where(sizes > 1, 2.0 / (sizes - 1).clamp(min=1), torch.zeros_like(sizes))
    shape = (1, ndim) + (1,) * ndim
    normalised = coordinates * scale.view(shape) - (sizes > 1).to(coordinates.dtype).view(shape)
    grid = torch.movedim(normalised.flip(1), 1, -1)
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding, align_corners=True)


def warp_image(image: torch.Tensor, displacement: torch.Tensor, *, mode: str = "bilinear",
               padding: str = "zeros") -> torch.Tensor:
    """Warp an image already on the fixed grid by ``displacement``.

    Shapes
    ------
    image: ``(B, C, *S)``; displacement: ``(B, ndim, *S)``; returns ``(B, C, *S)``.
    """
    if image.shape[2:] != displacement.shape[2:]:
        raise ValueError(
            f"image grid {tuple(image.shape[2:])} differs from displacement grid {tuple(displacement.shape[2:])}"
        )
    grid = identity_grid(displacement.shape[2:], device=displacement.device, dtype=displacement.dtype)
    return sample_at(image, grid.unsqueeze(0) + displacement, mode=mode, padding=padding)


def warp_labels(labels: torch.Tensor, displacement: torch.Tensor, *, method: str = "nearest",
                num_labels: int | None = None) -> torch.Tensor:
    """Warp an integer label map.

    ``method="nearest"`` picks the nearest label; ``"onehot"`` warps each label's one-hot
    channel linearly and takes the arg-max (smoother boundaries, differentiable channels).

    Shapes
    ------
    labels: ``(B, 1, *S)`` integer; returns ``(B, 1, *S)`` of the same dtype.
    """
    if method == "nearest":
        warped = warp_image(labels.to(displacement.dtype), displacement, mode="nearest")
        return warped.round().to(labels.dtype)
    if method != "onehot":
        raise ValueError(f"unknown label warp method {method!r}; use 'nearest' or 'onehot'")
    ids = torch.unique(labels) if num_labels is None else torch.arange(num_labels, device=labels.device)
    onehot = torch.cat([(labels == value).to(displacement.dtype) for value in ids], dim=1)
    warped = warp_image(onehot, displacement, mode="bilinear")
    return ids[warped.argmax(dim=1, keepdim=True)].to(labels.dtype)


__all__ = ["sample_at", "warp_image", "warp_labels"]
