"""Training-time augmentation: random affine + elastic warps, intensity changes, and
SynthMorph-style images synthesised from label maps."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from warpseg.spatial import affine_displacement, compose_displacements, gaussian_blur, warp_image, warp_labels


def random_spatial_field(shape, generator: torch.Generator, *, rotation_deg: float = 8.0,
                         scale: float = 0.08, shift: float = 6.0, elastic: float = 3.0) -> torch.Tensor:
    """A random affine (about the centre) composed with a smooth elastic field, in voxel units.

    Shapes
    ------
    returns ``(1, ndim, *shape)``.
    """
    ndim = len(shape)
    matrix = torch.eye(ndim) * (1 + scale * (2 * torch.rand(ndim, generator=generator) - 1))
    for first, second in ([(0, 1)] if ndim == 2 else [(0, 1), (0, 2), (1, 2)]):
        angle = math.radians(rotation_deg) * (2 * torch.rand(1, generator=generator).item() - 1)
        rotation = torch.eye(ndim)
        rotation[first, first] = rotation[second, second] = math.cos(angle)
        rotation[first, second], rotation[second, first] = -math.sin(angle), math.sin(angle)
        matrix = rotation @ matrix
    centre = torch.tensor([(s - 1) / 2 for s in shape])
    offset = centre - matrix @ centre + shift * (2 * torch.rand(ndim, generator=generator) - 1)
    affine = affine_displacement(torch.cat([matrix, offset[:, None]], dim=1)[None], shape)
    return compose_displacements(smooth_noise(shape, ndim, generator, elastic), affine)


def smooth_noise(shape, channels: int, generator: torch.Generator, amplitude: float,
                 control_points: int = 6) -> torch.Tensor:
    """A smooth random field: Gaussian noise on a coarse grid, upsampled.

    Shapes
    ------
    returns ``(1, channels, *shape)``.
    """
    coarse = torch.randn((1, channels) + (control_points,) * len(shape), generator=generator)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return amplitude * F.interpolate(coarse, size=tuple(shape), mode=mode, align_corners=True)


SHIFT_MM, ELASTIC_MM = 6.0, 3.0  # largest random shift and elastic amplitude, in mm


def augment_pair_member(image: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator,
                        strength: float = 1.0, spacing: float = 1.0):
    """Warp an image (and its labels) by a random field, then change its intensities.

    Shifts and elastic amplitudes are set in mm, so a coarser training grid (``spacing`` mm) gets
    the same physical augmentation.

    Shapes
    ------
    image: ``(1, 1, *S)`` in [0, 1]; labels: ``(1, 1, *S)`` integer or None.
    """
    shape = image.shape[2:]
    field = random_spatial_field(shape, generator, rotation_deg=8 * strength, scale=0.08 * strength,
                                 shift=SHIFT_MM * strength / spacing, elastic=ELASTIC_MM * strength / spacing)
    image = warp_image(image, field)
    labels = None if labels is None else warp_labels(labels, field)
    return change_intensity(image, generator), labels


def change_intensity(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random gamma, a smooth multiplicative bias field and a little noise; stays in [0, 1]."""
    gamma = math.exp(0.3 * (2 * torch.rand(1, generator=generator).item() - 1))
    bias = torch.exp(smooth_noise(image.shape[2:], 1, generator, 0.15, control_points=4))
    noise = 0.02 * torch.rand(1, generator=generator).item() * torch.randn(image.shape, generator=generator)
    return normalise((image.clamp(min=0) ** gamma) * bias + noise * (image > 0))


def synthesise_image(labels: torch.Tensor, generator: torch.Generator, num_labels: int) -> torch.Tensor:
    """A SynthMorph-style image: a random intensity per label, noise, blur and bias, in [0, 1].

    Background (label 0) stays dark most of the time, as in skull-stripped scans.

    Shapes
    ------
    labels: ``(1, 1, *S)`` integer; returns ``(1, 1, *S)`` float.
    """
    means = torch.rand(num_labels, generator=generator)
    if torch.rand(1, generator=generator).item() < 0.8:
        means[0] = 0.0
    spread = 0.1 * torch.rand(num_labels, generator=generator)
    image = means[labels.long()] + spread[labels.long()] * torch.randn(labels.shape, generator=generator)
    image = blur(image, 0.5 + torch.rand(1, generator=generator).item())
    return change_intensity(normalise(image), generator)


def blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur with a standard deviation of ``sigma`` voxels (cut at 2 sigmas)."""
    return gaussian_blur(image, sigma, truncate=2.0)


def normalise(image: torch.Tensor) -> torch.Tensor:
    """Min-max to [0, 1] (robust to a constant image)."""
    low, high = image.min(), image.max()
    return (image - low) / (high - low) if high > low else torch.zeros_like(image)
