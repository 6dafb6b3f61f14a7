"""Warm start: initialise a network from another checkpoint's weights where the architectures agree.

Used to start NICE-Transeg from trained NICE-Trans weights (``warpseg train ... --init-from``).
A parameter of the same name and shape is copied. A convolution that gained input channels (the
same output channels, the old inputs first) gets the old kernel on its leading input channels and
zeros on the new ones, so it computes what it computed before, whatever the new inputs carry:
NICE-Transeg's registration fuse convs take NICE-Trans's inputs first and then the segmentation
branches' features, so the warm-started network registers exactly as the NICE-Trans it came from
until training moves it. Everything else keeps its fresh initialisation.

A network that embeds other ones under different names (PC-Reg-RT's perception net is a
segmentation U-Net, its correspondence net a VoxelMorph) says how to read their weights with
``adapt_state_dict(source, method)``, called first. ``--init-from`` takes comma-separated
checkpoints, applied in turn (PC-Reg-RT from ``seg-unet`` and ``vxm`` weights).
"""
from __future__ import annotations

from pathlib import Path

import torch

from warpseg.errors import InputError


def initialise_from(model: torch.nn.Module, path: str | Path) -> dict[str, int | str]:
    """Copy ``path``'s weights into ``model`` (module docstring); how many tensors were copied, widened, left."""
    from warpseg.learning.checkpoint import read_checkpoint

    path = Path(path)
    if not path.is_file():
        raise InputError(f"--init-from {path}: no such checkpoint")
    checkpoint = read_checkpoint(path)
    source = checkpoint["state_dict"]
    if hasattr(model, "adapt_state_dict"):
        source = model.adapt_state_dict(source, checkpoint.get("method"))
    counts = {"copied": 0, "widened": 0, "fresh": 0}
    with torch.no_grad():
        for name, target in model.state_dict().items():
            weights = source.get(name)
            if weights is not None and weights.shape == target.shape:
                target.copy_(weights)
                counts["copied"] += 1
            elif weights is not None and _widened_input(weights, target):
                target.zero_()
                target[:, :weights.shape[1]] = weights
                counts["widened"] += 1
            else:
                counts["fresh"] += 1
    if counts["copied"] == 0:
        raise InputError(f"--init-from {path}: no weights match this network; give a checkpoint of a related method")
    return {**counts, "from": str(path)}


def _widened_input(old: torch.Tensor, new: torch.Tensor) -> bool:
    """Whether ``new`` is a conv kernel ``(out, in, *k)`` like ``old`` with more input channels."""
    return (old.dim() == new.dim() >= 3 and old.shape[0] == new.shape[0] and old.shape[2:] == new.shape[2:]
            and old.shape[1] < new.shape[1])
