"""Affine registration with SimpleITK: Mattes mutual information, multi-resolution gradient descent.

Each pyramid level is its own ``Execute`` on pre-built pyramid images, so cancelling never waits
for ITK to set up the next level, and the deformable methods reuse the fixed image's pyramid.
"""
from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any, ClassVar

import numpy as np
import SimpleITK as sitk

from warpseg.errors import InputError
from warpseg.methods.base import MethodOutput, Progress, RegistrationInput, RegistrationMethod
from warpseg.methods.sitk_runner import (Pyramid, configure_threads, resolve_options, run_cancellable,
                                         to_sitk, transform_to_displacement)

AFFINE_DEFAULTS: dict[str, Any] = {
    "iterations": 100,                     # optimizer iterations per pyramid level (at most)
    "shrink_factors": (4, 2, 1),           # pyramid, coarse to fine
    "smoothing_sigmas": (2.0, 1.0, 0.0),   # Gaussian smoothing per level, full-resolution voxels
    "samples": 50000,                      # random metric samples per level
    "bins": 32,                            # Mattes mutual information histogram bins
    "learning_rate": 1.0,                  # first step (physical-shift scaled, ~mm); halves on reversal
    "seed": 0,                             # metric sampling seed: same input, same result
    "threads": 0,                          # SimpleITK threads; 0 = all cores
}


def prefixed_affine_defaults() -> dict[str, Any]:
    """The affine options of a deformable method: ``affine`` (on/off) and ``affine_<option>``."""
    shared = ("seed", "threads")
    return {"affine": True, **{f"affine_{key}": value for key, value in AFFINE_DEFAULTS.items()
                               if key not in shared}}


def affine_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """A deformable method's ``affine_*`` options (and its seed and threads) as affine settings."""
    picked = {key: settings[f"affine_{key}"] for key in AFFINE_DEFAULTS if f"affine_{key}" in settings}
    return {**AFFINE_DEFAULTS, **picked, "seed": settings["seed"], "threads": settings["threads"]}


def check_levels(**schedules: Sequence) -> int:
    """The number of pyramid levels; an error unless every schedule has one entry per level."""
    lengths = {len(values) for values in schedules.values()}
    if len(lengths) != 1 or 0 in lengths:
        listed = ", ".join(f"{name}={tuple(values)}" for name, values in schedules.items())
        raise InputError(f"give one entry per pyramid level in each of: {listed}")
    return lengths.pop()


def sampling_percentage(image: sitk.Image, samples: float) -> float:
    """The share of ``image``'s voxels that gives about ``samples`` random metric samples."""
    return float(min(1.0, max(samples / float(np.prod(image.GetSize())), 1e-4)))


def new_method(fixed: sitk.Image, samples: float, seed: int) -> sitk.ImageRegistrationMethod:
    """A registration method with linear interpolation and random metric sampling on ``fixed``."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricSamplingStrategy(method.RANDOM)
    # ITK reads seed 0 as "seed from the wall clock": seed s goes in as s + 1, so runs repeat exactly
    method.SetMetricSamplingPercentage(sampling_percentage(fixed, samples), int(seed) + 1)
    # central differences on the fly: no full gradient images to build before each level
    method.MetricUseFixedImageGradientFilterOff()
    method.MetricUseMovingImageGradientFilterOff()
    method.SetInterpolator(sitk.sitkLinear)
    return method


def execute_level(method: sitk.ImageRegistrationMethod, fixed: sitk.Image, moving: sitk.Image, *,
                  stage: str, level: int, levels: int, iterations: int
                  ) -> Generator[Progress, None, sitk.Transform]:
    """Run one pyramid level's registration cancellably; returns its (unwrapped) transform."""
    label = f"level {level + 1}/{levels}"

    def report() -> tuple[int, float | None, str]:
        step = level * iterations + min(int(method.GetOptimizerIteration()), iterations)
        return step, float(method.GetMetricValue()), label

    result = yield from run_cancellable(lambda: method.Execute(fixed, moving), method, stage=stage,
                                        total=levels * iterations, report=report,
                                        start=level * iterations, message=label)
    if isinstance(result, sitk.CompositeTransform) and result.GetNumberOfTransforms() == 1:
        result = result.GetNthTransform(0)
    return result


def affine_registration(fixed: Pyramid, moving: Pyramid, settings: dict[str, Any]
                        ) -> Generator[Progress, None, sitk.Transform]:
    """Register ``moving`` to ``fixed`` affinely, coarse to fine; returns the fixed->moving transform.

    ``settings`` holds the :data:`AFFINE_DEFAULTS` keys.
    """
    factors, sigmas = settings["shrink_factors"], settings["smoothing_sigmas"]
    levels = check_levels(shrink_factors=factors, smoothing_sigmas=sigmas)
    ndim = fixed.image.GetDimension()
    transform: sitk.Transform = sitk.CenteredTransformInitializer(
        fixed.image, moving.image, sitk.AffineTransform(ndim),
        sitk.CenteredTransformInitializerFilter.GEOMETRY)
    iterations = int(settings["iterations"])
    for level, (factor, sigma) in enumerate(zip(factors, sigmas)):
        fixed_level = yield from fixed.level(factor, sigma)
        moving_level = yield from moving.level(factor, sigma)
        method = new_method(fixed_level, int(settings["samples"]), int(settings["seed"]))
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=int(settings["bins"]))
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=float(settings["learning_rate"]), minStep=1e-3, numberOfIterations=iterations,
            relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetInitialTransform(transform, inPlace=False)
        transform = yield from execute_level(method, fixed_level, moving_level, stage="affine",
                                             level=level, levels=levels, iterations=iterations)
    return transform


def optional_affine(fixed: Pyramid, moving: Pyramid, settings: dict[str, Any]
                    ) -> Generator[Progress, None, sitk.Transform]:
    """The affine stage of a deformable method (identity when its ``affine`` option is off)."""
    if not settings["affine"]:
        return sitk.AffineTransform(fixed.image.GetDimension())
    return (yield from affine_registration(fixed, moving, affine_settings(settings)))


class SitkAffine(RegistrationMethod):
    """Affine registration (SimpleITK): geometric centring, Mattes MI, 3-level gradient descent."""

    name: ClassVar[str] = "sitk-affine"
    description: ClassVar[str] = "Affine registration with SimpleITK (mutual information, multi-resolution)."
    iterative: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = AFFINE_DEFAULTS

    def settings(self) -> dict[str, Any]:
        """This instance's options merged over the method's defaults."""
        return resolve_options(self.defaults, self.options, self.name)

    def run(self, pair: RegistrationInput) -> Generator[Progress, None, MethodOutput]:
        settings = self.settings()
        if min(pair.fixed.shape) < 4:
            raise InputError(f"{self.name} needs at least 4 voxels along every axis, got "
                             f"{pair.fixed.shape}; give a thin 3D stack as 2D slices")
        configure_threads(settings["threads"] or None)
        fixed = Pyramid(to_sitk(pair.fixed, pair.spacing))
        moving = Pyramid(to_sitk(pair.moving, pair.spacing))
        transform, details = yield from self.register(fixed, moving, settings)
        displacement = yield from transform_to_displacement(transform, fixed.image)
        if not np.isfinite(displacement).all():
            raise RuntimeError(f"{self.name} produced a non-finite displacement; try other options "
                               "(e.g. fewer shrink levels for very small images)")
        return MethodOutput(displacement, details=details)

    def register(self, fixed: Pyramid, moving: Pyramid, settings: dict[str, Any]
                 ) -> Generator[Progress, None, tuple[sitk.Transform, dict[str, Any]]]:
        """The fixed->moving transform and details; subclasses add their deformable stage."""
        transform = yield from affine_registration(fixed, moving, settings)
        return transform, {"affine_parameters": list(transform.GetParameters()),
                           "affine_center": list(transform.GetFixedParameters())}
