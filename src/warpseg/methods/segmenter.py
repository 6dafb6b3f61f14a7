"""The contract every segmentation method honours: an image in, a label map on its grid out."""
from __future__ import annotations

from abc import abstractmethod
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from warpseg.methods.base import Method, Progress

if TYPE_CHECKING:
    from warpseg.io import Volume


SEGMENTATIONS_KEY = "segmentations"
"""Key of :attr:`MethodOutput.details` under which a registration method that also segments returns
``{name: (labels, label_names)}`` (labels on the fixed grid); the engine turns them into
``RegistrationResult.segmentations`` and writes ``<name>.nii.gz``, keeping the arrays out of
``result.json``."""


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


class SegmentationMethod(Method):
    """Base class of segmentation methods; subclasses set the class attributes and :meth:`run`.

    ``needs_atlas`` methods get a labelled atlas (image and label map, any grid) from the caller.
    """

    needs_atlas: ClassVar[bool] = False

    @abstractmethod
    def run(self, image: Volume, *, atlas: tuple[Volume, Volume] | None, device: str
            ) -> Generator[Progress, None, SegmentationOutput]:
        """Segment ``image`` (yield :class:`Progress`, return a :class:`SegmentationOutput`).

        Closing the generator cancels the work; it must stop promptly.
        """
