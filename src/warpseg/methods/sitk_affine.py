"""Affine registration with SimpleITK: Mattes mutual information, multi-resolution gradient descent."""
from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any, ClassVar

import numpy as np
import SimpleITK as sitk

from warpseg.methods.base import MethodOutput, Progress, RegistrationInput, RegistrationMethod
from warpseg.methods.sitk_runner import (configure_threads, registration_report, resolve_options,
                                         run_cancellable, to_sitk, transform_to_displacement)

AFFINE_DEFAULTS: dict[str, Any] = {
    "iterations": 60,             # gradient-descent iterations per pyramid level
    "shrink_factors": (4, 2, 1),  # pyramid, coarse to fine
    "smoothing_sigmas": (2.0, 1.0, 0.0),  # voxels, per level
    "samples": 20000,             # metric samples per level (random, a share of the voxels)
    "bins": 32,                   # Mattes mutual information histogram bins
    "learning_rate": 1.0,         # scaled by the once-per-level step estimate
    "seed": 0,                    # metric sampling seed: same input, same result
    "threads": 0,                 # SimpleITK threads; 0 = all cores
}


def sampling_percentages(shape: Sequence[int], shrink_factors: Sequence[int], samples: int
                         ) -> list[float]:
    """Per-level share of voxels that gives about ``samples`` metric samples at every level."""
    voxels = [float(np.prod([max(1, size // factor) for size in shape])) for factor in shrink_factors]
    return [float(min(1.0, max(samples / count, 1e-4))) for count in voxels]


def pyramid(method: sitk.ImageRegistrationMethod, shrink_factors: Sequence[int],
            smoothing_sigmas: Sequence[float]) -> None:
    """Set a multi-resolution schedule (sigmas in voxels of the full-resolution image)."""
    if len(shrink_factors) != len(smoothing_sigmas):
        from warpseg.errors import InputError

        raise InputError(f"shrink_factors {tuple(shrink_factors)} and smoothing_sigmas "
                         f"{tuple(smoothing_sigmas)} must have one entry per level")
    method.SetShrinkFactorsPerLevel([int(f) for f in shrink_factors])
    method.SetSmoothingSigmasPerLevel([float(s) for s in smoothing_sigmas])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()


def affine_registration(fixed: sitk.Image, moving: sitk.Image, settings: dict[str, Any],
                        stage: str = "affine") -> Generator[Progress, None, sitk.Transform]:
    """Register ``moving`` to ``fixed`` affinely; yield progress, return the fixed->moving transform.

    ``settings`` holds the :data:`AFFINE_DEFAULTS` keys.
    """
    ndim = fixed.GetDimension()
    initial = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.AffineTransform(ndim), sitk.CenteredTransformInitializerFilter.GEOMETRY)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=int(settings["bins"]))
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentagePerLevel(
        sampling_percentages(fixed.GetSize(), settings["shrink_factors"], settings["samples"]),
        int(settings["seed"]))
    method.SetInterpolator(sitk.sitkLinear)
    iterations = int(settings["iterations"])
    if settings.get("optimizer", "regular") == "regular":
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=float(settings["learning_rate"]), minStep=1e-3, numberOfIterations=iterations,
            relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
    else:
        method.SetOptimizerAsGradientDescent(
            learningRate=float(settings["learning_rate"]), numberOfIterations=iterations,
            convergenceMinimumValue=1e-6, convergenceWindowSize=10, estimateLearningRate=method.Once)
    method.SetOptimizerScalesFromPhysicalShift()
    pyramid(method, settings["shrink_factors"], settings["smoothing_sigmas"])
    method.SetInitialTransform(initial, inPlace=False)
    levels = [iterations] * len(settings["shrink_factors"])
    result = yield from run_cancellable(
        lambda: method.Execute(fixed, moving), method, stage=stage, total=sum(levels),
        report=registration_report(method, levels))
    if isinstance(result, sitk.CompositeTransform) and result.GetNumberOfTransforms() == 1:
        result = result.GetNthTransform(0)
    return result


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
        configure_threads(settings["threads"] or None)
        fixed, moving = to_sitk(pair.fixed, pair.spacing), to_sitk(pair.moving, pair.spacing)
        transform = yield from affine_registration(fixed, moving, settings)
        displacement = yield from transform_to_displacement(transform, fixed)
        details = {"affine_parameters": list(transform.GetParameters()),
                   "affine_center": list(transform.GetFixedParameters())}
        return MethodOutput(displacement, details=details)
