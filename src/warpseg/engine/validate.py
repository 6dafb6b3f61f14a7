"""Checks on a registration's inputs, each failing with a message that says what to do."""
from __future__ import annotations

import numpy as np

from warpseg.errors import GeometryError, InputError
from warpseg.io.volume import Volume


def check_pair(moving: Volume, fixed: Volume, moving_labels: Volume | None,
               fixed_labels: Volume | None) -> None:
    """Raise a :class:`~warpseg.errors.WarpsegError` when the inputs cannot be registered."""
    for name, image in (("moving", moving), ("fixed", fixed)):
        check_image(image, name)
    if moving.ndim != fixed.ndim:
        raise GeometryError(
            f"the moving image is {moving.ndim}D but the fixed image is {fixed.ndim}D; "
            "give two 2D images or two 3D volumes"
        )
    for name, labels, image in (("moving", moving_labels, moving), ("fixed", fixed_labels, fixed)):
        if labels is not None:
            check_labels(labels, image, name)


def check_image(image: Volume, name: str) -> None:
    """An image must be a finite, non-constant grey-level volume."""
    if image.is_labels:
        raise InputError(f"the {name} image looks like a label map; give the intensity image instead")
    array = image.array
    if min(array.shape) < 4:
        raise InputError(f"the {name} image has shape {array.shape}; each axis needs at least 4 voxels")
    if not np.isfinite(array).all():
        raise InputError(f"the {name} image has NaN or infinite voxels; replace them and retry")
    if array.min() == array.max():
        raise InputError(f"the {name} image is constant; check you picked the right image")


def check_labels(labels: Volume, image: Volume, name: str) -> None:
    """Labels must be integer and lie on their image's grid."""
    if not np.issubdtype(labels.array.dtype, np.integer):
        raise InputError(f"the {name} labels are not integer; give a label map (whole-number labels)")
    if not labels.same_grid(image):
        raise GeometryError(
            f"the {name} labels (shape {labels.shape}) are not on the {name} image's grid "
            f"(shape {image.shape}) or their affines differ; resample the labels onto the image first"
        )


def check_mask(mask: Volume, image: Volume, name: str) -> None:
    """A mask is a label map (non-zero: inside) on its image's grid, with something inside."""
    if not np.issubdtype(mask.array.dtype, np.integer) and mask.array.dtype != bool:
        raise InputError(f"the {name} mask is not integer; give a mask (0 outside, non-zero inside)")
    if not mask.same_grid(image):
        raise GeometryError(
            f"the {name} mask (shape {mask.shape}) is not on the {name} image's grid (shape {image.shape}) "
            "or their affines differ; resample the mask onto the image first")
    if not np.any(mask.array):
        raise InputError(f"the {name} mask is empty (all zero); give a mask that covers what to register")
