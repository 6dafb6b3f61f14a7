"""VoxelMorph: the learned U-Net baseline (Balakrishnan et al. 2019; Dalca et al. 2019), 2D and 3D.

The pair is concatenated along channels and passed through a U-Net:

* encoder: one 3x3(x3) conv + LeakyReLU(0.2) per entry of ``encoder``, each followed by a 2x max
  pool (so ``size_multiple = 2 ** len(encoder)``);
* decoder: the first ``len(encoder)`` entries of ``decoder`` are convs at the coarse levels, each
  followed by a 2x linear upsampling and concatenation with the encoder feature map of that
  resolution; the remaining entries are convs at full resolution;
* a 3x3(x3) flow head with N(0, 1e-5) weights and zero bias (the field starts at ~0).

With ``integration_steps == 0`` the head output is the displacement. With ``integration_steps > 0``
(diffeomorphic mode, Dalca et al.) it is a stationary velocity field: it is resampled to half
resolution, integrated by scaling and squaring (:func:`~warpseg.spatial.integrate_velocity`) and the
displacement upsampled back, as in the reference implementation's ``int_downsize=2``. Integrating at
half resolution halves the cost per squaring step (8x fewer voxels in 3D) and smooths the velocity.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from warpseg.models.blocks import (
    ConvActivation, check_image_pair, check_ndim, displacement_head, max_pool_layer,
    resize_displacement, resize_features,
)
from warpseg.spatial import integrate_velocity


class VoxelMorph(nn.Module):
    """VoxelMorph U-Net registration network (see the module docstring).

    Parameters
    ----------
    ndim : 2 or 3 spatial dimensions.
    in_channels : channels of each image; the U-Net sees ``2 * in_channels`` (moving, fixed).
    encoder : width of each encoder level (one pooling per entry).
    decoder : widths of the decoder convs; at least ``len(encoder)`` entries.
    integration_steps : 0 for a plain displacement, > 0 for a diffeomorphic field integrated with
        that many scaling-and-squaring steps (7 in the paper).

    Shapes
    ------
    ``forward(moving, fixed)``: both ``(B, in_channels, *S)`` with ``S`` multiples of
    :attr:`size_multiple`. Returns a dict with ``displacement`` ``(B, ndim, *S)`` in voxel units of
    the fixed grid, and in diffeomorphic mode ``velocity`` ``(B, ndim, *S)``.
    """

    def __init__(self, ndim: int = 2, in_channels: int = 1, encoder: Sequence[int] = (16, 32, 32, 32),
                 decoder: Sequence[int] = (32, 32, 32, 32, 32, 16, 16),
                 integration_steps: int = 0) -> None:
        super().__init__()
        self.ndim = check_ndim(ndim)
        self.in_channels = int(in_channels)
        self.encoder_widths, self.decoder_widths = [int(w) for w in encoder], [int(w) for w in decoder]
        if not self.encoder_widths or len(self.decoder_widths) < len(self.encoder_widths):
            raise ValueError(f"decoder {list(decoder)} needs at least as many entries as encoder "
                             f"{list(encoder)} (and the encoder at least one)")
        if integration_steps < 0:
            raise ValueError(f"integration_steps must be >= 0, got {integration_steps}")
        self.integration_steps = int(integration_steps)
        self.size_multiple = 2 ** len(self.encoder_widths)
        self._build()

    @property
    def config(self) -> dict:
        """Constructor arguments: ``VoxelMorph(**model.config)`` rebuilds this architecture."""
        return {"ndim": self.ndim, "in_channels": self.in_channels,
                "encoder": list(self.encoder_widths), "decoder": list(self.decoder_widths),
                "integration_steps": self.integration_steps}

    def _build(self) -> None:
        ndim, levels = self.ndim, len(self.encoder_widths)
        width = 2 * self.in_channels
        self.encoder = nn.ModuleList()
        for out in self.encoder_widths:
            self.encoder.append(ConvActivation(ndim, width, out))
            width = out
        self.pool = max_pool_layer(ndim)(2)
        self.decoder = nn.ModuleList()
        skips = list(reversed(self.encoder_widths))
        for index, out in enumerate(self.decoder_widths):
            self.decoder.append(ConvActivation(ndim, width, out))
            width = out + (skips[index] if index < levels else 0)
        self.flow_head = displacement_head(ndim, width)

    def unet(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """The flow head's output (a displacement or a velocity), ``(B, ndim, *S)``."""
        features = torch.cat([moving, fixed], dim=1)
        skips = []
        for conv in self.encoder:
            features = conv(features)
            skips.append(features)
            features = self.pool(features)
        for conv in self.decoder:
            features = conv(features)
            if skips:
                skip = skips.pop()
                features = torch.cat([resize_features(features, skip.shape[2:]), skip], dim=1)
        return self.flow_head(features)

    def velocity_to_displacement(self, velocity: torch.Tensor) -> torch.Tensor:
        """Integrate a stationary velocity at half resolution and upsample the displacement.

        Shapes
        ------
        velocity ``(B, ndim, *S)`` in voxel units; returns ``(B, ndim, *S)``.
        """
        shape = velocity.shape[2:]
        half = [max(1, size // 2) for size in shape]
        displacement = integrate_velocity(resize_displacement(velocity, half), self.integration_steps)
        return resize_displacement(displacement, shape)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict:
        check_image_pair(moving, fixed, ndim=self.ndim, in_channels=self.in_channels,
                         size_multiple=self.size_multiple)
        flow = self.unet(moving, fixed)
        if self.integration_steps == 0:
            return {"displacement": flow}
        return {"displacement": self.velocity_to_displacement(flow), "velocity": flow}
