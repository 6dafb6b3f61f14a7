"""Free-form deformation with SimpleITK: an affine registration, then a multi-resolution B-spline."""
from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any, ClassVar

import numpy as np
import SimpleITK as sitk

from warpseg.methods.base import MethodOutput, Progress, RegistrationInput
from warpseg.methods.sitk_affine import (AFFINE_DEFAULTS, SitkAffine, affine_registration, pyramid,
                                         sampling_percentages)
from warpseg.methods.sitk_runner import (configure_threads, registration_report, run_cancellable,
                                         to_sitk, transform_to_displacement)

BSPLINE_DEFAULTS: dict[str, Any] = {
    **{f"affine_{key}": value for key, value in AFFINE_DEFAULTS.items() if key not in ("seed", "threads")},
    "affine": True,                 # run the affine stage first
    "grid_spacing": 20.0,           # control-point spacing of the finest mesh, mm
    "bspline_iterations": 50,       # optimizer iterations per level
    "bspline_shrink_factors": (4, 2, 1),
    "bspline_smoothing_sigmas": (2.0, 1.0, 0.0),
    "mesh_refinements": (1, 2, 2),  # mesh scale factor per level (cumulative)
    "metric": "mattes",             # mattes | correlation | meansquares
    "bspline_samples": 50000,       # metric samples per level
    "learning_rate": 5.0,           # initial step (mm) of the line-search gradient descent
    "seed": 0,
    "threads": 0,
    "optimizer": "gdls",
}


def affine_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The ``affine_*`` options of a deformable method as :data:`AFFINE_DEFAULTS` settings."""
    picked = {key: settings[f"affine_{key}"] for key in AFFINE_DEFAULTS if f"affine_{key}" in settings}
    return {**AFFINE_DEFAULTS, **picked, "seed": settings["seed"], "threads": settings["threads"]}


def initial_mesh(image: sitk.Image, grid_spacing: float, refinements: Sequence[int]) -> list[int]:
    """Mesh size of the coarsest level so that the finest mesh has ~``grid_spacing`` mm cells."""
    total = int(np.prod(refinements))
    extent = [size * spacing for size, spacing in zip(image.GetSize(), image.GetSpacing())]
    return [max(1, int(round(length / (grid_spacing * total)))) for length in extent]


def set_metric(method: sitk.ImageRegistrationMethod, metric: str, bins: int = 32) -> None:
    """Set the image similarity by name."""
    setters = {
        "mattes": lambda: method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins),
        "correlation": method.SetMetricAsCorrelation,
        "meansquares": method.SetMetricAsMeanSquares,
    }
    if metric not in setters:
        from warpseg.errors import InputError

        raise InputError(f"unknown metric {metric!r}; use one of {', '.join(setters)}")
    setters[metric]()


def bspline_registration(fixed: sitk.Image, moving: sitk.Image, initial: sitk.Transform,
                         settings: dict[str, Any]) -> Generator[Progress, None, sitk.Transform]:
    """B-spline registration on top of ``initial``; returns the composite fixed->moving transform."""
    refinements = [int(f) for f in settings["mesh_refinements"]]
    shrink = settings["bspline_shrink_factors"]
    bspline = sitk.BSplineTransformInitializer(
        fixed, initial_mesh(fixed, settings["grid_spacing"], refinements), order=3)
    method = sitk.ImageRegistrationMethod()
    set_metric(method, settings["metric"], int(settings["affine_bins"]))
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentagePerLevel(
        sampling_percentages(fixed.GetSize(), shrink, settings["bspline_samples"]), int(settings["seed"]))
    method.SetInterpolator(sitk.sitkLinear)
    iterations = int(settings["bspline_iterations"])
    opt = settings.get("optimizer", "gdls")
    if opt == "gdls":
        method.SetOptimizerAsGradientDescentLineSearch(
            learningRate=float(settings["learning_rate"]), numberOfIterations=iterations,
            convergenceMinimumValue=1e-5, convergenceWindowSize=5)
    elif opt == "cgls":
        method.SetOptimizerAsConjugateGradientLineSearch(
            learningRate=float(settings["learning_rate"]), numberOfIterations=iterations,
            convergenceMinimumValue=1e-5, convergenceWindowSize=5)
    elif opt == "gd":
        method.SetOptimizerAsGradientDescent(
            learningRate=float(settings["learning_rate"]), numberOfIterations=iterations,
            convergenceMinimumValue=1e-5, convergenceWindowSize=5, estimateLearningRate=method.Once)
    elif opt == "rsgd":
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=float(settings["learning_rate"]), minStep=1e-2, numberOfIterations=iterations,
            relaxationFactor=0.7)
    pyramid(method, shrink, settings["bspline_smoothing_sigmas"])
    method.SetMovingInitialTransform(initial)
    method.SetInitialTransformAsBSpline(bspline, inPlace=True, scaleFactors=refinements)
    levels = [iterations] * len(shrink)
    result = yield from run_cancellable(
        lambda: method.Execute(fixed, moving), method, stage="bspline", total=sum(levels),
        report=registration_report(method, levels))
    if isinstance(result, sitk.CompositeTransform) and result.GetNumberOfTransforms() == 1:
        result = result.GetNthTransform(0)
    # a composite applies its last transform first: x -> initial(bspline(x))
    return sitk.CompositeTransform([initial, result])


class SitkBspline(SitkAffine):
    """Affine (as :class:`SitkAffine`) then a B-spline free-form deformation, composed."""

    name: ClassVar[str] = "sitk-bspline"
    description: ClassVar[str] = "Affine then B-spline free-form deformation with SimpleITK."
    defaults: ClassVar[dict[str, Any]] = BSPLINE_DEFAULTS

    def run(self, pair: RegistrationInput) -> Generator[Progress, None, MethodOutput]:
        settings = self.settings()
        configure_threads(settings["threads"] or None)
        fixed, moving = to_sitk(pair.fixed, pair.spacing), to_sitk(pair.moving, pair.spacing)
        affine: sitk.Transform = sitk.AffineTransform(pair.ndim)
        if settings["affine"]:
            affine = yield from affine_registration(fixed, moving, affine_settings(settings))
        transform = yield from bspline_registration(fixed, moving, affine, settings)
        displacement = yield from transform_to_displacement(transform, fixed)
        return MethodOutput(displacement, details={"grid_spacing_mm": settings["grid_spacing"]})
