"""PC-Reg-RT: a perception (segmentation) net guiding a correspondence (registration) net, 2D and 3D.

METHODS.md §4 (He et al., "perception-correspondence decoupling + reverse teaching"). Two networks
in one module, so that one checkpoint holds both:

* ``perception``: a :class:`SegmentationUNet` mapping an image to label logits;
* ``correspondence``: a diffeomorphic :class:`VoxelMorph` (stationary velocity integrated by scaling
  and squaring) whose input per image is the intensity *and* the perception's label probabilities,
  ``1 + num_labels`` channels, so the perceived structures steer the field.

The probabilities enter the correspondence net detached: each net is trained by its own terms
(:mod:`warpseg.learning.pcreg_rt_training`), the registration by the perception's guidance and the
perception by the registration's pseudo-labels (reverse teaching).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from warpseg.models.blocks import check_image_pair, check_ndim
from warpseg.models.segmentation_unet import SegmentationUNet
from warpseg.models.voxelmorph import VoxelMorph


class PcRegRt(nn.Module):
    """Perception net + perception-guided diffeomorphic registration net (module docstring).

    Parameters
    ----------
    ndim : 2 or 3.
    num_labels : segmentation classes including background (5 for seg4, 36 for seg35).
    segmentation_channels : encoder widths of the perception U-Net.
    encoder, decoder : widths of the correspondence U-Net (as :class:`VoxelMorph`).
    integration_steps : scaling-and-squaring steps of the velocity (> 0: diffeomorphic).

    Shapes
    ------
    ``forward(moving, fixed)``: both ``(B, 1, *S)``, ``S`` multiples of :attr:`size_multiple`.
    Returns ``displacement`` and ``velocity`` ``(B, ndim, *S)`` (voxel units of the fixed grid) and
    ``moving_segmentation``, ``fixed_segmentation`` logits ``(B, num_labels, *S)``.
    """

    def __init__(self, ndim: int = 2, num_labels: int = 5, segmentation_channels: Sequence[int] = (16, 32, 64, 64),
                 encoder: Sequence[int] = (16, 32, 32, 32), decoder: Sequence[int] = (32, 32, 32, 32, 32, 16, 16),
                 integration_steps: int = 7) -> None:
        super().__init__()
        self.ndim, self.num_labels = check_ndim(ndim), int(num_labels)
        self.perception = SegmentationUNet(ndim, self.num_labels, 1, segmentation_channels)
        self.correspondence = VoxelMorph(ndim, in_channels=1 + self.num_labels, encoder=encoder, decoder=decoder,
                                         integration_steps=integration_steps)
        self.size_multiple = math.lcm(self.perception.size_multiple, self.correspondence.size_multiple)

    @property
    def config(self) -> dict:
        """Constructor arguments: ``PcRegRt(**model.config)`` rebuilds this architecture."""
        registration = self.correspondence.config
        return {"ndim": self.ndim, "num_labels": self.num_labels,
                "segmentation_channels": list(self.perception.channels), "encoder": registration["encoder"],
                "decoder": registration["decoder"], "integration_steps": registration["integration_steps"]}

    def adapt_state_dict(self, source: dict[str, torch.Tensor], method: str | None) -> dict[str, torch.Tensor]:
        """Another method's weights named as this network's, for a warm start (``--init-from``).

        ``seg-unet`` weights become the perception net. ``vxm`` weights become the correspondence
        net: VoxelMorph's first conv sees ``(moving, fixed)``, here each image comes with its
        perceived label probabilities, ``(moving, P_moving, fixed, P_fixed)``; the intensity kernels
        go to the intensity channels and the probability channels start at zero, so the net computes
        VoxelMorph's flow whatever is perceived, until training moves it. Others are returned as given.
        """
        if method == "seg-unet":
            return {f"perception.{name}": weights for name, weights in source.items()}
        if method != "vxm":
            return source
        adapted = {f"correspondence.{name}": weights for name, weights in source.items()}
        first = "correspondence." + next(name for name, weights in self.correspondence.named_parameters()
                                         if weights.dim() == self.ndim + 2)  # the input conv's kernel
        kernel = adapted.get(first)
        if kernel is not None and kernel.shape[1] == 2:
            spread = kernel.new_zeros((kernel.shape[0], 2 * (1 + self.num_labels), *kernel.shape[2:]))
            spread[:, 0], spread[:, 1 + self.num_labels] = kernel[:, 0], kernel[:, 1]
            adapted[first] = spread
        return adapted

    def segment(self, image: torch.Tensor) -> torch.Tensor:
        """The perception's label logits: ``(B, 1, *S)`` to ``(B, num_labels, *S)``."""
        return self.perception(image)["segmentation"]

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict:
        check_image_pair(moving, fixed, ndim=self.ndim, in_channels=1, size_multiple=self.size_multiple)
        logits = self.segment(torch.cat([moving, fixed]))
        moving_logits, fixed_logits = logits.split(moving.shape[0])
        perceived = torch.softmax(logits, dim=1).detach()
        moving_perceived, fixed_perceived = perceived.split(moving.shape[0])
        outputs = self.correspondence(torch.cat([moving, moving_perceived], dim=1),
                                      torch.cat([fixed, fixed_perceived], dim=1))
        return {**outputs, "moving_segmentation": moving_logits, "fixed_segmentation": fixed_logits}
