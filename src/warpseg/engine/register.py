"""The registration pipeline: one contract for every method, headless, as a generator."""
from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

import numpy as np

from warpseg.engine.result import RegistrationResult
from warpseg.engine.validate import check_mask, check_pair
from warpseg.io.landmarks import Landmarks, check_landmarks_inside, landmark_metrics
from warpseg.io.volume import Volume
from warpseg.methods import MethodOutput, Progress, RegistrationInput, get_method
from warpseg.methods.segmenter import SEGMENTATIONS_KEY

RegistrationJob = Generator[Progress, None, RegistrationResult]


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` picks CUDA when a GPU is present; ``"cuda"`` without one is an error."""
    import torch

    from warpseg.errors import InputError

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise InputError(f"unknown device {device!r}; use auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu or auto")
    return device


def weights_and_options(weights: str | None, options: dict[str, Any] | None) -> tuple[str | None, dict]:
    """The weights file given either way, ``weights=`` or the option ``weights`` (``vxm[weights=F]`` in a
    benchmark), and the other options; both at once is an error."""
    from warpseg.errors import InputError

    options = dict(options or {})
    if "weights" in options:
        if weights is not None:
            raise InputError(f"two weights files were given, {weights} and the option weights={options['weights']}; "
                             "give one")
        weights = str(options.pop("weights"))
    return weights, options


def normalise_intensity(array: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Robust min-max scaling to [0, 1] between two percentiles, clipped."""
    lower, upper = np.percentile(array, [low, high])
    if upper <= lower:
        lower, upper = float(array.min()), float(array.max())
    return np.clip((array - lower) / (upper - lower), 0.0, 1.0).astype(np.float32)


def register(moving: Volume, fixed: Volume, method: str, *, moving_labels: Volume | None = None,
             fixed_labels: Volume | None = None, weights: str | None = None, device: str = "auto",
             options: dict[str, Any] | None = None, landmarks: Landmarks | None = None,
             initial_transform=None, moving_mask: Volume | None = None,
             fixed_mask: Volume | None = None) -> RegistrationJob:
    """Register ``moving`` to ``fixed`` with the named method.

    A generator: it yields :class:`Progress` records and returns a :class:`RegistrationResult`
    whose every output lies on the fixed image's grid. Closing it cancels the work. With
    ``landmarks`` (corresponding world points) the metrics include the target registration error.
    With ``initial_transform`` (a ``SimpleITK.Transform``, ITK convention, e.g. from
    :func:`~warpseg.io.read_initial_transform`) the method starts from the moving image resampled
    through it, and the result's field is the whole map; the 'before' scores are without it.
    Masks (label maps on their image's grid, non-zero inside) restrict what the method sees: it
    registers the images zeroed outside them, while the outputs warp the whole moving image.
    """
    from warpseg.io.initial_transform import InitialAlignment

    started = time.perf_counter()
    check_pair(moving, fixed, moving_labels, fixed_labels)
    for name, mask, image in (("moving", moving_mask, moving), ("fixed", fixed_mask, fixed)):
        if mask is not None:
            check_mask(mask, image, name)
    if landmarks is not None:
        check_landmarks_inside(landmarks, fixed)
    method_class = get_method(method)
    device = resolve_device(device)
    weights, options = weights_and_options(weights, options)
    instance = method_class(weights=weights, **options)
    yield Progress("prepare", 0, 1, "resampling the moving image onto the fixed grid")
    initial = None if initial_transform is None else InitialAlignment(initial_transform, moving, fixed)
    moving_on_fixed, labels_on_fixed = on_fixed_grid(moving, fixed), on_fixed_grid(moving_labels, fixed)
    start = (moving_on_fixed, labels_on_fixed) if initial is None else (
        initial.start(moving, fixed), initial.start(moving_labels, fixed))
    if moving_mask is not None:
        mask = on_fixed_grid(moving_mask, fixed) if initial is None else initial.start(moving_mask, fixed)
        start = (masked(start[0], mask), start[1])
    pair = prepare_pair(start[0], masked(fixed, fixed_mask), start[1], fixed_labels, device)
    method_started = time.perf_counter()
    output: MethodOutput = yield from instance.run(pair)
    seconds_registration = time.perf_counter() - method_started
    yield Progress("finish", 0, 1, "warping and measuring")
    if initial is not None:
        output.displacement = initial.total(output.displacement)
    result = assemble_result(moving, fixed, moving_labels, fixed_labels, output,
                             before=(moving_on_fixed, labels_on_fixed), landmarks=landmarks, initial=initial)
    result.method, result.device = method, device
    result.weights = weights or output.details.get("weights_file")
    result.seconds_registration = seconds_registration
    result.seconds_total = time.perf_counter() - started
    return result


def on_fixed_grid(volume: Volume | None, fixed: Volume) -> Volume | None:
    """``volume`` resampled onto the fixed grid (itself when already there; None stays None)."""
    from warpseg.spatial import resample_volume

    if volume is None or volume.same_grid(fixed):
        return volume
    return resample_volume(volume, fixed)


def masked(image: Volume, mask: Volume | None) -> Volume:
    """``image`` zeroed outside ``mask`` (on its grid); itself without a mask."""
    return image if mask is None else image.with_array(np.where(mask.array != 0, image.array, 0).astype(np.float32),
                                                       is_labels=False)


def prepare_pair(moving_on_fixed: Volume, fixed: Volume, labels_on_fixed: Volume | None,
                 fixed_labels: Volume | None, device: str) -> RegistrationInput:
    """The method's input: images (and labels) already on the fixed grid, intensities normalised."""
    return RegistrationInput(
        moving=normalise_intensity(moving_on_fixed.array),
        fixed=normalise_intensity(fixed.array),
        spacing=tuple(float(s) for s in fixed.spacing),
        moving_labels=None if labels_on_fixed is None else labels_on_fixed.array,
        fixed_labels=None if fixed_labels is None else fixed_labels.array,
        device=device,
    )


def assemble_result(moving: Volume, fixed: Volume, moving_labels: Volume | None,
                    fixed_labels: Volume | None, output: MethodOutput,
                    before: tuple[Volume, Volume | None], *,
                    landmarks: Landmarks | None = None, initial=None) -> RegistrationResult:
    """Warp the native moving image and labels once through the field; measure everything.

    ``before`` holds the moving image and labels already resampled onto the fixed grid (the
    identity warp), for the 'before' scores; ``landmarks`` add the target registration error;
    ``initial`` (an :class:`~warpseg.io.initial_transform.InitialAlignment`) brings a joint
    method's moving segmentation back from where registration started.
    """
    import torch

    from warpseg.engine.segment import score_against
    from warpseg.metrics import dice_per_label, differing_label_names, label_metrics, normalized_cross_correlation
    from warpseg.spatial import folding_percent, jacobian_determinant, resample_volume

    field = torch.as_tensor(np.asarray(output.displacement, dtype=np.float32))[None]
    warped = resample_volume(moving, fixed, field)
    determinant = jacobian_determinant(field)[0].numpy().astype(np.float32)
    metrics: dict[str, Any] = {
        "folding_percent": folding_percent(torch.as_tensor(determinant)),
        "ncc_before": normalized_cross_correlation(before[0].array, fixed.array),
        "ncc_after": normalized_cross_correlation(warped.array, fixed.array),
    }
    warped_labels = None
    if moving_labels is not None:
        warped_labels = resample_volume(moving_labels, fixed, field)
        if fixed_labels is not None:
            spacing = tuple(float(s) for s in fixed.spacing)
            metrics["dice_before"] = float(np.mean(list(dice_per_label(before[1].array, fixed_labels.array).values())))
            metrics.update(label_metrics(warped_labels.array, fixed_labels.array, spacing))
            differing = differing_label_names(moving_labels.label_names, fixed_labels.label_names)
            if differing:
                metrics["label_names_differ"] = differing
    if landmarks is not None:
        metrics.update(landmark_metrics(landmarks, np.asarray(output.displacement), fixed))
    details = dict(output.details)
    segmentations = segmentation_volumes(details.pop(SEGMENTATIONS_KEY, {}), moving, fixed, initial)
    if segmentations:  # scored against the labels of their own image, when given
        references = {"moving_segmentation": moving_labels, "fixed_segmentation": fixed_labels}
        metrics["segmentations"] = {
            name: {} if references.get(name) is None else score_against(volume, references[name])
            for name, volume in segmentations.items()}
    return RegistrationResult(
        method="", fixed=fixed, warped=warped, displacement=np.asarray(output.displacement, np.float32),
        jacobian=fixed.with_array(determinant, is_labels=False), metrics=metrics,
        seconds_registration=0.0, seconds_total=0.0, warped_labels=warped_labels,
        partial=output.partial, details=details, segmentations=segmentations,
    )


def segmentation_volumes(predicted: dict, moving: Volume, fixed: Volume, initial=None) -> dict[str, Volume]:
    """A method's label maps on the fixed grid as volumes; ``moving_segmentation`` goes back onto
    the moving image's own grid (nearest neighbour; through the inverse initial transform when
    registration started from one) so that it overlays the moving image."""
    volumes = {}
    for name, (labels, label_names) in predicted.items():
        volume = Volume(np.asarray(labels), fixed.affine, is_labels=True, label_names=label_names)
        if name == "moving_segmentation":
            volume = on_fixed_grid(volume, moving) if initial is None else initial.back_to_moving(volume)
        volumes[name] = volume
    return volumes


def run_to_end(job: RegistrationJob, on_progress=None) -> RegistrationResult:
    """Drive a job to its end, passing each :class:`Progress` to ``on_progress``; return its result."""
    while True:
        try:
            progress = next(job)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(progress)
