"""Landmarks: corresponding points in world millimetres, read from CSV, and the target registration error.

A landmark file is a CSV with one point per row, ``x, y, z`` in world millimetres (RAS+, the frame
of every :class:`~warpseg.io.volume.Volume` affine), optionally after one header row. The moving
and fixed files list corresponding points in the same order. For 2D images give the points' full
world coordinates too: they must lie in the fixed slice (within half its thickness).

The target registration error (TRE) of a point pair is the distance between the moving landmark
and the fixed landmark mapped through the registration: fixed voxel ``x`` reads the moving image
at world point ``A_f (x + u(x))``, so fixed landmark ``p`` maps to ``p + A_f[:, :ndim] u(x_p)``
(``u`` interpolated linearly at the landmark's voxel position ``x_p``). Before registration
(the moving image resampled onto the fixed grid by world coordinates) it maps to ``p`` itself.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from warpseg.errors import GeometryError, InputError
from warpseg.io.volume import Volume

INSIDE_TOLERANCE = 0.5
"""How far (voxels) beyond the outermost voxel centres a fixed landmark may lie: the voxel's own half-width."""


@dataclass(frozen=True)
class Landmarks:
    """Corresponding points in world mm (RAS+): ``moving[i]`` is where ``fixed[i]`` lies in the moving image.

    Shapes
    ------
    moving, fixed: ``(N, 3)`` float64.
    """

    moving: np.ndarray
    fixed: np.ndarray

    def __post_init__(self) -> None:
        for name in ("moving", "fixed"):
            points = np.asarray(getattr(self, name), dtype=np.float64)
            if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
                raise InputError(f"{name} landmarks have shape {points.shape}; expected (N, 3) world points in mm")
            object.__setattr__(self, name, points)
        if len(self.moving) != len(self.fixed):
            raise InputError(f"{len(self.moving)} moving landmarks but {len(self.fixed)} fixed landmarks; "
                             "both files must list the same points in the same order")

    def __len__(self) -> int:
        return len(self.fixed)


def read_landmark_csv(path: str | Path) -> np.ndarray:
    """The points of one landmark CSV file, ``(N, 3)`` world mm; a clear error for malformed files."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such landmark file; give a CSV of x, y, z world coordinates in mm")
    with path.open(newline="") as handle:
        rows = [(number, [cell.strip() for cell in row]) for number, row in enumerate(csv.reader(handle), 1)
                if any(cell.strip() for cell in row)]
    points = []
    for position, (number, row) in enumerate(rows):
        if len(row) != 3:
            raise InputError(f"{path}, line {number}: {len(row)} columns; each row needs 3 (x, y, z in mm, RAS)")
        try:
            points.append([float(cell) for cell in row])
        except ValueError:
            if position == 0:  # a header row
                continue
            raise InputError(f"{path}, line {number}: {','.join(row)!r} is not three numbers") from None
    if not points:
        raise InputError(f"{path}: no landmarks; give one x, y, z row (world mm) per point")
    array = np.asarray(points, dtype=np.float64)
    if not np.isfinite(array).all():
        raise InputError(f"{path}: landmarks must be finite numbers")
    return array


def read_landmarks(moving_path: str | Path, fixed_path: str | Path) -> Landmarks:
    """Corresponding moving and fixed landmarks from two CSV files (same points, same order)."""
    return Landmarks(moving=read_landmark_csv(moving_path), fixed=read_landmark_csv(fixed_path))


def landmark_voxels(points: np.ndarray, volume: Volume) -> np.ndarray:
    """Voxel coordinates of world points on ``volume``'s grid, ``(N, 3)``: for a 2D volume the
    third is the distance from the slice plane in slice thicknesses."""
    inverse = np.linalg.inv(volume.affine)
    return points @ inverse[:3, :3].T + inverse[:3, 3]


def check_landmarks_inside(landmarks: Landmarks, fixed: Volume) -> None:
    """Raise a :class:`~warpseg.errors.GeometryError` if a fixed landmark lies outside the fixed image."""
    voxels = landmark_voxels(landmarks.fixed, fixed)
    upper = np.array(list(fixed.shape) + [1] * (3 - fixed.ndim), dtype=np.float64) - 1
    outside = np.any((voxels < -INSIDE_TOLERANCE) | (voxels > upper + INSIDE_TOLERANCE), axis=1)
    if outside.any():
        index = int(np.argmax(outside))
        raise GeometryError(
            f"fixed landmark {index + 1} at {np.round(landmarks.fixed[index], 2).tolist()} mm lies outside the "
            f"fixed image (voxel {np.round(voxels[index], 1).tolist()}, shape {fixed.shape}); landmarks are "
            "world (RAS) mm coordinates, in the same order in both files")


def target_registration_errors(landmarks: Landmarks, displacement: np.ndarray,
                               fixed: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Per-point TRE in mm before and after registration (see the module docstring).

    Shapes
    ------
    displacement: ``(ndim, *fixed.shape)`` in fixed voxel units; returns two ``(N,)`` arrays.
    """
    from scipy.ndimage import map_coordinates

    ndim = fixed.ndim
    voxels = landmark_voxels(landmarks.fixed, fixed)[:, :ndim]
    voxels = np.clip(voxels, 0, np.asarray(fixed.shape, dtype=np.float64) - 1).T
    field = np.stack([map_coordinates(np.asarray(component, np.float64), voxels, order=1, mode="nearest")
                      for component in displacement], axis=1)  # (N, ndim) voxels
    mapped = landmarks.fixed + field @ fixed.affine[:3, :ndim].T
    before = np.linalg.norm(landmarks.fixed - landmarks.moving, axis=1)
    after = np.linalg.norm(mapped - landmarks.moving, axis=1)
    return before, after


def landmark_metrics(landmarks: Landmarks, displacement: np.ndarray, fixed: Volume) -> dict[str, Any]:
    """``tre_mm_before`` / ``tre_mm_after`` (means), the after-median and -max, and per-point lists."""
    before, after = target_registration_errors(landmarks, displacement, fixed)
    return {
        "tre_mm_before": float(before.mean()),
        "tre_mm_after": float(after.mean()),
        "tre_mm_after_median": float(np.median(after)),
        "tre_mm_after_max": float(after.max()),
        "landmarks": {"count": len(landmarks), "tre_mm_before": [round(float(v), 4) for v in before],
                      "tre_mm_after": [round(float(v), 4) for v in after]},
    }
