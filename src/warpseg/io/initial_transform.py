"""An initial transform from another tool (ANTs, FSL via c3d, 3D Slicer, SimpleITK) to start from.

ITK's convention, which all of those write: the transform maps a *fixed* physical point (LPS, mm)
to the *moving* point it reads. Registration then starts from the moving image resampled through
it, and the result's field is the whole map, initial transform included.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from warpseg.errors import InputError
from warpseg.io.volume import Volume

def read_initial_transform(path: str | Path):
    """A ``SimpleITK.Transform`` from an ITK transform file; it must be 3D and invertible."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such transform file")
    try:
        transform = sitk.ReadTransform(str(path))
    except RuntimeError as error:
        raise InputError(f"{path}: not an ITK transform file (.tfm, .txt, .mat, .h5: affine, rigid, ANTs .mat, "
                         f"Slicer .h5, ...): {str(error).strip().splitlines()[-1]}") from None
    if transform.GetDimension() != 3:
        raise InputError(f"{path}: a {transform.GetDimension()}D transform; initial transforms are 3D")
    try:
        transform.GetInverse()
    except RuntimeError:
        raise InputError(f"{path}: this {transform.GetName()} has no inverse; give an affine or rigid "
                         "transform (resample the moving image through a deformable one first)") from None
    return transform


def check_initial_transform(transform, fixed: Volume) -> None:
    """Initial transforms are 3D; a 2D pair gets a clear error."""
    if fixed.ndim != 3:
        raise InputError(f"an initial transform needs 3D images; these are {fixed.ndim}D")


def transform_displacement(transform, grid: Volume):
    """``transform`` as a displacement in ``grid``'s voxel units: voxel ``x`` maps to ``x + d(x)``.

    Shapes
    ------
    returns a float32 tensor ``(1, 3, *grid.shape)``.
    """
    import SimpleITK as sitk
    import torch

    from warpseg.io.sitk_bridge import RAS_FROM_LPS, lps_direction_spacing_origin, sitk_to_array

    direction, spacing, origin = lps_direction_spacing_origin(grid.affine)
    field = sitk.TransformToDisplacementField(
        transform, sitk.sitkVectorFloat64, [int(size) for size in grid.shape], origin.tolist(),
        spacing.tolist(), direction.flatten().tolist())
    world = sitk_to_array(field) @ RAS_FROM_LPS.T  # (*S, 3) RAS mm
    voxels = np.einsum("ij,...j->i...", np.linalg.inv(grid.affine[:3, :3]), world)
    return torch.as_tensor(voxels.astype(np.float32))[None]


class InitialAlignment:
    """An initial transform on a pair's grids: where registration starts, and how to add it back.

    ``forward`` is the transform on the fixed grid, ``backward`` its inverse on the moving grid, both
    displacements in their grid's voxel units (:func:`transform_displacement`).
    """

    def __init__(self, transform, moving: Volume, fixed: Volume) -> None:
        check_initial_transform(transform, fixed)
        self.transform, self.moving = transform, moving
        self.forward = transform_displacement(transform, fixed)

    @cached_property
    def backward(self):
        """Only joint methods' moving segmentations need it, so it is made on first use."""
        return transform_displacement(self.transform.GetInverse(), self.moving)

    def start(self, volume: Volume | None, fixed: Volume) -> Volume | None:
        """A moving image (or label map) resampled onto the fixed grid through the transform."""
        from warpseg.spatial import resample_volume

        return None if volume is None else resample_volume(volume, fixed, self.forward)

    def total(self, displacement: np.ndarray) -> np.ndarray:
        """The whole map of a field found from the start: first the field, then the initial transform.

        Shapes
        ------
        displacement: ``(3, *S)`` fixed voxel units; returns the same.
        """
        import torch

        from warpseg.spatial import compose_displacements

        field = torch.as_tensor(np.asarray(displacement, dtype=np.float32))[None]
        return compose_displacements(self.forward, field)[0].numpy()

    def back_to_moving(self, volume: Volume) -> Volume:
        """A label map (or image) predicted on the start grid, back on the moving image's own grid."""
        from warpseg.spatial import resample_volume

        return resample_volume(volume, self.moving, self.backward)
