"""Shared SimpleITK machinery for the classical methods.

* local-frame images: a numpy array of axes ``(i, j, k)`` becomes a SimpleITK image whose ITK
  index ``(x, y, z)`` is ``(i, j, k)``, with origin 0, identity direction and the given spacing;
* conversion of a SimpleITK transform (or a physical displacement field) into our displacement
  in fixed voxel units, ``(ndim, *S)`` float32;
* cancellable execution of a blocking SimpleITK call in a worker thread, its iteration events
  turned into :class:`~warpseg.methods.base.Progress` records.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any, TypeVar

import numpy as np
import SimpleITK as sitk

from warpseg.methods.base import Progress, preview_shape

T = TypeVar("T")
#: ``report()`` is called from the worker on each iteration event: ``(step, loss, message)``.
Report = Callable[[], tuple[int, float | None, str]]

POLL_SECONDS = 0.05  # while stopping
HEARTBEAT_SECONDS = 0.5


def available_cores() -> int:
    """Number of CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def configure_threads(threads: int | None = None) -> int:
    """Set SimpleITK's default thread count to ``threads`` (at most the cores; all when None).

    Returns the number of threads set. Affects filters created afterwards.
    """
    cores = available_cores()
    count = cores if threads is None else max(1, min(int(threads), cores))
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(count)
    return count


def to_sitk(array: np.ndarray, spacing: Sequence[float]) -> sitk.Image:
    """A float32 SimpleITK image of ``array`` in the local frame (origin 0, identity direction).

    Shapes
    ------
    array: ``S`` (2D or 3D), numpy axis ``d`` is ITK index axis ``d``; spacing: ``(ndim,)`` mm.
    """
    if len(spacing) != array.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match a {array.ndim}D array")
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array, dtype=np.float32).T))
    image.SetSpacing([float(s) for s in spacing])
    return image


def from_sitk(image: sitk.Image) -> np.ndarray:
    """The scalar image's pixels in our axis order (the inverse of :func:`to_sitk`)."""
    return np.ascontiguousarray(sitk.GetArrayFromImage(image).T)


def field_to_displacement(field: sitk.Image) -> np.ndarray:
    """A physical displacement field image (local frame) as our displacement in voxel units.

    Shapes
    ------
    field: vector image of ``ndim`` components in mm; returns ``(ndim, *S)`` float32.
    """
    ndim = field.GetDimension()
    vectors = sitk.GetArrayViewFromImage(field)  # (z, y, x, ndim) for 3D
    spatial = tuple(range(ndim - 1, -1, -1))
    out = np.empty((ndim, *field.GetSize()), dtype=np.float32)
    for component, size in enumerate(field.GetSpacing()):
        out[component] = vectors[..., component].transpose(spatial) / size
    return out


def warped_preview(moving: sitk.Image, fixed: sitk.Image, transform: sitk.Transform) -> np.ndarray:
    """``moving`` through ``transform`` on ``fixed``'s preview grid (:func:`preview_shape`, local frame).

    Shapes
    ------
    returns ``S'`` float32 in our axis order, ``S' = preview_shape(S)``.
    """
    size, spacing = fixed.GetSize(), fixed.GetSpacing()
    coarse_size = list(preview_shape(size))
    coarse_spacing = [h * n / m for h, n, m in zip(spacing, size, coarse_size)]
    reference = sitk.Image(coarse_size, sitk.sitkFloat32)
    reference.SetSpacing(coarse_spacing)
    reference.SetOrigin([(coarse - fine) / 2 for coarse, fine in zip(coarse_spacing, spacing)])
    return from_sitk(sitk.Resample(moving, reference, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32))


def displacement_field_filter(reference: sitk.Image) -> sitk.TransformToDisplacementFieldFilter:
    """A filter that samples a transform's displacement on ``reference``'s grid (float64 vectors)."""
    sampler = sitk.TransformToDisplacementFieldFilter()
    sampler.SetReferenceImage(reference)
    sampler.SetOutputPixelType(sitk.sitkVectorFloat64)
    return sampler


def transform_to_displacement(transform: sitk.Transform, reference: sitk.Image
                              ) -> Generator[Progress, None, np.ndarray]:
    """Sample ``transform`` (fixed -> moving physical points) on ``reference``'s grid, cancellably.

    Yields heartbeat progress while it works; returns ``(ndim, *S)`` float32 in voxel units.
    """
    sampler = displacement_field_filter(reference)
    field = yield from run_cancellable(lambda: sampler.Execute(transform), sampler,
                                       stage="displacement")
    return field_to_displacement(field)


def _stop(process: Any, worker: threading.Thread) -> None:
    """Ask the running SimpleITK process to stop until its worker thread has ended.

    ``StopRegistration`` ends the current optimizer iteration (or demons iteration) and
    ``Abort`` makes ITK throw at its next progress check (e.g. when a new pyramid level starts);
    both are repeated because a request made between levels or before ``Execute`` starts is lost.
    """
    while worker.is_alive():
        for name in ("StopRegistration", "Abort"):
            stop = getattr(process, name, None)
            try:
                if stop is not None:
                    stop()
            except RuntimeError:  # e.g. a B-spline mesh being resized between levels
                pass
        worker.join(POLL_SECONDS)


def run_cancellable(execute: Callable[[], T], process: Any, *, stage: str,
                    total: int | None = None, report: Report | None = None, start: int = 0,
                    message: str = "starting") -> Generator[Progress, None, T]:
    """Run the blocking ``execute()`` in a worker thread and yield its progress; return its result.

    ``process`` is the SimpleITK object whose ``Execute`` runs (a registration method or a
    filter): its iteration events become :class:`Progress` records via ``report``, and closing
    this generator (``GeneratorExit``) stops it (``StopRegistration``/``Abort``), joins the
    worker and re-raises. A heartbeat record is yielded while no event arrives, so the caller
    can cancel at any time. Exceptions raised by ``execute`` propagate to the caller.
    The first record, yielded at once, carries ``start`` and ``message``.
    """
    events: queue.SimpleQueue[Progress | None] = queue.SimpleQueue()  # None: the worker ended
    outcome: dict[str, Any] = {}
    last = Progress(stage, start, total, message)

    def on_iteration() -> None:
        if report is not None:
            step, loss, message = report()
            events.put(Progress(stage, step, total, message, loss))

    def work() -> None:
        try:
            outcome["result"] = execute()
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = error
        finally:
            events.put(None)

    if report is not None:
        process.AddCommand(sitk.sitkIterationEvent, on_iteration)
    worker = threading.Thread(target=work, name=f"warpseg-sitk-{stage}", daemon=True)
    worker.start()
    try:
        yield last
        while True:
            try:
                record = events.get(timeout=HEARTBEAT_SECONDS)
            except queue.Empty:  # nothing new: a heartbeat, so the caller may cancel
                record = Progress(stage, last.step, total, "working", last.loss)
            if record is None:
                break
            last = record
            yield record
    except BaseException:
        _stop(process, worker)
        raise
    finally:
        if report is not None:
            process.RemoveAllCommands()
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def resolve_options(defaults: dict[str, Any], given: dict[str, Any], method: str) -> dict[str, Any]:
    """``defaults`` updated by ``given``, each value cast to its default's type.

    Tuple options accept a sequence or a comma-separated string (``"4,2,1"``, as the CLI gives).
    Raises :class:`~warpseg.errors.InputError` for unknown names or values that do not cast.
    """
    from warpseg.errors import InputError

    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise InputError(f"{method} has no option {', '.join(unknown)}; "
                         f"its options are: {', '.join(sorted(defaults))}")
    resolved = dict(defaults)
    for key, value in given.items():
        default = defaults[key]
        try:
            if isinstance(default, tuple):
                items = value.split(",") if isinstance(value, str) else list(np.atleast_1d(value))
                kind = type(default[0]) if default else float
                resolved[key] = tuple(kind(item) for item in items)
            elif isinstance(default, bool):
                resolved[key] = value if isinstance(value, bool) else _truth(value)
            elif default is None or isinstance(default, str):
                resolved[key] = value
            elif isinstance(default, int):
                resolved[key] = _whole_number(value)
            else:
                resolved[key] = type(default)(value)
        except (TypeError, ValueError) as error:
            raise InputError(f"{method} option {key}={value!r} is not a valid "
                             f"{type(default).__name__}: {error}") from None
    return resolved


def _whole_number(value: Any) -> int:
    """``value`` as an int, exactly (a large seed keeps every digit); a ValueError for a fraction."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    try:
        return int(str(value))
    except ValueError:
        number = float(value)
    if not number.is_integer():
        raise ValueError("give a whole number")
    return int(number)


def _truth(value: Any) -> bool:
    """``value`` as a yes/no answer (true/false, yes/no, on/off, 1/0); a ValueError for anything else."""
    answers = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
    text = str(value).strip().lower()
    if text not in answers:
        raise ValueError("give true or false")
    return answers[text]


class Pyramid:
    """Smoothed, block-averaged copies of an image, built on demand (cancellably) and cached.

    ``level(factor, sigma)`` smooths with a Gaussian of ``sigma`` voxels (of the full-resolution
    image) and then averages ``factor``-wide blocks, as a registration pyramid level; an axis
    is shrunk less where it would keep fewer than 4 voxels.
    """

    def __init__(self, image: sitk.Image) -> None:
        self.image = image
        self._levels: dict[tuple[int, float], sitk.Image] = {(1, 0.0): image}

    def level(self, factor: int, sigma: float) -> Generator[Progress, None, sitk.Image]:
        """The image at shrink ``factor`` after smoothing by ``sigma`` voxels."""
        key = (int(factor), float(sigma))
        if key not in self._levels:
            image = self.image
            if key[1] > 0:
                smoother = sitk.SmoothingRecursiveGaussianImageFilter()
                smoother.SetSigma([key[1] * size for size in image.GetSpacing()])
                image = yield from run_cancellable(lambda: smoother.Execute(self.image), smoother,
                                                   stage="pyramid")
            if key[0] > 1:
                shrinker = sitk.BinShrinkImageFilter()
                # an axis keeps at least 4 voxels (thin stacks): ITK smoothing needs them
                shrinker.SetShrinkFactors([max(1, min(key[0], size // 4)) for size in image.GetSize()])
                source = image
                image = yield from run_cancellable(lambda: shrinker.Execute(source), shrinker,
                                                   stage="pyramid")
            self._levels[key] = image
        return self._levels[key]
