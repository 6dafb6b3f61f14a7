"""Bringing any input grid to a model's grid and the model's field back to the input grid."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its inputs; stored in every checkpoint.

    Parameters
    ----------
    target_spacing
        Voxel size (mm) the model was trained at; inputs are resized to it. None keeps the input's.
    size_multiple
        Spatial sizes are zero-padded (centred) up to a multiple of this.
    normalisation
        Intensity normalisation applied before the model (the engine's robust min-max to [0, 1]).
    """

    target_spacing: float | None = None
    size_multiple: int = 16
    normalisation: str = "percentile 0.5-99.5 to [0, 1]"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GridMap:
    """Where the native grid sits inside the model grid."""

    native_shape: tuple[int, ...]
    resized_shape: tuple[int, ...]
    padded_shape: tuple[int, ...]
    pad_before: tuple[int, ...]

    def crop(self, tensor: torch.Tensor) -> torch.Tensor:
        index = (slice(None), slice(None)) + tuple(
            slice(start, start + size) for start, size in zip(self.pad_before, self.resized_shape))
        return tensor[index]


def plan_grid(native_shape, spacing, preprocessing: Preprocessing) -> GridMap:
    """The resize and padding that bring a grid of ``native_shape`` and ``spacing`` to the model grid."""
    if preprocessing.target_spacing is None:
        resized = tuple(native_shape)
    else:
        resized = tuple(max(2, round(size * step / preprocessing.target_spacing))
                        for size, step in zip(native_shape, spacing))
    multiple = preprocessing.size_multiple
    padded = tuple(-(-size // multiple) * multiple for size in resized)
    return GridMap(tuple(native_shape), resized, padded, tuple((p - r) // 2 for p, r in zip(padded, resized)))


def image_to_model_grid(image: torch.Tensor, grid: GridMap, *, mode: str = "linear") -> torch.Tensor:
    """Resize then zero-pad an image (or label map with ``mode="nearest"``).

    Shapes
    ------
    image: ``(B, C, *native_shape)``; returns ``(B, C, *padded_shape)``.
    """
    if grid.resized_shape != grid.native_shape:
        image = _resize(image, grid.resized_shape, mode)
    padding = []
    for before, size, padded in zip(grid.pad_before, grid.resized_shape, grid.padded_shape):
        padding = [before, padded - size - before] + padding  # F.pad wants the last axis first
    return F.pad(image, padding)


def field_to_native_grid(displacement: torch.Tensor, grid: GridMap) -> torch.Tensor:
    """Crop and resize a model-grid displacement to the native grid, rescaling its voxel units.

    Shapes
    ------
    displacement: ``(B, ndim, *padded_shape)``; returns ``(B, ndim, *native_shape)``.
    """
    field = grid.crop(displacement)
    if grid.resized_shape == grid.native_shape:
        return field
    scale = torch.tensor([(n - 1) / max(r - 1, 1) for n, r in zip(grid.native_shape, grid.resized_shape)],
                         dtype=field.dtype, device=field.device)
    field = _resize(field, grid.native_shape, "linear")
    return field * scale.view(1, -1, *([1] * len(grid.native_shape)))


def _resize(tensor: torch.Tensor, shape, mode: str) -> torch.Tensor:
    if mode == "nearest":
        return F.interpolate(tensor.float(), size=shape, mode="nearest").to(tensor.dtype)
    interpolation = "bilinear" if len(shape) == 2 else "trilinear"
    return F.interpolate(tensor, size=shape, mode=interpolation, align_corners=True)


def probabilities_to_native_grid(probabilities: torch.Tensor, grid: GridMap) -> torch.Tensor:
    """Crop and linearly resize class probabilities (or logits) from the model grid to the native grid.

    Take the argmax afterwards for labels: resampling probabilities, not labels, keeps boundaries
    smooth when the model grid is coarser than the input.

    Shapes
    ------
    probabilities: ``(B, L, *padded_shape)``; returns ``(B, L, *native_shape)``.
    """
    cropped = grid.crop(probabilities)
    if grid.resized_shape == grid.native_shape:
        return cropped
    return _resize(cropped, grid.native_shape, "linear")
