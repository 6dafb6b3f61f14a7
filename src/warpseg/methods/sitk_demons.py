"""Diffeomorphic demons with SimpleITK: affine, histogram matching, then a coarse-to-fine demons.

The moving image is resampled through the affine and histogram-matched to the fixed image; the
demons field found between them is composed on the affine (``x -> affine(x + field(x))``).
"""
from __future__ import annotations

from collections.abc import Generator
from typing import Any, ClassVar

import SimpleITK as sitk

from warpseg.methods.base import Progress
from warpseg.methods.sitk_affine import (SitkAffine, check_levels, optional_affine,
                                         prefixed_affine_defaults)
from warpseg.methods.sitk_runner import Pyramid, run_cancellable

DEMONS_DEFAULTS: dict[str, Any] = {
    **prefixed_affine_defaults(),       # affine (on/off) and affine_<sitk-affine option>
    "histogram_matching": True,         # match the moving intensities to the fixed ones first
    "shrink_factors": (4, 2, 1),        # demons pyramid (block averages), coarse to fine
    "iterations": (60, 30, 10),         # demons iterations per level (at most)
    "smoothing_sigma": 1.5,             # displacement-field smoothing, voxels of each level
    "update_sigma": 0.0,                # update-field smoothing (0 = off), voxels
    "max_step": 2.0,                    # largest update per iteration, voxels (0 = unbounded)
    "rms_tolerance": 0.0,               # end a level once the RMS change is below this
    "first_order_exp": True,            # first-order exponential of the update: ~2x faster, as good
    "seed": 0,
    "threads": 0,
}


def affine_resampled(fixed: sitk.Image, moving: sitk.Image, affine: sitk.Transform, matching: bool
                     ) -> Generator[Progress, None, sitk.Image]:
    """``moving`` through ``affine`` on ``fixed``'s grid, its histogram matched to ``fixed``'s."""
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(fixed)
    resampler.SetTransform(affine)
    resampler.SetInterpolator(sitk.sitkLinear)
    image = yield from run_cancellable(lambda: resampler.Execute(moving), resampler, stage="prepare")
    if not matching:
        return image
    matcher = sitk.HistogramMatchingImageFilter()
    matcher.SetNumberOfHistogramLevels(256)
    matcher.SetNumberOfMatchPoints(15)
    matcher.ThresholdAtMeanIntensityOn()  # background below the mean does not shape the match
    return (yield from run_cancellable(lambda: matcher.Execute(image, fixed), matcher, stage="prepare"))


def resample_field(field: sitk.Image | None, reference: sitk.Image
                   ) -> Generator[Progress, None, sitk.Image]:
    """A physical displacement field moved onto ``reference``'s grid (zero when ``field`` is None)."""
    if field is None:
        zero = sitk.Image(reference.GetSize(), sitk.sitkVectorFloat64, reference.GetDimension())
        zero.CopyInformation(reference)
        return zero
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(reference)
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetUseNearestNeighborExtrapolator(True)
    resampler.SetOutputPixelType(sitk.sitkVectorFloat64)
    return (yield from run_cancellable(lambda: resampler.Execute(field), resampler, stage="prepare"))


def demons_filter(settings: dict[str, Any], iterations: int) -> sitk.DiffeomorphicDemonsRegistrationFilter:
    """A symmetric-gradient diffeomorphic demons filter configured from ``settings``."""
    demons = sitk.DiffeomorphicDemonsRegistrationFilter()
    demons.SetNumberOfIterations(int(iterations))
    demons.SetSmoothDisplacementField(float(settings["smoothing_sigma"]) > 0)
    demons.SetStandardDeviations(max(float(settings["smoothing_sigma"]), 1e-3))
    demons.SetSmoothUpdateField(float(settings["update_sigma"]) > 0)
    demons.SetUpdateFieldStandardDeviations(max(float(settings["update_sigma"]), 1e-3))
    demons.SetMaximumUpdateStepLength(float(settings["max_step"]))
    demons.SetMaximumRMSError(float(settings["rms_tolerance"]))
    demons.SetUseGradientType(demons.Symmetric)
    demons.SetUseFirstOrderExp(bool(settings["first_order_exp"]))
    return demons


def demons_pyramid(fixed: Pyramid, moving: Pyramid, settings: dict[str, Any]
                   ) -> Generator[Progress, None, sitk.Image]:
    """Coarse-to-fine demons of ``moving`` onto ``fixed``; returns the physical field on ``fixed``."""
    factors, iterations = settings["shrink_factors"], [int(i) for i in settings["iterations"]]
    levels = check_levels(shrink_factors=factors, iterations=iterations)
    field, done, total = None, 0, sum(iterations)
    for level, (factor, count) in enumerate(zip(factors, iterations)):
        if count <= 0:  # ITK reads 0 iterations as "until converged": skip the level instead
            continue
        fixed_level = yield from fixed.level(factor, 0.0)
        moving_level = yield from moving.level(factor, 0.0)
        initial = yield from resample_field(field, fixed_level)
        demons = demons_filter(settings, count)
        label = f"level {level + 1}/{levels}"

        def report(demons=demons, done=done, label=label) -> tuple[int, float | None, str]:
            return done + int(demons.GetElapsedIterations()), float(demons.GetMetric()), label

        field = yield from run_cancellable(
            lambda: demons.Execute(fixed_level, moving_level, initial), demons, stage="demons",
            total=total, report=report, start=done, message=label)
        done += count
    return (yield from resample_field(field, fixed.image))


class SitkDemons(SitkAffine):
    """Affine (as :class:`SitkAffine`), histogram matching, then multi-resolution diffeomorphic demons."""

    name: ClassVar[str] = "sitk-demons"
    description: ClassVar[str] = "Affine then multi-resolution diffeomorphic demons with SimpleITK."
    defaults: ClassVar[dict[str, Any]] = DEMONS_DEFAULTS

    def register(self, fixed: Pyramid, moving: Pyramid, settings: dict[str, Any]
                 ) -> Generator[Progress, None, tuple[sitk.Transform, dict[str, Any]]]:
        affine = yield from optional_affine(fixed, moving, settings)
        prepared = yield from affine_resampled(fixed.image, moving.image, affine,
                                               bool(settings["histogram_matching"]))
        field = yield from demons_pyramid(fixed, Pyramid(prepared), settings)
        # a composite applies its last transform first: x -> affine(x + field(x))
        transform = sitk.CompositeTransform([affine, sitk.DisplacementFieldTransform(field)])
        return transform, {"affine_parameters": list(affine.GetParameters()),
                           "shrink_factors": list(settings["shrink_factors"])}
