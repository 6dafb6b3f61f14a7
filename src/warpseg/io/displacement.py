"""Displacement fields in world units and their export in the ITK convention.

Our fields are ``u`` of shape ``(ndim, *S)`` in fixed voxel units: fixed voxel ``x`` reads the
moving image at world point ``A_f (x + u(x))``. ITK's displacement field maps a fixed physical
point ``p`` (LPS, mm) to ``p + d(p)`` in the moving image, so ``d = LPS(A_f[:, :ndim] u)``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from warpseg.io.volume import Volume


def displacement_in_world(displacement: np.ndarray, grid: Volume) -> np.ndarray:
    """World (RAS, mm) displacement vectors of a voxel-unit field.

    Shapes
    ------
    displacement: ``(ndim, *S)``; returns ``(*S, 3)``.
    """
    linear = grid.affine[:3, : grid.ndim]
    return np.einsum("wd,d...->...w", linear, displacement.astype(np.float64))


def write_itk_displacement(displacement: np.ndarray, grid: Volume, path: str | Path) -> Path:
    """Write a displacement field that ``SimpleITK.DisplacementFieldTransform`` reads.

    The file is a 3-component float64 vector image in LPS millimetres on the fixed grid (a 2D
    field becomes a one-slice 3D image), readable by 3D Slicer and ANTs.
    """
    import SimpleITK as sitk

    from warpseg.io.sitk_bridge import RAS_FROM_LPS, volume_to_sitk

    world = displacement_in_world(displacement, grid) @ RAS_FROM_LPS.T
    image = volume_to_sitk(grid, world.astype(np.float64))
    sitk.WriteImage(image, str(path), True)
    return Path(path)


def read_itk_displacement_transform(path: str | Path):
    """A ``SimpleITK.DisplacementFieldTransform`` from a displacement file written by warpseg."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path), sitk.sitkVectorFloat64)
    return sitk.DisplacementFieldTransform(image)
