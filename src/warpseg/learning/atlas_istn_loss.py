"""Atlas-ISTN's loss ``L = L_s + ω (L_a2s + L_s2a + λ L_reg)`` and its test-time variant.

Every label term is the paper's squared error summed over label channels and averaged over
voxels: ``mean_x Σ_j (p_j(x) − q_j(x))²``.

* ``L_s``: ITN probabilities ``ŷ`` against the one-hot labels ``y`` (trains the ITN only), plus, not the
  paper's, ``dice_weight`` times ``1 −`` soft Dice of ``ŷ`` and ``cross_entropy_weight`` times the
  class-weighted cross-entropy of the ITN logits (see :class:`AtlasIstnLoss`);
* ``L_a2s``: ``y`` against the atlas labels warped into the image, ``y^a ∘ Φ⁻¹``;
* ``L_s2a``: ``y`` warped into atlas space, ``y ∘ Φ``, against ``y^a``;
* ``L_reg``: MONAI's diffusion loss (mean squared spatial gradient) of the velocity ``v`` expressed in
  normalised units (``2 / (S_d − 1)`` per voxel along axis ``d``, ``grid_sample``'s [-1, 1]), which
  is the scale the paper's λ = 500–800 refers to.

The registration terms use the ground-truth ``y`` during training and the ITN's ``ŷ`` at test time,
as the slides state (METHODS.md writes ``ŷ`` for training too; we follow the paper).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from warpseg.learning.losses import class_weights, soft_dice
from warpseg.spatial import warp_image


def squared_label_error(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``mean_x Σ_j (first_j − second_j)²`` of two ``(B, L, *S)`` probability maps: a scalar."""
    return (first - second).square().sum(dim=1).mean()


def normalised_velocity(velocity: torch.Tensor) -> torch.Tensor:
    """A voxel-unit field ``(B, ndim, *S)`` in [-1, 1] grid units (component ``d`` times ``2 / (S_d − 1)``)."""
    ndim = velocity.shape[1]
    scale = torch.tensor([2.0 / max(size - 1, 1) for size in velocity.shape[2:]], dtype=velocity.dtype,
                         device=velocity.device)
    return velocity * scale.view(1, ndim, *([1] * ndim))


def registration_terms(outputs: dict, target: torch.Tensor, atlas_labels: torch.Tensor, *, smoothness: float,
                       atlas_to_image_weight: float = 1.0, image_to_atlas_weight: float = 1.0
                       ) -> dict[str, torch.Tensor]:
    """The weighted ``L_a2s``, ``L_s2a`` and ``λ L_reg`` of STN ``outputs`` (see the module docstring).

    Shapes
    ------
    target ``(B, L, *S)`` image-space label probabilities (``y`` or ``ŷ``); atlas_labels ``(1|B, L, *S)``.
    """
    from monai.losses import DiffusionLoss

    terms = {"smoothness": smoothness * DiffusionLoss()(normalised_velocity(outputs["velocity"]))}
    if atlas_to_image_weight:
        terms["atlas_to_image"] = atlas_to_image_weight * squared_label_error(target, outputs["warped_atlas"])
    if image_to_atlas_weight:
        in_atlas = warp_image(target, outputs["atlas_to_image"], padding="border")
        terms["image_to_atlas"] = image_to_atlas_weight * squared_label_error(in_atlas, atlas_labels.to(in_atlas))
    return terms


def omega_at(epoch: int, ramp_epoch: int = 0, omega: float = 1.0) -> float:
    """ω of an epoch: constant ``omega``, or with ``ramp_epoch > 0`` the paper's sigmoid ramp
    ``omega / (1 + exp(−(epoch − ramp_epoch) / (ramp_epoch / 8)))`` (200 and 25 epochs for brains)."""
    if ramp_epoch <= 0:
        return omega
    return omega / (1.0 + math.exp(-(epoch - ramp_epoch) / (ramp_epoch / 8.0)))


class AtlasIstnLoss(torch.nn.Module):
    """``L_s + ω (L_a2s + L_s2a + λ L_reg)`` of one labelled image (training).

    ``omega`` is an attribute so that the training loop can ramp it per epoch. Two optional terms join
    ``L_s`` (both 0 by default, the paper's loss):

    * ``dice_weight · (1 − soft Dice(ŷ, y))``. The squared error, averaged over voxels, pulls each
      structure in proportion to its area; soft Dice is normalised per structure, so seg35's small
      structures get a gradient of their own (held-out 2D seg35 ITN Dice after 400 steps at lr 2e-4:
      0.20 without, 0.28 with weight 1).
    * ``cross_entropy_weight ·`` class-weighted cross-entropy of the logits. With the squared error
      alone, the 3D ITN's logits blew up within 10 steps at lr 1e-3 (40 at 2e-4): background won
      everywhere, the softmax saturated and its gradient became exactly zero, and Adam's momentum kept
      the weights growing. The cross-entropy's gradient ``p − y`` does not vanish on a wrong voxel.

    Shapes
    ------
    ``forward(outputs, labels_onehot, atlas_labels)``: outputs of :class:`~warpseg.models.AtlasIstn`
    for an image ``(B, 1, *S)``; labels_onehot ``(B, L, *S)``; atlas_labels ``(1, L, *S)``. Returns
    the terms and ``"total"``.
    """

    def __init__(self, smoothness: float = 500.0, omega: float = 1.0, dice_weight: float = 0.0,
                 cross_entropy_weight: float = 0.0) -> None:
        super().__init__()
        self.smoothness, self.omega, self.dice_weight = float(smoothness), float(omega), float(dice_weight)
        self.cross_entropy_weight = float(cross_entropy_weight)

    def forward(self, outputs: dict, labels_onehot: torch.Tensor, atlas_labels: torch.Tensor
                ) -> dict[str, torch.Tensor]:
        terms = {"segmentation": squared_label_error(outputs["probabilities"], labels_onehot)}
        if self.dice_weight:
            terms["segmentation_dice"] = self.dice_weight * (1.0 - soft_dice(outputs["probabilities"], labels_onehot))
        if self.cross_entropy_weight:
            weights = class_weights(labels_onehot.argmax(dim=1, keepdim=True), labels_onehot.shape[1])
            terms["segmentation_cross_entropy"] = self.cross_entropy_weight * F.cross_entropy(
                outputs["segmentation"], labels_onehot, weight=weights.to(labels_onehot))
        segmentation = sum(terms.values())
        registration = registration_terms(outputs, labels_onehot, atlas_labels, smoothness=self.smoothness)
        terms.update(registration)
        terms["total"] = segmentation + self.omega * sum(registration.values())
        return terms
