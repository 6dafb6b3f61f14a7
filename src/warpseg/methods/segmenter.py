"""The contract every segmentation method honours: an image in, a label map on its grid out."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from warpseg.methods.base import Progress

if TYPE_CHECKING:
    from warpseg.io import Volume


@dataclass
class SegmentationOutput:
    """A label map on the input image's grid, its label names, and what the method reports.

    Shapes
    ------
    labels: ``S`` integer, the image's shape.
    """

    labels: np.ndarray
    label_names: dict[int, str] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    partial: bool = False


class SegmentationMethod(ABC):
    """Base class of segmentation methods; subclasses set the class attributes and :meth:`run`.

    ``needs_atlas`` methods get a labelled atlas (image and label map, any grid) from the caller.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    needs_weights: ClassVar[bool] = False
    needs_atlas: ClassVar[bool] = False
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self, weights: str | None = None, **options: Any) -> None:
        self.weights = weights
        self.options = options

    @classmethod
    def missing_requirements(cls) -> list[str]:
        from importlib.util import find_spec

        return [package for package in cls.requires if find_spec(package) is None]

    @abstractmethod
    def run(self, image: Volume, *, atlas: tuple[Volume, Volume] | None, device: str
            ) -> Generator[Progress, None, SegmentationOutput]:
        """Segment ``image`` (yield :class:`Progress`, return a :class:`SegmentationOutput`).

        Closing the generator cancels the work; it must stop promptly.
        """
