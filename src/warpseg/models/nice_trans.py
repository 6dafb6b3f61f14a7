"""NICE-Trans: non-iterative coarse-to-fine joint affine and deformable registration (2D and 3D).

Architecture (METHODS.md §1; Meng et al., MICCAI 2023; slides ``nice-transeg_slides.txt``)
-------------------------------------------------------------------------------------------
* **Dual-path encoder**: one stack of 5 conv modules (two 3x3(x3) convs + LeakyReLU 0.2 each,
  max-pool 2 between modules) with *shared* weights encodes moving and fixed separately (run as one
  batch of 2B). The features are computed once and reused by every registration step.
* **Affine step** at the coarsest level: ``1x1 conv(fixed, moving) -> Swin pair -> affine head``.
  The head (global average, two linear layers, tanh) predicts ``6`` (2D) / ``12`` (3D) parameters
  ``(M | t)`` of the map ``p -> (I + M) p + t`` in *centred, isotropically normalised* coordinates
  ``p = (x - c) / s`` with ``c`` the grid centre and ``s`` half the longest side in voxels. These
  coordinates mean the same physical point at every pyramid level, so the prediction does not depend
  on the level's resolution; :func:`normalised_to_voxel_affine` converts it to a voxel-coordinate
  matrix of any level (``affine`` output: the full-resolution one). The last linear layer is
  zero-initialised: the affine starts as the identity.
* **Deformable steps**, one per level, coarse to fine (1 affine + 5 deformable steps, as in the
  slides): warp the level's moving features with the current transform, concatenate them with the
  level's fixed features and the (upsampled) decoder state of the previous step, fuse by a 1x1 conv,
  refine with a Swin block pair (a 3x3 conv + LeakyReLU at full resolution, see below), and predict a
  residual displacement with a 3x3 conv (weights N(0, 1e-5), zero bias).
* **Composition.** The transform at every level is ``x -> A (x + d(x)) + b``: first a deformable
  part ``d``, then the affine ``(A, b)``. Its displacement ``a(x) + A d(x)`` (``a`` the affine
  displacement) is evaluated analytically on each level's grid, so the affine part is never
  interpolated. A residual ``r`` that aligns the warped moving features to the fixed ones updates
  ``d <- compose_displacements(d, r)`` (``r`` first, then the current transform), and ``d`` is
  upsampled (values scaled by 2) to the next level.

Deviations from the paper's code, and why
-----------------------------------------
* Small by default for CPU training on 2 cores: widths (8, 16, 32, 32, 32) for encoder and decoder
  (the paper's decoder is twice as wide as its encoder), 2 heads, MLP ratio 2 (paper: 4), and one
  Swin pair (regular + shifted window) per level instead of 4 Swin blocks. The window is the
  paper's 5. As in the paper's code there is no Swin at full resolution (a 3x3 conv instead).
* 1 affine + 5 deformable steps, as the slides state; the paper's code has only the affine at the
  coarsest level (1 + 4).
* The decoder state is upsampled linearly (the paper: transposed conv + LayerNorm).
* Residuals are *composed* with the current transform rather than added to it, and the affine is
  predicted in isotropic centred coordinates (the paper uses per-axis ``[-1, 1]`` coordinates, which
  turn rotations into shears on non-square grids).
* Encoder conv modules as the slides and specification describe them (conv + LeakyReLU, max
  pooling); the paper's code adds instance normalisation and uses average pooling.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from warpseg.models.blocks import (
    ConvActivation, DoubleConv, apply_linear, check_image_pair, check_ndim, conv_layer,
    displacement_head, max_pool_layer, resize_displacement, resize_features,
)
from warpseg.models.swin import SwinBlockPair
from warpseg.spatial import affine_displacement, compose_displacements, warp_image


def normalised_to_voxel_affine(normalised: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Convert an affine in centred normalised coordinates to voxel coordinates of a grid.

    With ``c = (shape - 1) / 2`` and ``s = max(shape) / 2``, the map ``p -> L p + t`` on
    ``p = (x - c) / s`` is ``x -> L x + (s t + c - L c)`` on voxel coordinates ``x``.

    Shapes
    ------
    normalised ``(B, ndim, ndim + 1)``; returns ``(B, ndim, ndim + 1)`` for the grid ``shape``.
    """
    ndim = len(shape)
    centre = torch.tensor([(size - 1) / 2 for size in shape], dtype=normalised.dtype,
                          device=normalised.device)
    half_extent = max(shape) / 2
    linear, shift = normalised[:, :, :ndim], normalised[:, :, ndim]
    offset = half_extent * shift + centre - linear @ centre
    return torch.cat([linear, offset[:, :, None]], dim=2)


class AffineHead(nn.Module):
    """Global average pooling and two linear layers to an affine in normalised coordinates.

    The output is ``[I | 0] + tanh(params)``; the last layer is zero-initialised (identity).

    Shapes
    ------
    input ``(B, channels, *S)``; output ``(B, ndim, ndim + 1)`` (see
    :func:`normalised_to_voxel_affine`).
    """

    def __init__(self, ndim: int, channels: int) -> None:
        super().__init__()
        self.ndim = ndim
        self.hidden = nn.Sequential(nn.Linear(channels, channels), nn.LeakyReLU(0.2))
        self.parameters_out = nn.Linear(channels, ndim * (ndim + 1))
        nn.init.zeros_(self.parameters_out.weight)
        nn.init.zeros_(self.parameters_out.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = features.mean(dim=tuple(range(2, features.dim())))
        params = torch.tanh(self.parameters_out(self.hidden(pooled)))
        identity = identity_affine(features.shape[0], self.ndim, features)
        return identity + params.view(-1, self.ndim, self.ndim + 1)


def identity_affine(batch: int, ndim: int, like: torch.Tensor) -> torch.Tensor:
    """``[I | 0]`` repeated over the batch, on ``like``'s device and dtype: ``(B, ndim, ndim + 1)``."""
    eye = torch.eye(ndim, ndim + 1, dtype=like.dtype, device=like.device)
    return eye.expand(batch, ndim, ndim + 1)


class NiceTrans(nn.Module):
    """NICE-Trans registration network (see the module docstring for the architecture).

    Parameters
    ----------
    ndim : 2 or 3 spatial dimensions.
    in_channels : channels of each image (moving and fixed alike).
    channels : encoder width of each level, fine to coarse (5 levels in the paper); the decoder
        uses the same widths.
    window : Swin window side in voxels (the paper uses 5).
    heads : attention heads of the Swin pairs at levels 2.. (an int for all, or one per level).
    mlp_ratio : Swin MLP hidden width relative to the level's width.
    affine : predict the affine step; if False it is the identity (a purely deformable network
        without an affine head).
    affine_only : return the affine transform only and skip the deformable steps (an attribute that
        may be switched after construction: the weights are the same in both modes).

    Shapes
    ------
    ``forward(moving, fixed)``: both ``(B, in_channels, *S)`` with ``S`` multiples of
    :attr:`size_multiple`. Returns a dict:

    * ``displacement`` ``(B, ndim, *S)``: the full transform (voxel units of the fixed grid);
    * ``affine`` ``(B, ndim, ndim + 1)``: the affine on full-resolution voxel coordinates;
    * ``affine_displacement`` ``(B, ndim, *S)``: the affine's displacement;
    * ``level_displacements``: list of ``(B, ndim, *S / 2**k)`` for ``k = L-1 .. 0`` (coarse to fine,
      each the full transform in that level's voxel units); empty when ``affine_only``.
    """

    def __init__(self, ndim: int = 2, in_channels: int = 1,
                 channels: Sequence[int] = (8, 16, 32, 32, 32), window: int = 5,
                 heads: int | Sequence[int] = 2, mlp_ratio: float = 2.0, affine: bool = True,
                 affine_only: bool = False) -> None:
        super().__init__()
        self.ndim = check_ndim(ndim)
        self.in_channels, self.channels = in_channels, [int(c) for c in channels]
        if len(self.channels) < 2:
            raise ValueError(f"channels needs at least 2 levels, got {channels}")
        levels = len(self.channels)
        heads = [int(heads)] * (levels - 1) if isinstance(heads, int) else [int(h) for h in heads]
        if len(heads) != levels - 1:
            raise ValueError(f"heads needs {levels - 1} entries (levels 2..{levels}), got {heads}")
        if affine_only and not affine:
            raise ValueError("affine_only=True needs affine=True")
        self.window, self.heads, self.mlp_ratio = int(window), heads, float(mlp_ratio)
        self.affine, self.affine_only = bool(affine), bool(affine_only)
        self.size_multiple = 2 ** (levels - 1)
        self._build_encoder()
        self._build_decoder()

    @property
    def config(self) -> dict:
        """Constructor arguments: ``NiceTrans(**model.config)`` rebuilds this architecture."""
        return {"ndim": self.ndim, "in_channels": self.in_channels, "channels": list(self.channels),
                "window": self.window, "heads": list(self.heads), "mlp_ratio": self.mlp_ratio,
                "affine": self.affine, "affine_only": self.affine_only}

    def _build_encoder(self) -> None:
        widths = [self.in_channels] + self.channels
        self.encoder = nn.ModuleList(
            [DoubleConv(self.ndim, widths[i], widths[i + 1]) for i in range(len(self.channels))])
        self.pool = max_pool_layer(self.ndim)(2)

    def _build_decoder(self) -> None:
        ndim, widths, conv = self.ndim, self.channels, conv_layer(self.ndim)
        coarsest = widths[-1]
        self.affine_fuse = conv(2 * coarsest, coarsest, 1)
        self.affine_refine = SwinBlockPair(coarsest, self.heads[-1], ndim, self.window, self.mlp_ratio)
        self.affine_head = AffineHead(ndim, coarsest) if self.affine else None
        state_widths = widths[1:] + [coarsest]  # decoder state entering each level
        self.fuse = nn.ModuleList(
            [conv(self.fuse_width(width, state), width, 1) for width, state in zip(widths, state_widths)])
        self.refine = nn.ModuleList([ConvActivation(ndim, widths[0], widths[0])] + [
            SwinBlockPair(width, head, ndim, self.window, self.mlp_ratio)
            for width, head in zip(widths[1:], self.heads)])
        self.displacement_heads = nn.ModuleList([displacement_head(ndim, width) for width in widths])

    def fuse_width(self, width: int, state: int) -> int:
        """Input channels of a level's fuse conv: fixed and warped moving features plus the state."""
        return 2 * width + state

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Features of every level, fine to coarse: ``(B, channels[k], *S / 2**k)``."""
        features = []
        for level, module in enumerate(self.encoder):
            images = module(images if level == 0 else self.pool(images))
            features.append(images)
        return features

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict:
        moving_features, fixed_features, normalised, state, outputs = self.encode_and_align(moving, fixed)
        if self.affine_only:
            return with_levels(outputs, [])
        return with_levels(outputs, self._deformable_steps(normalised, moving_features, fixed_features, state))

    def encode_and_align(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple:
        """Check the pair, encode both images and run the affine step: the moving and fixed feature
        lists, the normalised affine, the coarsest state and the affine outputs."""
        check_image_pair(moving, fixed, ndim=self.ndim, in_channels=self.in_channels,
                         size_multiple=self.size_multiple)
        moving_features, fixed_features = self.encode_pair(moving, fixed)
        normalised, state = self.affine_step(moving_features, fixed_features)
        return moving_features, fixed_features, normalised, state, self.affine_outputs(normalised, fixed.shape[2:])

    def encode_pair(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[list, list]:
        """Both images through the shared encoder in one batch of ``2B``: (moving, fixed) feature lists."""
        both = self.encode(torch.cat([moving, fixed], dim=0))
        batch = moving.shape[0]
        return [f[:batch] for f in both], [f[batch:] for f in both]

    def affine_step(self, moving_features: list[torch.Tensor], fixed_features: list[torch.Tensor]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The coarsest level: the normalised affine ``(B, ndim, ndim + 1)`` and the decoder state."""
        state = self.affine_fuse(torch.cat([fixed_features[-1], moving_features[-1]], dim=1))
        state = self.affine_refine(state)
        if self.affine_head is not None:
            return self.affine_head(state), state
        return identity_affine(state.shape[0], self.ndim, state), state

    def affine_outputs(self, normalised: torch.Tensor, shape: Sequence[int]) -> dict:
        """``affine`` and ``affine_displacement`` on the full-resolution grid of ``shape``."""
        affine = normalised_to_voxel_affine(normalised, shape)
        return {"affine": affine, "affine_displacement": affine_displacement(affine, shape)}

    def level_transform(self, normalised: torch.Tensor, deformable: torch.Tensor, shape: Sequence[int]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """The affine's displacement on a level's grid and the deformable part resized onto it.

        The level's full transform is ``affine_part + apply_linear(linear, deformable)``.

        Shapes
        ------
        deformable ``(B, ndim, *S_previous)``; returns two ``(B, ndim, *shape)``.
        """
        affine_part = affine_displacement(normalised_to_voxel_affine(normalised, shape), shape)
        return affine_part, resize_displacement(deformable, shape)

    def _deformable_steps(self, normalised: torch.Tensor, moving_features: list[torch.Tensor],
                          fixed_features: list[torch.Tensor], state: torch.Tensor) -> list[torch.Tensor]:
        """Coarse-to-fine residual steps; returns the full transform at every level, coarse to fine."""
        linear = normalised[:, :, :self.ndim]
        deformable = state.new_zeros((state.shape[0], self.ndim, *state.shape[2:]))
        level_displacements = []
        for level in reversed(range(len(self.channels))):
            shape = fixed_features[level].shape[2:]
            affine_part, deformable = self.level_transform(normalised, deformable, shape)
            current = affine_part + apply_linear(linear, deformable)
            warped = warp_image(moving_features[level], current)
            state = resize_features(state, shape)
            state = self.fuse[level](torch.cat([fixed_features[level], warped, state], dim=1))
            state = self.refine[level](state)
            residual = self.displacement_heads[level](state)
            deformable = compose_displacements(deformable, residual)
            level_displacements.append(affine_part + apply_linear(linear, deformable))
        return level_displacements


def with_levels(outputs: dict, levels: list[torch.Tensor]) -> dict:
    """``outputs`` with the transform of every level and the final ``displacement``: the finest
    level's, or the affine's when there are no levels (affine-only)."""
    final = levels[-1] if levels else outputs["affine_displacement"]
    return {**outputs, "displacement": final, "level_displacements": levels}
