"""Which network each learned method trains, and which methods train few-shot or while building an atlas."""
from __future__ import annotations

import torch

from warpseg.errors import InputError

SEGMENTATION_NETWORKS = ("nice-transeg", "seg-unet", "pcreg-rt", "brbs")
"""Methods trained few-shot on labelled atlases (``--labels``, ``--shots``) instead of as registration."""

SELF_PAIRING_METHODS = ("nice-transeg", "pcreg-rt")
"""Few-shot methods that learn from the fixed side's labels or pseudo-labels, so with one atlas self-pairs
(``--self-pairs``) help them."""

ATLAS_NETWORKS = ("atlas-istn",)
"""Methods trained while building their atlas (``warpseg atlas build``), not by ``warpseg train``."""


def new_model(method: str, ndim: int, **options) -> torch.nn.Module:
    """A freshly initialised network for ``method`` (``options`` override its constructor defaults)."""
    from warpseg.models import (AtlasIstn, Brbs, LinearDeformable, NiceTrans, NiceTranseg, PcRegRt, SegmentationUNet,
                                VoxelMorph)

    builders = {
        "nice-trans": lambda: NiceTrans(ndim=ndim, **options),
        "vxm": lambda: VoxelMorph(ndim=ndim, **options),
        "vxm-diff": lambda: VoxelMorph(ndim=ndim, integration_steps=7, **options),
        "lindef": lambda: LinearDeformable(ndim=ndim, **options),
        "nice-transeg": lambda: NiceTranseg(ndim=ndim, **options),
        "seg-unet": lambda: SegmentationUNet(ndim=ndim, **options),
        "atlas-istn": lambda: AtlasIstn(ndim=ndim, **options),
        "pcreg-rt": lambda: PcRegRt(ndim=ndim, **options),
        "brbs": lambda: Brbs(ndim=ndim, **options),
    }
    if method not in builders:
        raise InputError(f"no trainable network for {method!r}; choose one of: {', '.join(builders)}")
    return builders[method]()

