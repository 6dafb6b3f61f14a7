"""The one object that carries an image and its world geometry across every boundary."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class Volume:
    """An image or label map and the affine that places its voxels in world millimetres.

    Parameters
    ----------
    array
        Voxel data indexed ``(i, j)`` for 2D or ``(i, j, k)`` for 3D (NIfTI index order).
    affine
        4x4 matrix from voxel index ``(i, j, k, 1)`` to RAS+ world coordinates in mm. A 2D
        volume keeps the full 4x4 matrix: its third column is the slice normal and thickness.
    is_labels
        True for integer label maps (nearest-neighbour resampling, integer output).
    label_names
        Optional ``{label id: name}`` for label maps.
    """

    array: np.ndarray
    affine: np.ndarray
    is_labels: bool = False
    label_names: dict[int, str] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
        if self.array.ndim not in (2, 3):
            raise ValueError(f"a volume must be 2D or 3D, got an array of shape {self.array.shape}")
        object.__setattr__(self, "affine", affine)

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return self.array.ndim

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along each array axis."""
        return np.linalg.norm(self.affine[:3, : self.ndim], axis=0)

    def with_array(self, array: np.ndarray, *, is_labels: bool | None = None) -> "Volume":
        """A volume on the same grid holding other data."""
        labels = self.is_labels if is_labels is None else is_labels
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from the grid shape {self.array.shape}")
        return replace(self, array=array, is_labels=labels, label_names=self.label_names if labels else None)

    def same_grid(self, other: "Volume", tolerance: float = 1e-3) -> bool:
        """True when both volumes have the same shape and (within ``tolerance`` mm) the same affine."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=tolerance))

    def voxel_to_world(self, points: np.ndarray) -> np.ndarray:
        """Map voxel coordinates ``(N, ndim)`` to world coordinates ``(N, 3)`` in mm."""
        points = np.asarray(points, dtype=np.float64)
        return points @ self.affine[:3, : self.ndim].T + self.affine[:3, 3]

    def world_to_voxel(self, points: np.ndarray) -> np.ndarray:
        """Map world coordinates ``(N, 3)`` in mm to voxel coordinates ``(N, ndim)``."""
        inverse = np.linalg.inv(self.affine)
        points = np.asarray(points, dtype=np.float64)
        return (points @ inverse[: self.ndim, :3].T + inverse[: self.ndim, 3])
