"""The contract every registration method honours, learned, instance-optimised or classical."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np


PREVIEW_SIZE = 64
"""Live previews have at most this many voxels per axis."""


def preview_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The grid of a live preview of an image of ``shape``: one factor coarser on every axis, at most
    ``PREVIEW_SIZE`` per axis, its cells spanning the image's extent (cell centres, not corners, align).

    Every method that streams previews samples them on this grid, so the viewer can make the live
    layer before the first preview arrives and then fill it in place.
    """
    factor = max(1.0, max(shape) / PREVIEW_SIZE)
    return tuple(max(1, math.ceil(n / factor)) for n in shape)


FINISH = "finish"
"""Sent into a running job (``job.send(FINISH)``) to ask for the best result so far: methods that can
stop early (``RegistrationMethod.can_finish_early``) return it, marked partial; others ignore it."""


@dataclass
class Progress:
    """One progress report of a long job; the CLI prints it and the GUI draws it.

    ``preview`` optionally carries a small current warped image (or atlas) for live display.
    """

    stage: str
    step: int
    total: int | None = None
    message: str = ""
    loss: float | None = None
    preview: np.ndarray | None = field(default=None, repr=False)

    @property
    def fraction(self) -> float | None:
        """Share of the stage done, in [0, 1], or None when the total is unknown."""
        if not self.total:
            return None
        return min(1.0, max(0.0, self.step / self.total))


@dataclass
class RegistrationInput:
    """A pair on one voxel grid (the fixed image's), intensities normalised to [0, 1].

    Shapes
    ------
    moving, fixed: ``S`` (2D or 3D); labels: ``S`` integer or None; spacing: ``(ndim,)`` mm.
    """

    moving: np.ndarray
    fixed: np.ndarray
    spacing: tuple[float, ...]
    moving_labels: np.ndarray | None = None
    fixed_labels: np.ndarray | None = None
    device: str = "cpu"

    @property
    def ndim(self) -> int:
        return self.fixed.ndim


@dataclass
class MethodOutput:
    """What a method returns: the displacement on the fixed grid, in fixed voxel units.

    Shapes
    ------
    displacement: ``(ndim, *S)`` float32; the warp is ``moving(x + displacement(x))``.
    """

    displacement: np.ndarray
    details: dict[str, Any] = field(default_factory=dict)
    partial: bool = False


class Method(ABC):
    """What every method has, registration or segmentation: a name, options, weights, requirements."""

    name: ClassVar[str]
    description: ClassVar[str]
    needs_weights: ClassVar[bool] = False
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self, weights: str | None = None, **options: Any) -> None:
        self.weights = weights
        self.options = options

    @classmethod
    def missing_requirements(cls) -> list[str]:
        """Python packages this method needs that are not installed."""
        from importlib.util import find_spec

        return [package for package in cls.requires if find_spec(package) is None]


class RegistrationMethod(Method):
    """Base class of registration methods; subclasses set the class attributes and implement :meth:`run`."""

    iterative: ClassVar[bool] = False
    can_finish_early: ClassVar[bool] = False
    streams_preview: ClassVar[bool] = False  # yields Progress records with a preview (a live layer in the viewer)

    @classmethod
    def has_shipped_weights(cls, ndim: int) -> bool:
        """True when the package ships weights for ``ndim`` dimensions (always, for untrained methods)."""
        return not cls.needs_weights

    @abstractmethod
    def run(self, pair: RegistrationInput) -> Generator[Progress, None, MethodOutput]:
        """Register ``pair``: yield :class:`Progress` records, return a :class:`MethodOutput`.

        Closing the generator cancels the work; it must stop promptly. A method with
        ``can_finish_early`` returns its best result so far, partial, when :data:`FINISH` is sent.
        """
