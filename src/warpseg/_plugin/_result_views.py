"""What a registration result looks like in the viewer: layer data, all on the fixed grid.

Everything here is numpy (no napari import), so it runs in the worker thread and in tests.

Layer names are ``"<method>: <view>"`` so each method's layers sort together and a re-run
replaces them. Vector overlays (grid lines and glyphs) are napari ``Vectors`` data in the
fixed layer's *data* coordinates (napari axis order, see ``_layers``) with the fixed layer's
affine; a grid line is drawn as short segments between its points pushed through the field,
``x -> x + u(x)``: where each fixed-grid point samples the moving image.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from warpseg._plugin._layers import napari_affine, napari_axes, volume_to_layer_data
from warpseg.io import Volume

if TYPE_CHECKING:
    from warpseg.engine import RegistrationResult

GRID_SPACING = 8        # voxels between grid lines in a slice
GRID_STEP = 2           # voxels between the points that draw one grid line
GLYPH_SPACING = 8       # voxels between displacement glyphs in a slice
LATTICE_SPACING = 24    # voxels between lines of the 3D lattice
LATTICE_STEP = 4
CHECKER_BLOCKS = 8      # checkerboard squares along each axis
FOLD_COLOURS = {0: "transparent", 1: "red", None: "transparent"}
VIEWS = ("warped", "warped labels", "checkerboard", "difference", "displacement (mm)",
         "Jacobian determinant", "folds", "grid", "glyphs", "lattice")


def layer_name(method: str, view: str) -> str:
    return f"{method}: {view}"


def result_layers(result: RegistrationResult) -> list[tuple]:
    """Layer data tuples of every static view of ``result`` (the slice overlays come separately)."""
    fixed, method = result.fixed, result.method
    determinant = result.jacobian.array
    folds = fixed.with_array((determinant <= 0).astype(np.uint8), is_labels=True)
    magnitude = fixed.with_array(np.linalg.norm(result.displacement_mm(), axis=-1).astype(np.float32), is_labels=False)
    warped, reference = _unit_range(result.warped.array), _unit_range(fixed.array)
    largest = float(np.percentile(magnitude.array, 99.5)) or 1.0
    layers = [
        volume_to_layer_data(result.warped, layer_name(method, "warped"), colormap="magenta", blending="additive"),
        volume_to_layer_data(fixed.with_array(checkerboard(reference, warped), is_labels=False),
                             layer_name(method, "checkerboard"), visible=False),
        volume_to_layer_data(fixed.with_array(warped - reference, is_labels=False), layer_name(method, "difference"),
                             colormap="bwr", contrast_limits=(-0.5, 0.5), visible=False),
        volume_to_layer_data(magnitude, layer_name(method, "displacement (mm)"), colormap="magma",
                             contrast_limits=(0.0, largest), visible=False),
        volume_to_layer_data(result.jacobian, layer_name(method, "Jacobian determinant"), colormap="PiYG",
                             contrast_limits=(0.0, 2.0), visible=False),  # diverging, white at det = 1
        volume_to_layer_data(folds, layer_name(method, "folds"), colormap=FOLD_COLOURS, opacity=1.0),
    ]
    if result.warped_labels is not None:
        layers.insert(1, volume_to_layer_data(result.warped_labels, layer_name(method, "warped labels"), opacity=0.4))
    for name, volume in sorted(result.segmentations.items()):  # joint methods: their own label maps, named
        layers.append(volume_to_layer_data(volume, layer_name(method, name.replace("_", " ")), opacity=0.4,
                                           visible=False))
    if fixed.ndim == 3:
        layers.append((lattice_vectors(result), _vector_attributes(fixed, layer_name(method, "lattice"),
                                                                    "yellow", visible=False), "vectors"))
    return layers


def slice_overlays(result: RegistrationResult, axis: int | None = None, index: int = 0) -> list[tuple]:
    """The grid and glyph Vectors layers for one slice (``axis``/``index`` in napari data axes; 2D: None)."""
    fixed, method = result.fixed, result.method
    return [
        (grid_vectors(result, axis, index), _vector_attributes(fixed, layer_name(method, "grid"), "yellow"), "vectors"),
        (glyph_vectors(result, axis, index), {**_vector_attributes(fixed, layer_name(method, "glyphs"), "cyan",
                                                                   visible=False), "vector_style": "arrow"}, "vectors"),
    ]


def data_displacement(result: RegistrationResult) -> np.ndarray:
    """The displacement in napari data axes: components and spatial axes reordered, ``(ndim, *S')``."""
    _, voxel_axes = napari_axes(result.fixed.affine, result.fixed.ndim)
    field = np.transpose(result.displacement, (0, *(1 + v for v in voxel_axes)))
    return field[list(voxel_axes)]


def grid_vectors(result: RegistrationResult, axis: int | None, index: int,
                 spacing: int = GRID_SPACING, step: int = GRID_STEP) -> np.ndarray:
    """Grid lines of one slice pushed through the in-plane displacement, as segments ``(N, 2, ndim)``."""
    field, plane_axes = _slice_field(result, axis, index)
    segments = []
    for line_axis in range(2):  # lines running along plane axis 0, then along plane axis 1
        across = 1 - line_axis
        lines = np.arange(0, field.shape[1 + across], spacing)
        points = np.arange(0, field.shape[1 + line_axis], step)
        coordinates = np.zeros((2, len(lines), len(points)))
        coordinates[across] = lines[:, None]
        coordinates[line_axis] = points[None, :]
        moved = coordinates + _sample(field, coordinates)
        starts, ends = moved[:, :, :-1], moved[:, :, 1:]
        segments.append(np.stack([starts.reshape(2, -1).T, (ends - starts).reshape(2, -1).T], axis=1))
    return _embed(np.concatenate(segments), plane_axes, axis, index, result.fixed.ndim)


def glyph_vectors(result: RegistrationResult, axis: int | None, index: int, spacing: int = GLYPH_SPACING) -> np.ndarray:
    """In-plane displacement arrows on a coarse grid of one slice, ``(N, 2, ndim)``."""
    field, plane_axes = _slice_field(result, axis, index)
    rows, cols = (np.arange(spacing // 2, size, spacing) for size in field.shape[1:])
    grid = np.stack(np.meshgrid(rows, cols, indexing="ij")).reshape(2, -1)
    vectors = field[:, grid[0], grid[1]]
    return _embed(np.stack([grid.T, vectors.T], axis=1).astype(np.float64), plane_axes, axis, index, result.fixed.ndim)


def lattice_vectors(result: RegistrationResult, spacing: int = LATTICE_SPACING, step: int = LATTICE_STEP) -> np.ndarray:
    """A 3D lattice of lines pushed through the full displacement, as segments ``(N, 2, 3)``."""
    field = data_displacement(result)
    shape = field.shape[1:]
    segments = []
    for line_axis in range(3):
        axes = [np.arange(0, size, spacing) for size in shape]
        axes[line_axis] = np.arange(0, shape[line_axis], step)
        coordinates = np.stack(np.meshgrid(*axes, indexing="ij")).astype(np.float64)
        moved = coordinates + _sample(field, coordinates)
        moved = np.moveaxis(moved, 1 + line_axis, -1)  # points of one line last
        starts, ends = moved[..., :-1], moved[..., 1:]
        segments.append(np.stack([starts.reshape(3, -1).T, (ends - starts).reshape(3, -1).T], axis=1))
    return np.concatenate(segments)


def checkerboard(first: np.ndarray, second: np.ndarray, blocks: int = CHECKER_BLOCKS) -> np.ndarray:
    """``first`` and ``second`` in alternating squares (cubes in 3D), ``blocks`` along each axis."""
    parity = sum(np.floor(np.arange(size) * blocks / size).astype(int).reshape(
        [-1 if a == axis else 1 for a in range(first.ndim)]) for axis, size in enumerate(first.shape)) % 2
    return np.where(parity == 0, first, second).astype(np.float32)


def preview_layer(preview: np.ndarray, fixed: Volume, name: str, **layer_kwargs: Any) -> tuple:
    """A low-resolution live preview (``S'`` in fixed voxel order, cells spanning the fixed image's
    extent) stretched over the fixed grid; ``layer_kwargs`` (e.g. ``contrast_limits``) override."""
    scale = np.diag([*(s / p for s, p in zip(fixed.shape, preview.shape)), 1.0])
    offset = np.eye(fixed.ndim + 1)
    offset[:-1, -1] = [(s / p - 1) / 2 for s, p in zip(fixed.shape, preview.shape)]
    coarse = Volume(preview.astype(np.float32), fixed.affine @ _embed_matrix(offset @ scale, fixed.ndim))
    return volume_to_layer_data(coarse, name, **{"colormap": "magenta", "blending": "additive", **layer_kwargs})


def _embed_matrix(matrix: np.ndarray, ndim: int) -> np.ndarray:
    if ndim == 3:
        return matrix
    full = np.eye(4)
    full[:2, :2], full[:2, 3] = matrix[:2, :2], matrix[:2, 2]
    return full


def _slice_field(result: RegistrationResult, axis: int | None, index: int) -> tuple[np.ndarray, list[int]]:
    field = data_displacement(result)
    ndim = result.fixed.ndim
    if ndim == 2 or axis is None:
        return field, [0, 1]
    plane_axes = [a for a in range(3) if a != axis]
    index = int(np.clip(index, 0, field.shape[1 + axis] - 1))
    return np.take(field[plane_axes], index, axis=1 + axis), plane_axes


def _embed(segments: np.ndarray, plane_axes: list[int], axis: int | None, index: int, ndim: int) -> np.ndarray:
    """Plane segments ``(N, 2, 2)`` to data coordinates ``(N, 2, ndim)`` on slice ``index`` of ``axis``."""
    if ndim == 2:
        return segments
    full = np.zeros((len(segments), 2, 3))
    full[:, :, plane_axes] = segments
    full[:, 0, axis] = index
    return full


def _sample(field: np.ndarray, coordinates: np.ndarray) -> np.ndarray:
    """``field`` (C, *S) at integer ``coordinates`` (d, ...) (clipped to the grid)."""
    index = tuple(np.clip(np.rint(c).astype(int), 0, size - 1) for c, size in zip(coordinates, field.shape[1:]))
    return field[(slice(None), *index)]


def _unit_range(array: np.ndarray) -> np.ndarray:
    low, high = np.percentile(array, (0.5, 99.5))
    return np.clip((array - low) / max(high - low, 1e-6), 0, 1).astype(np.float32)


def _vector_attributes(fixed: Volume, name: str, colour: str, visible: bool = True) -> dict:
    return {"name": name, "affine": napari_affine(fixed), "edge_color": colour, "edge_width": 0.6,
            "vector_style": "line", "visible": visible, "out_of_slice_display": False}
