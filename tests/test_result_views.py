"""The viewer's result views (pure numpy): grid, glyphs, lattice, checkerboard, folds, geometry."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import blob_pair, oblique_affine, rotation_affine


def make_result(fixed, displacement, method="test"):
    from warpseg.engine.register import assemble_result
    from warpseg.methods import MethodOutput

    output = MethodOutput(displacement=displacement.astype(np.float32))
    result = assemble_result(fixed, fixed, None, None, output, before=(fixed, None))
    result.method = method
    return result


def test_zero_field_grid_lines_lie_on_the_fixed_grid():
    from warpseg._plugin._result_views import GRID_SPACING, grid_vectors

    fixed, _ = blob_pair((40, 48), rotation_affine((1.0, 1.0, 1.0), 0, (0, 0, 0)), seed=0)
    segments = grid_vectors(make_result(fixed, np.zeros((2, 40, 48))), None, 0)
    starts, ends = segments[:, 0], segments[:, 0] + segments[:, 1]
    # every segment is axis-aligned and runs along a grid line (one coordinate a multiple of the spacing)
    on_line = np.isclose(starts[:, 0], ends[:, 0]) & (starts[:, 0] % GRID_SPACING == 0)
    on_column = np.isclose(starts[:, 1], ends[:, 1]) & (starts[:, 1] % GRID_SPACING == 0)
    assert np.all(on_line | on_column) and on_line.any() and on_column.any()


def test_a_translation_moves_every_grid_point_and_glyph_by_the_same_vector():
    from warpseg._plugin._result_views import glyph_vectors, grid_vectors

    fixed, _ = blob_pair((40, 48), rotation_affine((1.0, 1.0, 1.0), 0, (0, 0, 0)), seed=0)
    field = np.zeros((2, 40, 48))
    field[0], field[1] = 2.0, -3.0  # voxel axes; the layer's data axes may be swapped
    result = make_result(fixed, field)
    shifted = grid_vectors(result, None, 0)
    straight = grid_vectors(make_result(fixed, np.zeros((2, 40, 48))), None, 0)
    offsets = shifted[:, 0] - straight[:, 0]
    assert np.allclose(offsets, offsets[0]) and np.isclose(np.abs(offsets[0]).sum(), 5.0)
    glyphs = glyph_vectors(result, None, 0)
    assert np.allclose(glyphs[:, 1], offsets[0])


def test_data_displacement_follows_the_layers_axis_order():
    """On an oblique grid the layer data axes are a permutation of the voxel axes; so is the field."""
    from warpseg._plugin._layers import napari_axes
    from warpseg._plugin._result_views import data_displacement

    affine = oblique_affine()[:, [2, 0, 1, 3]]  # voxel axes mostly S, R, A
    fixed, _ = blob_pair((10, 12, 14), affine, seed=0)
    field = np.zeros((3, 10, 12, 14))
    field[0] = 1.0  # along voxel axis 0
    _, voxel_axes = napari_axes(affine, 3)
    data = data_displacement(make_result(fixed, field))
    assert data.shape[1:] == tuple(np.array(fixed.shape)[list(voxel_axes)])
    component = list(voxel_axes).index(0)
    assert np.allclose(data[component], 1.0) and np.allclose(np.delete(data, component, axis=0), 0.0)


def test_slice_grid_stays_on_its_slice_and_lattice_spans_the_volume():
    from warpseg._plugin._result_views import lattice_vectors, slice_overlays

    fixed, _ = blob_pair((20, 24, 28), rotation_affine((1.0, 1.0, 1.0), 0, (0, 0, 0)), seed=0)
    field = np.random.default_rng(0).normal(0, 0.5, (3, 20, 24, 28))
    result = make_result(fixed, field)
    (grid, grid_attributes, kind), (glyphs, _, _) = slice_overlays(result, axis=0, index=5)
    assert kind == "vectors" and grid.shape[1:] == (2, 3) and glyphs.shape[1:] == (2, 3)
    assert np.all(grid[:, 0, 0] == 5) and np.all(grid[:, 1, 0] == 0)  # in-plane segments on slice 5
    lattice = lattice_vectors(result)
    ends = lattice[:, 0] + lattice[:, 1]
    assert np.ptp(ends, axis=0).min() > 15  # it fills the volume in all three directions


def test_checkerboard_alternates_between_the_two_images():
    from warpseg._plugin._result_views import checkerboard

    board = checkerboard(np.zeros((16, 16)), np.ones((16, 16)), blocks=4)
    assert board[0, 0] == 0 and board[0, 4] == 1 and board[4, 4] == 0 and board.mean() == 0.5


@pytest.mark.parametrize("ndim", [2, 3])
def test_result_layers_share_the_fixed_geometry_and_flag_folds(ndim):
    from warpseg._plugin._layers import napari_affine
    from warpseg._plugin._result_views import result_layers

    shape = (24, 28) if ndim == 2 else (12, 14, 16)
    fixed, _ = blob_pair(shape, oblique_affine(), seed=0)
    field = np.zeros((ndim, *shape))
    field[0][tuple(slice(4, 8) for _ in shape)] = np.linspace(0, -6, 4).reshape([-1] + [1] * (ndim - 1))  # a fold
    result = make_result(fixed, field, method="m")
    layers = {attributes["name"]: (data, attributes, kind) for data, attributes, kind in result_layers(result)}
    assert {"m: warped", "m: Jacobian determinant", "m: folds", "m: checkerboard", "m: difference",
            "m: displacement (mm)"} <= set(layers)
    assert ("m: lattice" in layers) == (ndim == 3)
    for data, attributes, _ in layers.values():
        assert np.allclose(attributes["affine"], napari_affine(fixed))
    folds = layers["m: folds"][0]
    assert folds.sum() == np.count_nonzero(result.jacobian.array <= 0) > 0
