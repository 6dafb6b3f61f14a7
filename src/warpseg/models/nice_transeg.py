"""NICE-Transeg: NICE-Trans plus two progressively coupled segmentation branches (2D and 3D).

``R(I_m, I_f) = (phi, S_M, S_F)`` (METHODS.md §2; slides ``nice-transeg_slides.txt``). The dual-path
encoder, the affine step and the registration decoder are NICE-Trans's (:class:`NiceTrans` is the
base class). Two segmentation decoders, one for the moving and one for the fixed image, are built
like the registration decoder (a 1x1 fuse conv and a refining block per level) and end in a 1x1
conv to ``num_labels`` logits. The refining block is a Swin block pair on the coarse levels
(``branch_swin_from = 2`` onwards: 40x48 pixels and coarser for a 160x192 slice) and a 3x3 conv +
LeakyReLU on the two finer ones.

Progressive coupling (as in PGCNet: concatenate, then fuse), at every level ``k``, coarse to fine,
with ``phi_k`` the transform before the level's residual and ``R`` the registration decoder state
of the previous level (upsampled):

* moving branch: ``S_M,k = fuse(m_k, S_M,k+1, R)`` (its features, its previous state, registration);
* fixed branch: ``S_F,k = fuse(f_k, S_F,k+1, R, S_M,k o phi_k)`` (also the moving branch's features
  warped into the fixed space, the feature-level counterpart of the loss ``Dice(S_F, S_M o phi)``);
* registration: ``R_k = fuse(f_k, m_k o phi_k, R, S_F,k, S_M,k o phi_k)``, then the NICE-Trans
  residual step. The segmentation branches start from the coarsest encoder features.

Deviations: the slides give no layer-level detail of the coupling; the above is our reading of
"exchange features at every decoder level". The branches have NICE-Trans's (small) widths. Swin
pairs on every level of both branches made inference about 2-2.7x NICE-Trans's time (the slides
report ~3x, and call the cost the model's weakness); nearly all of the extra time is the Swin pair
at level 1 (80x96), and with convs on the two finest levels it is about 1.3-1.6x (CPU, 160x192).
Windowed attention matters least there: at those levels a 5-pixel window sees a small fraction of
the image, as a conv does.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from warpseg.models.blocks import ConvActivation, apply_linear, conv_layer, resize_features
from warpseg.models.nice_trans import NiceTrans, with_levels
from warpseg.models.swin import SwinBlockPair
from warpseg.spatial import compose_displacements, warp_image


class SegmentationBranch(nn.Module):
    """A segmentation decoder fed level by level: fuse the inputs, refine, and (at the end) classify.

    Parameters
    ----------
    ndim, widths, heads, window, mlp_ratio : as :class:`NiceTrans` (``heads`` for levels 2..).
    input_widths : channels entering each level's fuse conv, fine to coarse.
    num_labels : output classes, background included.
    swin_from : first level (0 = full resolution) refined by a Swin pair; finer levels use a conv.

    Shapes
    ------
    ``step(level, inputs)``: tensors ``(B, C_i, *S_level)`` with ``sum C_i == input_widths[level]``;
    returns ``(B, widths[level], *S_level)``. ``logits(state)``: ``(B, widths[0], *S)`` to
    ``(B, num_labels, *S)``.
    """

    def __init__(self, ndim: int, widths: Sequence[int], input_widths: Sequence[int], heads: Sequence[int],
                 window: int, mlp_ratio: float, num_labels: int, swin_from: int) -> None:
        super().__init__()
        conv = conv_layer(ndim)
        self.fuse = nn.ModuleList([conv(inputs, width, 1) for inputs, width in zip(input_widths, widths)])
        self.refine = nn.ModuleList([ConvActivation(ndim, widths[0], widths[0])] + [
            SwinBlockPair(width, head, ndim, window, mlp_ratio) if level >= max(1, swin_from)
            else ConvActivation(ndim, width, width)
            for level, (width, head) in enumerate(zip(widths[1:], heads), start=1)])
        self.classify = conv(widths[0], num_labels, 1)

    def step(self, level: int, inputs: list[torch.Tensor]) -> torch.Tensor:
        return self.refine[level](self.fuse[level](torch.cat(inputs, dim=1)))

    def logits(self, state: torch.Tensor) -> torch.Tensor:
        return self.classify(state)


class NiceTranseg(NiceTrans):
    """NICE-Trans with moving and fixed segmentation branches coupled to its decoder (module docstring).

    Parameters
    ----------
    num_labels : segmentation classes including background (5 for seg4, 36 for seg35).
    branch_swin_from : first level whose segmentation-branch block is a Swin pair (module docstring).
    others : as :class:`NiceTrans`. With ``affine_only`` the ``displacement`` is the affine's; the
        segmentations still come from the full coupled decoder.

    Shapes
    ------
    ``forward(moving, fixed)``: both ``(B, in_channels, *S)``, ``S`` multiples of
    :attr:`size_multiple`. Returns NiceTrans's dict plus ``moving_segmentation`` and
    ``fixed_segmentation``: logits ``(B, num_labels, *S)`` of the moving and the fixed image.
    """

    def __init__(self, ndim: int = 2, num_labels: int = 5, branch_swin_from: int = 2, **options) -> None:
        if int(num_labels) < 2:
            raise ValueError(f"num_labels counts background too and must be >= 2, got {num_labels}")
        self.num_labels, self.branch_swin_from = int(num_labels), int(branch_swin_from)
        super().__init__(ndim=ndim, **options)
        self._build_segmentation_branches()

    @property
    def config(self) -> dict:
        """Constructor arguments: ``NiceTranseg(**model.config)`` rebuilds this architecture."""
        return {**super().config, "num_labels": self.num_labels, "branch_swin_from": self.branch_swin_from}

    def freeze_registration(self) -> int:
        """Stop training everything but the segmentation branches; returns how many tensors were frozen.

        The encoder, the affine step and the registration decoder (with its fuse weights on the
        branches' features: zeros after a warm start from NICE-Trans) keep their values, so the field is
        the warm start's while the branches learn.
        """
        self.requires_grad_(False)
        for parameter in self.segmentation_branch_parameters():
            parameter.requires_grad_(True)
        return sum(not parameter.requires_grad for parameter in self.parameters())

    def segmentation_branch_parameters(self) -> list[torch.nn.Parameter]:
        """The moving and fixed segmentation branches' parameters (everything else registers)."""
        return [*self.moving_branch.parameters(), *self.fixed_branch.parameters()]

    def fuse_width(self, width: int, state: int) -> int:
        """The registration fuse also takes the fixed and the warped moving segmentation features."""
        return 4 * width + state

    def _build_segmentation_branches(self) -> None:
        widths = self.channels
        states = widths[1:] + [widths[-1]]
        common = dict(ndim=self.ndim, widths=widths, heads=self.heads, window=self.window,
                      mlp_ratio=self.mlp_ratio, num_labels=self.num_labels,
                      swin_from=self.branch_swin_from)
        self.moving_branch = SegmentationBranch(
            input_widths=[width + 2 * state for width, state in zip(widths, states)], **common)
        self.fixed_branch = SegmentationBranch(
            input_widths=[2 * width + 2 * state for width, state in zip(widths, states)], **common)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict:
        moving_features, fixed_features, normalised, state, outputs = self.encode_and_align(moving, fixed)
        levels, moving_state, fixed_state = self._coupled_steps(normalised, moving_features, fixed_features, state)
        outputs = {**outputs, "moving_segmentation": self.moving_branch.logits(moving_state),
                   "fixed_segmentation": self.fixed_branch.logits(fixed_state)}
        return with_levels(outputs, [] if self.affine_only else levels)

    def _coupled_steps(self, normalised: torch.Tensor, moving_features: list[torch.Tensor],
                       fixed_features: list[torch.Tensor], state: torch.Tensor):
        """Coarse to fine: both segmentation branches, then the registration step, at every level.

        Returns the full transform of every level (coarse to fine) and the full-resolution states
        of the moving and fixed branches ``(B, channels[0], *S)``.
        """
        linear = normalised[:, :, :self.ndim]
        deformable = state.new_zeros((state.shape[0], self.ndim, *state.shape[2:]))
        moving_state, fixed_state = moving_features[-1], fixed_features[-1]
        level_displacements = []
        for level in reversed(range(len(self.channels))):
            shape = fixed_features[level].shape[2:]
            affine_part, deformable = self.level_transform(normalised, deformable, shape)
            current = affine_part + apply_linear(linear, deformable)
            state = resize_features(state, shape)
            moving_state = self.moving_branch.step(
                level, [moving_features[level], resize_features(moving_state, shape), state])
            warped_segmentation = warp_image(moving_state, current)
            fixed_state = self.fixed_branch.step(
                level, [fixed_features[level], resize_features(fixed_state, shape), state, warped_segmentation])
            warped = warp_image(moving_features[level], current)
            state = self.fuse[level](torch.cat(
                [fixed_features[level], warped, state, fixed_state, warped_segmentation], dim=1))
            state = self.refine[level](state)
            deformable = compose_displacements(deformable, self.displacement_heads[level](state))
            level_displacements.append(affine_part + apply_linear(linear, deformable))
        return level_displacements, moving_state, fixed_state
