"""Free-form deformation with SimpleITK: an affine registration, then a multi-resolution B-spline.

The B-spline is optimised level by level on the shared image pyramid; between levels its control
mesh is refined (the coarse spline evaluated at the finer control points, then B-spline
decomposed, as ITK's parameter adaptor does), and the result is composed on the affine.
"""
from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any, ClassVar

import SimpleITK as sitk

from warpseg.errors import InputError
from warpseg.methods.sitk_affine import (SitkAffine, check_levels, execute_level, new_method,
                                         optional_affine, prefixed_affine_defaults)
from warpseg.methods.base import Progress
from warpseg.methods.sitk_runner import Pyramid, warped_preview

BSPLINE_DEFAULTS: dict[str, Any] = {
    **prefixed_affine_defaults(),         # affine (on/off) and affine_<sitk-affine option>
    "grid_spacing": 0.0,                  # finest control-point spacing, mm (0: 10 in 2D, 20 in 3D)
    "iterations": 50,                     # optimizer iterations per level (at most)
    "shrink_factors": (4, 2, 1),          # image pyramid, coarse to fine
    "smoothing_sigmas": (2.0, 1.0, 0.0),  # Gaussian smoothing per level, full-resolution voxels
    "mesh_scale_factors": (1, 2, 4),      # mesh size per level relative to the first level's
    "metric": "mattes",                   # mattes | correlation | meansquares
    "samples": 10000,                     # random metric samples per level inside the mask
    "mask_threshold": 0.01,               # sample where the smoothed fixed image exceeds this (0: all)
    "learning_rate": 2.0,                 # first step (mm); halves on reversal
    "bins": 32,                           # histogram bins of the mattes metric
    "seed": 0,
    "threads": 0,
}


def grid_spacing(settings: dict[str, Any], ndim: int) -> float:
    """The finest control-point spacing in mm: the option, or 10 mm in 2D and 20 mm in 3D.

    Dense meshes are cheap in 2D; in 3D ITK's cost per metric sample grows with the number of
    control points, so 20 mm keeps a 160x192x224 volume near a minute on two cores.
    """
    spacing = float(settings["grid_spacing"])
    return spacing if spacing > 0 else (10.0 if ndim == 2 else 20.0)


def mesh_sizes(image: sitk.Image, spacing_mm: float, scale_factors: Sequence[int]) -> list[list[int]]:
    """Mesh size per level: the last level's cells are about ``spacing_mm`` wide."""
    extent = [size * spacing for size, spacing in zip(image.GetSize(), image.GetSpacing())]
    first = [max(1, int(round(length / (spacing_mm * scale_factors[-1])))) for length in extent]
    return [[cells * int(factor) for cells in first] for factor in scale_factors]


def refine(bspline: sitk.BSplineTransform, reference: sitk.Image, mesh: Sequence[int]
           ) -> sitk.BSplineTransform:
    """The same deformation on a finer control mesh over ``reference``'s domain."""
    finer = sitk.BSplineTransformInitializer(reference, [int(m) for m in mesh], order=3)
    coefficients = []
    for coarse, target in zip(bspline.GetCoefficientImages(), finer.GetCoefficientImages()):
        values = sitk.Resample(coarse, target, sitk.Transform(), sitk.sitkBSplineResamplerOrder3, 0.0)
        coefficients.append(sitk.BSplineDecomposition(values, 3))
    return sitk.BSplineTransform(coefficients, 3)


def foreground_mask(fixed: Pyramid, threshold: float
                    ) -> Generator[Progress, None, tuple[sitk.Image | None, float]]:
    """Where the fixed image (smoothed by 2 voxels, so edges stay in) exceeds ``threshold``.

    Returns the mask (None when ``threshold`` <= 0 or nothing would be left out) and its share
    of the voxels. Restricting the metric samples to it spends them on the anatomy.
    """
    if threshold <= 0:
        return None, 1.0
    smooth = yield from fixed.level(1, 2.0)
    mask = sitk.Cast(smooth > float(threshold), sitk.sitkUInt8)
    share = float(sitk.GetArrayViewFromImage(mask).mean())
    if share <= 0.0 or share >= 0.99:
        return None, 1.0
    return mask, share


def set_metric(method: sitk.ImageRegistrationMethod, settings: dict[str, Any]) -> None:
    """Set the image similarity named by ``settings["metric"]``."""
    setters = {
        "mattes": lambda: method.SetMetricAsMattesMutualInformation(int(settings["bins"])),
        "correlation": method.SetMetricAsCorrelation,
        "meansquares": method.SetMetricAsMeanSquares,
    }
    if settings["metric"] not in setters:
        raise InputError(f"unknown metric {settings['metric']!r}; use one of {', '.join(setters)}")
    setters[settings["metric"]]()


def bspline_registration(fixed: Pyramid, moving: Pyramid, initial: sitk.Transform,
                         settings: dict[str, Any]) -> Generator[Progress, None, sitk.Transform]:
    """B-spline registration on top of ``initial``; returns the composite fixed->moving transform."""
    factors, sigmas = settings["shrink_factors"], settings["smoothing_sigmas"]
    scales = [int(s) for s in settings["mesh_scale_factors"]]
    levels = check_levels(shrink_factors=factors, smoothing_sigmas=sigmas, mesh_scale_factors=scales)
    meshes = mesh_sizes(fixed.image, grid_spacing(settings, fixed.image.GetDimension()), scales)
    bspline = sitk.BSplineTransformInitializer(fixed.image, meshes[0], order=3)
    iterations = int(settings["iterations"])
    mask, share = yield from foreground_mask(fixed, float(settings["mask_threshold"]))
    for level, (factor, sigma) in enumerate(zip(factors, sigmas)):
        if level and meshes[level] != meshes[level - 1]:
            bspline = refine(bspline, fixed.image, meshes[level])
        fixed_level = yield from fixed.level(factor, sigma)
        moving_level = yield from moving.level(factor, sigma)
        method = new_method(fixed_level, float(settings["samples"]) / share, int(settings["seed"]))
        if mask is not None:
            method.SetMetricFixedMask(mask)
        set_metric(method, settings)
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=float(settings["learning_rate"]), minStep=1e-2, numberOfIterations=iterations,
            relaxationFactor=0.5)
        method.SetMovingInitialTransform(initial)
        method.SetInitialTransform(bspline, inPlace=False)
        bspline = yield from execute_level(method, fixed_level, moving_level, stage="bspline",
                                           level=level, levels=levels, iterations=iterations)
        current = sitk.CompositeTransform([initial, sitk.BSplineTransform(bspline)])
        yield Progress("bspline", (level + 1) * iterations, levels * iterations, f"level {level + 1}/{levels} done",
                       preview=warped_preview(moving.image, fixed.image, current))
    # a composite applies its last transform first: x -> initial(bspline(x))
    return sitk.CompositeTransform([initial, sitk.BSplineTransform(bspline)])


class SitkBspline(SitkAffine):
    """Affine (as :class:`SitkAffine`) then a B-spline free-form deformation, composed."""

    name: ClassVar[str] = "sitk-bspline"
    description: ClassVar[str] = "Affine then B-spline free-form deformation with SimpleITK."
    defaults: ClassVar[dict[str, Any]] = BSPLINE_DEFAULTS
    streams_preview: ClassVar[bool] = True

    def register(self, fixed: Pyramid, moving: Pyramid, settings: dict[str, Any]
                 ) -> Generator[Progress, None, tuple[sitk.Transform, dict[str, Any]]]:
        affine = yield from optional_affine(fixed, moving, settings)
        transform = yield from bspline_registration(fixed, moving, affine, settings)
        return transform, {"affine_parameters": list(affine.GetParameters()),
                           "grid_spacing_mm": grid_spacing(settings, fixed.image.GetDimension())}
