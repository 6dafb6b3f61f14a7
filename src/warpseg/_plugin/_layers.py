"""The one place that turns a :class:`~warpseg.io.Volume` into napari layer data and back.

World coordinates
-----------------
Layers get an ``affine`` that maps their data indices to world millimetres, so images of
different shapes, spacings and orientations overlay. napari's world axes are the RAS+ axes in
*reverse* order, ``(S, A, R)`` = ``(z, y, x)``: napari slices along its first axis, so a 3D
volume opens on axial slices, and a 2D axial slice shares the last two world axes with 3D
volumes.

napari slices a layer's data along the data axis that matches each world axis, so the data axes
must follow the world axes. The layer data is therefore the volume's array with its axes
reordered (a view, no copy): napari data axis ``d`` is the voxel axis that points most along
world axis ``d`` (:func:`napari_axes`). An oblique volume keeps its full affine; napari warns that
it draws 2D slices of it without the out-of-plane part of the rotation.

A 2D volume (one slice with a full 4x4 affine) needs a 3x3 affine. For each of its two voxel
axes we take the RAS axis its column points along most (the pair of distinct axes that fits
best), keep those two world rows, in reverse RAS order like in 3D, and drop the third (the
slice's offset along it). Two slices of the same plane therefore overlay exactly, whatever
their spacing, field of view or in-plane axis order; an oblique slice is shown as its
projection onto the nearest of the axial, coronal or sagittal planes.

The exact 4x4 affine and the label names travel in ``layer.metadata`` (keys ``AFFINE_KEY`` and
``LABEL_NAMES_KEY``). :func:`layer_data_to_volume` restores the volume's own axis order and that
affine, unless the layer has been moved since, in which case the moved geometry wins. A layer
without that metadata is written with its axes in RAS order (2D: an axial slice at S = 0).
"""
from __future__ import annotations

from itertools import permutations
from typing import TYPE_CHECKING, Any

import numpy as np

from warpseg.errors import InputError
from warpseg.io import Volume

if TYPE_CHECKING:
    import napari.layers
    import napari.types

AFFINE_KEY = "warpseg_affine"
LABEL_NAMES_KEY = "warpseg_label_names"
CONTRAST_PERCENTILES = (0.5, 99.5)
GEOMETRY_TOLERANCE = 1e-5


def napari_axes(affine: np.ndarray, ndim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(world_axes, voxel_axes)``: napari world axis ``d`` is RAS axis ``world_axes[d]`` (0 R,
    1 A, 2 S) and napari data axis ``d`` is voxel axis ``voxel_axes[d]``.

    Each voxel axis is matched to a distinct RAS axis so that the summed absolute direction
    cosines are largest; world axes are listed in reverse RAS order.
    """
    columns = np.asarray(affine, dtype=np.float64)[:3, :ndim]
    cosines = np.abs(columns / np.linalg.norm(columns, axis=0))
    ras_of_voxel = max(permutations(range(3), ndim),
                       key=lambda ras: sum(cosines[r, v] for v, r in enumerate(ras)))
    world_axes = tuple(sorted(ras_of_voxel, reverse=True))
    return world_axes, tuple(ras_of_voxel.index(r) for r in world_axes)


def napari_affine(volume: Volume) -> np.ndarray:
    """The ``(ndim + 1, ndim + 1)`` layer affine from napari data indices to napari world mm."""
    world_axes, voxel_axes = napari_axes(volume.affine, volume.ndim)
    matrix = np.eye(volume.ndim + 1)
    matrix[:-1, :-1] = volume.affine[np.ix_(world_axes, voxel_axes)]
    matrix[:-1, -1] = volume.affine[list(world_axes), 3]
    return matrix


def volume_to_layer_data(volume: Volume, name: str | None = None,
                         **layer_kwargs: Any) -> napari.types.FullLayerData:
    """A ``(data, attributes, layer_type)`` tuple: a Labels layer for label maps, else an Image.

    ``data`` is a transposed view of ``volume.array`` (see the module notes); ``layer_kwargs``
    (e.g. ``colormap``, ``blending``, ``visible``) override the defaults.
    """
    _, voxel_axes = napari_axes(volume.affine, volume.ndim)
    metadata: dict[str, Any] = {AFFINE_KEY: volume.affine.copy()}
    attributes: dict[str, Any] = {"affine": napari_affine(volume)}
    if name is not None:
        attributes["name"] = name
    if volume.is_labels:
        if volume.label_names:
            metadata[LABEL_NAMES_KEY] = dict(volume.label_names)
            attributes["features"] = _label_features(volume.label_names)
        attributes["opacity"] = 0.5
        layer_type = "labels"
    else:
        if "contrast_limits" not in layer_kwargs:  # percentiles of the whole volume: not for nothing
            attributes["contrast_limits"] = robust_contrast_limits(volume.array)
        attributes["colormap"] = "gray"
        layer_type = "image"
    attributes["metadata"] = metadata
    attributes.update(layer_kwargs)
    return np.transpose(volume.array, voxel_axes), attributes, layer_type


def layer_to_volume(layer: napari.layers.Layer) -> Volume:
    """The volume held by an Image or Labels layer, with its current world geometry."""
    data, attributes, layer_type = layer.as_layer_data_tuple()
    return layer_data_to_volume(data, attributes, layer_type)


def layer_data_to_volume(data: Any, attributes: dict[str, Any], layer_type: str) -> Volume:
    """Turn layer data and its attributes (as a napari writer receives them) into a volume.

    The layer's full transform (``affine`` after ``scale``, ``rotate``, ``shear`` and
    ``translate``) gives the geometry; the metadata affine gives the voxel axis order and, in 2D,
    the slice normal, and is returned exactly when the layer has not been moved.
    """
    if layer_type not in ("image", "labels"):
        raise InputError(f"cannot save a {layer_type} layer as a volume; pick an Image or Labels layer")
    array = _layer_array(data, attributes, attributes.get("name", "layer"))
    metadata = attributes.get("metadata") or {}
    reference = np.asarray(metadata.get(AFFINE_KEY, np.eye(4)), dtype=np.float64)
    if reference.shape != (4, 4):
        reference = np.eye(4)
    world_axes, voxel_axes = napari_axes(reference, array.ndim)
    affine = reference.copy()  # in 2D this keeps the slice normal and the out-of-plane row
    world = _data_to_world_matrix(attributes, array.ndim)
    affine[np.ix_(world_axes, voxel_axes)] = world[:-1, :-1]
    affine[list(world_axes), 3] = world[:-1, -1]
    if np.allclose(affine, reference, atol=GEOMETRY_TOLERANCE):
        affine = reference
    array = np.transpose(array, np.argsort(voxel_axes))
    is_labels = layer_type == "labels"
    if is_labels and not np.issubdtype(array.dtype, np.integer):
        array = np.rint(array).astype(np.int32)
    names = metadata.get(LABEL_NAMES_KEY) if is_labels else None
    label_names = {int(key): str(value) for key, value in names.items()} if names else None
    return Volume(array, affine, is_labels=is_labels, label_names=label_names)


def robust_contrast_limits(array: np.ndarray) -> tuple[float, float]:
    """Contrast limits from the 0.5 and 99.5 percentiles of (a subsample of) ``array``."""
    flat = np.asarray(array).ravel()
    step = max(1, flat.size // 1_000_000)
    low, high = (float(value) for value in np.percentile(flat[::step], CONTRAST_PERCENTILES))
    if high <= low:
        low, high = float(flat.min()), float(flat.max())
    return (low, high if high > low else low + 1.0)


def _label_features(label_names: dict[int, str]) -> dict[str, list]:
    ids = sorted(set(label_names) | {0})
    return {"index": ids, "name": [label_names.get(i, "background" if i == 0 else "") for i in ids]}


def _layer_array(data: Any, attributes: dict[str, Any], name: str) -> np.ndarray:
    if attributes.get("multiscale") or (isinstance(data, list | tuple) and data and hasattr(data[0], "shape")):
        data = data[0]  # the full-resolution level
    if attributes.get("rgb"):
        raise InputError(f"layer {name!r} is an RGB image; warpseg saves single-channel images only")
    array = np.asarray(data)
    if array.ndim not in (2, 3):
        raise InputError(
            f"layer {name!r} has {array.ndim} dimensions (shape {array.shape}); "
            "warpseg saves 2D or 3D single-channel layers"
        )
    return array


def _data_to_world_matrix(attributes: dict[str, Any], ndim: int) -> np.ndarray:
    """The layer's full data-to-world matrix: ``affine @ (translate, rotate, shear, scale)``."""
    affine = np.asarray(attributes.get("affine", np.eye(ndim + 1)), dtype=np.float64)
    keys = ("scale", "translate", "rotate", "shear")
    if all(attributes.get(key) is None for key in keys):
        return affine
    from napari.utils.transforms import Affine

    composite = Affine(ndim=ndim, **{key: attributes[key] for key in keys if attributes.get(key) is not None})
    return affine @ composite.affine_matrix
