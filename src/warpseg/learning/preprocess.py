"""Bringing any input grid to a model's grid and the model's field back to the input grid."""
from __future__ import annotations

import math
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


def labels_on_native_grid(probabilities: torch.Tensor, grid: GridMap, chunk: int = 65536) -> torch.Tensor:
    """The argmax of :func:`probabilities_to_native_grid`, without resizing every class everywhere.

    Linear interpolation weights are non-negative, so where all corners of a model-grid cell share
    their argmax, every native voxel inside the cell has that argmax too. Only voxels in cells whose
    corners disagree (label boundaries, about an eighth of a brain) are interpolated, a chunk at a time.

    Shapes
    ------
    probabilities: ``(1, L, *padded_shape)``; returns ``native_shape`` (int64).
    """
    cropped = grid.crop(probabilities)[0]
    coarse = class_argmax(cropped)
    if grid.resized_shape == grid.native_shape:
        return coarse
    starts, weights = zip(*(_linear_taps(n, r, cropped.device)
                            for n, r in zip(grid.native_shape, grid.resized_shape)))
    corners = [coarse[tuple(slice(bit, size - 1 + bit) for bit, size in zip(bits, coarse.shape))]
               for bits in _corner_offsets(coarse.ndim)]
    mixed_cells = torch.stack([corner != corners[0] for corner in corners[1:]]).any(0)
    labels, mixed = (_take_along_axes(cells, starts) for cells in (coarse, mixed_cells))
    by_cell = cropped.reshape(cropped.shape[0], -1).T  # (cells, L): one gather per corner
    flat_labels = labels.view(-1)
    for block in mixed.view(-1).nonzero()[:, 0].split(chunk):
        voxel = [(block // stride) % size for stride, size in zip(labels.stride(), labels.shape)]
        cell = sum(start[index] * stride for start, index, stride in zip(starts, voxel, coarse.stride()))
        upper = [weight[index] for weight, index in zip(weights, voxel)]
        lower = [1 - weight for weight in upper]
        blended = torch.zeros(len(block), cropped.shape[0], dtype=cropped.dtype, device=cropped.device)
        for bits in _corner_offsets(coarse.ndim):
            weight = math.prod(u if bit else l for bit, u, l in zip(bits, upper, lower))
            offset = sum(bit * stride for bit, stride in zip(bits, coarse.stride()))
            blended.addcmul_(weight[:, None], by_cell[cell + offset])
        flat_labels[block] = blended.argmax(1)
    return labels


def class_argmax(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(0)`` for ``(L, *S)``, by a pass over the classes (several times faster on CPU
    than torch's reduction over the strided class axis; ties go to the lower class, as there)."""
    best, labels = scores[0].clone(), torch.zeros(scores.shape[1:], dtype=torch.long, device=scores.device)
    for label in range(1, scores.shape[0]):
        better = scores[label] > best
        best = torch.where(better, scores[label], best)
        labels.masked_fill_(better, label)
    return labels


def _linear_taps(native: int, resized: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per native index along one axis: the lower model-grid neighbour and the weight of the upper one
    (``align_corners=True``, as :func:`_resize`)."""
    position = torch.arange(native, dtype=torch.float64, device=device) * ((resized - 1) / max(native - 1, 1))
    start = position.floor().long().clamp(max=resized - 2)
    return start, (position - start).float()


def _take_along_axes(array: torch.Tensor, indices) -> torch.Tensor:
    """``array[i0][:, i1]...``: the entry of each native voxel's cell, one axis at a time."""
    for axis, index in enumerate(indices):
        array = array.index_select(axis, index)
    return array


def _corner_offsets(ndim: int) -> list[tuple[int, ...]]:
    """The ``2**ndim`` corners of a cell as 0/1 offsets."""
    return [tuple((index >> axis) & 1 for axis in range(ndim)) for index in range(2 ** ndim)]
