"""PC-Reg-RT as a registration method (perception-guided diffeomorphic field, both segmentations)
and as a segmentation method (its perception net, taught by registration).

Neither needs an atlas at inference: the perception segments one image on its own, and the
correspondence net registers any pair of images.
"""
from __future__ import annotations

from typing import ClassVar

from warpseg.methods.learned_segmentation import OwnSegmentationNet
from warpseg.methods.nice_transeg import NiceTransegRegistration


class PcRegRtRegistration(NiceTransegRegistration):
    """The register contract with PC-Reg-RT; like NICE-Transeg it also writes ``moving_segmentation``
    and ``fixed_segmentation`` (its perception of both images) with the checkpoint's label names."""

    name = "pcreg-rt"
    description = ("PC-Reg-RT: diffeomorphic registration guided by a segmentation net (reverse teaching, "
                   "few-shot); also writes both segmentations.")


class PcRegRtSegmentation(OwnSegmentationNet):
    """PC-Reg-RT's perception net: one image in, label logits out."""

    name: ClassVar[str] = "pcreg-rt"
    description: ClassVar[str] = ("PC-Reg-RT perception net: segmentation taught by registration-made "
                                  "pseudo-labels from K labelled atlases.")


__all__ = ["PcRegRtRegistration", "PcRegRtSegmentation"]
