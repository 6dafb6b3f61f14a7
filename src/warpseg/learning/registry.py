"""Which network each learned method trains, with its default size."""
from __future__ import annotations

import torch

from warpseg.errors import InputError


def new_model(method: str, ndim: int, **options) -> torch.nn.Module:
    """A freshly initialised network for ``method`` (``options`` override its constructor defaults)."""
    from warpseg.models import NiceTrans, VoxelMorph

    builders = {
        "nice-trans": lambda: NiceTrans(ndim=ndim, **options),
        "vxm": lambda: VoxelMorph(ndim=ndim, **options),
        "vxm-diff": lambda: VoxelMorph(ndim=ndim, integration_steps=7, **options),
    }
    if method not in builders:
        raise InputError(f"no trainable network for {method!r}; choose one of: {', '.join(builders)}")
    return builders[method]()
