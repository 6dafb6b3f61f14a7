"""Atlas propagation: register a labelled atlas to the image and carry its labels across.

The classical competitor of learned few-shot segmentation: any registration method of the
registry (``registration`` option, default ``sitk-demons``) aligns the atlas image to the image,
and the atlas label map is warped by nearest neighbour onto the image's grid.
"""
from __future__ import annotations

from collections.abc import Generator
from typing import Any, ClassVar

from warpseg.errors import InputError
from warpseg.io import Volume
from warpseg.methods.base import Progress
from warpseg.methods.segmenter import SegmentationMethod, SegmentationOutput

DEFAULT_REGISTRATION = "sitk-demons"


class AtlasPropagation(SegmentationMethod):
    """Segment by registering the atlas to the image with a registration method, then warping its labels."""

    name: ClassVar[str] = "atlas-propagation"
    description: ClassVar[str] = ("Register a labelled atlas to the image (any registration method, default "
                                  "sitk-demons) and carry its labels across.")
    needs_atlas: ClassVar[bool] = True

    def run(self, image: Volume, *, atlas: tuple[Volume, Volume] | None, device: str
            ) -> Generator[Progress, None, SegmentationOutput]:
        from warpseg.engine.register import register

        if atlas is None:
            raise InputError(f"{self.name} needs an atlas: an image and its label map (--atlas, --atlas-labels)")
        options: dict[str, Any] = dict(self.options)
        registration = str(options.pop("registration", DEFAULT_REGISTRATION))
        atlas_image, atlas_labels = atlas
        result = yield from register(atlas_image, image, registration, moving_labels=atlas_labels,
                                     weights=self.weights, device=device, options=options)
        details = {"registration": registration, "registration_seconds": round(result.seconds_registration, 3),
                   "folding_percent": result.metrics["folding_percent"]}
        return SegmentationOutput(result.warped_labels.array, atlas_labels.label_names, details, result.partial)
