"""Conversion between :class:`Volume` (RAS affine, NIfTI index order) and SimpleITK images (LPS).

This is the only module that reorders axes or flips between RAS and LPS.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from warpseg.io.volume import Volume

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])


def lps_direction_spacing_origin(affine: np.ndarray, ndim: int = 3):
    """Split a RAS voxel-to-world affine into ITK (LPS) direction, spacing and origin."""
    matrix = RAS_FROM_LPS @ affine[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    direction = matrix / spacing
    origin = RAS_FROM_LPS @ affine[:3, 3]
    if ndim == 2:
        return direction[:2, :2], spacing[:2], origin[:2]
    return direction, spacing, origin


def volume_to_sitk(volume: Volume, array: np.ndarray | None = None) -> sitk.Image:
    """A 3D SimpleITK image with the volume's geometry (a 2D volume becomes one slice).

    ``array`` may replace the voxel data; it may carry a trailing vector axis.
    """
    data = volume.array if array is None else array
    spatial = data.shape[: volume.ndim]
    is_vector = data.ndim > volume.ndim
    if volume.ndim == 2:
        data = data.reshape(spatial + (1,) + data.shape[2:])
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    # SimpleITK arrays are (z, y, x[, component]).
    order = (2, 1, 0, 3) if is_vector else (2, 1, 0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data, order)), isVector=is_vector)
    direction, spacing, origin = lps_direction_spacing_origin(volume.affine)
    image.SetDirection(direction.flatten().tolist())
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(origin.tolist())
    return image


def affine_from_sitk(image: sitk.Image) -> np.ndarray:
    """The RAS voxel-to-world affine of a 2D or 3D SimpleITK image (2D gets a unit normal)."""
    dim = image.GetDimension()
    direction = np.array(image.GetDirection()).reshape(dim, dim)
    spacing = np.array(image.GetSpacing())
    origin = np.array(image.GetOrigin())
    if dim == 2:
        direction = np.block([[direction, np.zeros((2, 1))], [np.zeros((1, 2)), np.ones((1, 1))]])
        spacing = np.append(spacing, 1.0)
        origin = np.append(origin, 0.0)
    affine = np.eye(4)
    affine[:3, :3] = RAS_FROM_LPS @ (direction * spacing)
    affine[:3, 3] = RAS_FROM_LPS @ origin
    return affine


def sitk_to_array(image: sitk.Image) -> np.ndarray:
    """Voxel data in NIfTI index order (x, y[, z]); a vector axis, if any, stays last."""
    data = sitk.GetArrayFromImage(image)
    spatial = image.GetDimension()
    order = tuple(reversed(range(spatial))) + tuple(range(spatial, data.ndim))
    return np.transpose(data, order)
