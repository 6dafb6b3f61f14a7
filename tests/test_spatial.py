"""Analytic checks of the spatial core (2D and 3D)."""
import numpy as np
import pytest
import torch

from warpseg.io import Volume
from warpseg.spatial import (
    affine_displacement, compose_displacements, folding_percent, identity_grid, integrate_velocity,
    jacobian_determinant, resample_volume, sample_at, warp_image, warp_labels,
)

SHAPES = [(17, 20), (9, 12, 11)]


def smooth_field(shape, amplitude=1.5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn((1, len(shape)) + tuple(max(2, s // 4) for s in shape), generator=generator)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return amplitude * torch.nn.functional.interpolate(coarse, size=shape, mode=mode, align_corners=True)


@pytest.mark.parametrize("shape", SHAPES)
def test_zero_displacement_is_identity(shape):
    image = torch.rand((1, 2) + shape)
    zero = torch.zeros((1, len(shape)) + shape)
    assert torch.allclose(warp_image(image, zero), image, atol=1e-5)
    labels = torch.randint(0, 5, (1, 1) + shape)
    assert torch.equal(warp_labels(labels, zero), labels)
    assert torch.equal(warp_labels(labels, zero, method="onehot"), labels)


@pytest.mark.parametrize("shape", SHAPES)
def test_integer_translation_shifts_the_image(shape):
    image = torch.rand((1, 1) + shape)
    shift = torch.zeros((1, len(shape)) + shape)
    shift[:, 0] = 2.0  # read two voxels further along axis 0
    warped = warp_image(image, shift)
    assert torch.allclose(warped[:, :, :-2], image[:, :, 2:], atol=1e-5)
    assert torch.all(warped[:, :, -2:] == 0)  # outside reads zero


def test_sample_at_follows_axis_order_in_3d():
    image = torch.zeros(1, 1, 5, 6, 7)
    image[0, 0, 1, 2, 3] = 1.0
    point = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1, 1)
    assert sample_at(image, point).item() == pytest.approx(1.0)


@pytest.mark.parametrize("shape", SHAPES)
def test_jacobian_of_zero_field_is_one_and_of_scaling_is_its_determinant(shape):
    ndim = len(shape)
    zero = torch.zeros((1, ndim) + shape)
    assert torch.allclose(jacobian_determinant(zero), torch.ones((1,) + shape))
    matrix = torch.zeros(1, ndim, ndim + 1)
    matrix[0, :, :ndim] = torch.eye(ndim) * 1.5
    det = jacobian_determinant(affine_displacement(matrix, shape))
    assert torch.allclose(det, torch.full_like(det, 1.5**ndim), atol=1e-4)
    assert folding_percent(det) == 0.0


def test_folding_is_counted():
    shape = (10, 10)
    mirror = torch.zeros(1, 2, 3)
    mirror[0, 0, 0], mirror[0, 1, 1], mirror[0, 0, 2] = -1.0, 1.0, 9.0
    det = jacobian_determinant(affine_displacement(mirror, shape))
    assert folding_percent(det) == pytest.approx(100.0)


@pytest.mark.parametrize("shape", SHAPES)
def test_integrated_velocity_is_invertible_by_its_negative(shape):
    velocity = smooth_field(shape, amplitude=1.0)
    forward, backward = integrate_velocity(velocity), integrate_velocity(-velocity)
    round_trip = compose_displacements(backward, forward)
    interior = tuple(slice(3, -3) for _ in shape)
    assert round_trip[(0, slice(None)) + interior].abs().max() < 0.15
    assert folding_percent(jacobian_determinant(forward)) == 0.0


@pytest.mark.parametrize("shape", SHAPES)
def test_composing_two_affine_fields_gives_their_product(shape):
    ndim = len(shape)
    generator = torch.Generator().manual_seed(4)
    first, second = torch.zeros(1, ndim, ndim + 1), torch.zeros(1, ndim, ndim + 1)
    for matrix in (first, second):
        matrix[0, :, :ndim] = torch.eye(ndim) + 0.03 * torch.randn(ndim, ndim, generator=generator)
        matrix[0, :, ndim] = 0.5 * torch.randn(ndim, generator=generator)
    # (id + outer) o (id + inner): x -> A_outer (A_inner x + t_inner) + t_outer
    product = torch.zeros(1, ndim, ndim + 1)
    product[0, :, :ndim] = first[0, :, :ndim] @ second[0, :, :ndim]
    product[0, :, ndim] = first[0, :, :ndim] @ second[0, :, ndim] + first[0, :, ndim]
    composed = compose_displacements(affine_displacement(first, shape), affine_displacement(second, shape))
    interior = (0, slice(None)) + tuple(slice(3, -3) for _ in shape)
    assert torch.allclose(composed[interior], affine_displacement(product, shape)[interior], atol=1e-4)


def test_warp_is_differentiable_in_float64():
    image = torch.rand(1, 1, 6, 7, dtype=torch.float64)
    field = (0.3 * torch.rand(1, 2, 6, 7, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda u: warp_image(image, u), (field,), atol=1e-5)


def test_identity_grid_channels_index_their_axis():
    grid = identity_grid((3, 4, 5))
    assert grid.shape == (3, 3, 4, 5)
    assert grid[0, 2, 1, 1] == 2 and grid[1, 0, 3, 0] == 3 and grid[2, 0, 0, 4] == 4


def test_resample_into_a_finer_shifted_grid_keeps_world_positions():
    array = np.zeros((20, 20, 20), np.float32)
    array[8:12, 8:12, 8:12] = 1
    coarse = Volume(array, np.diag([2.0, 2.0, 2.0, 1.0]))
    fine_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    fine_affine[:3, 3] = [10.0, 10.0, 10.0]
    fine = Volume(np.zeros((20, 20, 20), np.float32), fine_affine)
    out = resample_volume(coarse, fine)
    # world x in [16, 24) is the cube; fine voxel i sits at world 10 + i
    centre = out.array[10, 10, 10]  # world (20, 20, 20), inside the cube
    assert centre == pytest.approx(1.0)
    assert out.array[0, 0, 0] == pytest.approx(0.0)
    assert np.allclose(out.affine, fine_affine)


def test_resample_labels_stay_integer():
    labels = Volume(np.random.default_rng(0).integers(0, 4, (10, 12)).astype(np.uint8), np.eye(4), is_labels=True)
    out = resample_volume(labels, Volume(np.zeros((10, 12), np.float32), np.eye(4)))
    assert out.array.dtype == np.uint8 and np.array_equal(out.array, labels.array)
