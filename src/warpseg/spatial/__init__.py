"""Tensor geometry for 2D and 3D: grids, warps, integration, Jacobians and resampling."""
from warpseg.spatial.grids import affine_displacement, identity_grid
from warpseg.spatial.integrate import compose_displacements, integrate_velocity
from warpseg.spatial.jacobian import folding_percent, jacobian_determinant
from warpseg.spatial.resample import moving_voxel_coordinates, resample_volume
from warpseg.spatial.smooth import gaussian_blur
from warpseg.spatial.warp import sample_at, warp_image, warp_labels

__all__ = [
    "affine_displacement", "identity_grid", "compose_displacements", "integrate_velocity",
    "folding_percent", "gaussian_blur", "jacobian_determinant", "moving_voxel_coordinates", "resample_volume",
    "sample_at", "warp_image", "warp_labels",
]
