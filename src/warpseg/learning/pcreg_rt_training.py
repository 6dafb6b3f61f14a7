"""PC-Reg-RT training for the shared loop: perception-guided registration and reverse teaching.

Every step takes one labelled atlas (moving, labels ``y_m``) and one unlabelled image (fixed). One
forward pass gives the perception's logits ``S_M``, ``S_F`` and the field ``phi`` of the
correspondence net, which saw the detached perception probabilities. Stop-gradients separate the
two nets, so every step is one round of the alternation:

* correspondence (PC-Reg), gradients reach the registration net only:
  ``-LNCC(w * (I_m o phi), w * I_f)`` with ``w`` the perceived foreground of the fixed image
  (``1 - P_F[background]``, dilated by ``mask_margin`` voxels), so background and unperceived
  anatomy do not pull the field; ``sigma * diffusion(phi)``; and the perception's guidance
  ``dice_weight * t * (1 - Dice(onehot(y_m) o phi, onehot(argmax P_F)))``. The trust ``t`` is the
  perception's soft Dice on the labelled atlas (:func:`perception_trust`, detached): a perception
  that still guesses neither steers the field nor masks the similarity (``w = t * mask + 1 - t``);
* perception, gradients reach the segmentation net only: supervised
  ``segmentation_weight * (weighted CE + Dice)(S_M, y_m)`` on the (augmented) atlas, and reverse
  teaching ``consistency_weight * (weighted CE + Dice)(S_F, y_m o phi)``: the atlas labels carried by
  the current registration are the pseudo-labels of the unlabelled image.

Deviations: the talk alternates whole phases; we alternate every step (each net learns from the
other's current state), which one loss and one optimiser allow, and which resumes exactly. The
trust ``t`` is ours: it stands in for the phase schedule (a first phase that trains perception alone).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from warpseg.learning.few_shot import FewShotData
from warpseg.learning.label_maps import label_set_names
from warpseg.learning.losses import RegistrationLoss, SegmentationLoss, one_hot, soft_dice
from warpseg.learning.segmentation_training import (
    data_record, describe, few_shot_loss, segmentation_record, validate_segmentation,
)
from warpseg.learning.train import TrainingConfig, TrainingTask


class PcRegRtLoss(torch.nn.Module):
    """The weights and parts of the PC-Reg-RT loss (see the module docstring)."""

    def __init__(self, ndim: int, smoothness: float = 1.0, similarity: str = "lncc", dice_weight: float = 1.0,
                 segmentation_weight: float = 1.0, consistency_weight: float = 1.0, mask_margin: int = 3) -> None:
        super().__init__()
        self.registration = RegistrationLoss(ndim, smoothness=smoothness, dice_weight=0.0, similarity=similarity)
        self.segmentation = SegmentationLoss()
        self.dice_weight, self.segmentation_weight, self.consistency_weight = (
            dice_weight, segmentation_weight, consistency_weight)
        self.mask_margin = int(mask_margin)

    def task_region(self, fixed_probabilities: torch.Tensor, trust: float | torch.Tensor = 1.0) -> torch.Tensor:
        """Perceived foreground of the fixed image, dilated, blended with 1 by ``1 - trust``.

        Shapes
        ------
        fixed_probabilities ``(B, L, *S)``; returns ``(B, 1, *S)`` in [0, 1].
        """
        foreground = 1.0 - fixed_probabilities[:, :1]
        if self.mask_margin > 0:
            pool = F.max_pool2d if foreground.dim() == 4 else F.max_pool3d
            foreground = pool(foreground, 2 * self.mask_margin + 1, stride=1, padding=self.mask_margin)
        return trust * foreground + (1.0 - trust)

    def weighted(self, name: str, weight: float, logits: torch.Tensor, labels: torch.Tensor) -> dict:
        """``weight`` times the cross-entropy and Dice terms, named ``{name}_cross_entropy``, ``{name}_dice``."""
        if weight <= 0:
            return {}
        return {f"{name}_{key}": weight * value for key, value in self.segmentation(logits, labels).items()}


def pcreg_rt_loss_terms(model, loss_function: PcRegRtLoss, pair: dict, device: str) -> dict[str, torch.Tensor]:
    """All PC-Reg-RT terms of one (atlas, unlabelled image) pair; ``"total"`` is their sum."""
    from warpseg.spatial import warp_image, warp_labels

    moving, fixed = pair["moving"].to(device), pair["fixed"].to(device)
    moving_labels = pair["moving_labels"].to(device)
    outputs = model(moving, fixed)
    displacement = outputs["displacement"]
    num_labels = outputs["fixed_segmentation"].shape[1]
    perceived = torch.softmax(outputs["fixed_segmentation"].detach(), dim=1)
    trust = perception_trust(outputs["moving_segmentation"], moving_labels)
    region = loss_function.task_region(perceived, trust)
    terms = loss_function.registration(region * warp_image(moving, displacement), region * fixed, displacement)
    del terms["total"]
    if loss_function.dice_weight > 0:
        warped_atlas = warp_image(one_hot(moving_labels, num_labels), displacement)
        terms["guidance"] = loss_function.dice_weight * trust * (
            1.0 - soft_dice(warped_atlas, one_hot(perceived.argmax(1, keepdim=True), num_labels)))
    pseudo_labels = warp_labels(moving_labels, displacement.detach(), method="onehot", num_labels=num_labels)
    terms.update(loss_function.weighted("atlas", loss_function.segmentation_weight,
                                        outputs["moving_segmentation"], moving_labels))
    terms.update(loss_function.weighted("teaching", loss_function.consistency_weight,
                                        outputs["fixed_segmentation"], pseudo_labels))
    terms["total"] = sum(terms.values())
    return terms


def perception_trust(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """How far a segmentation net's regions may guide registration: its soft Dice on the labelled
    atlas, detached (about 0 for a net that still guesses, near 1 for one that segments the atlas).

    Shapes
    ------
    logits ``(B, L, *S)`` of the atlas; labels ``(B, 1, *S)`` its integer labels; returns a scalar.
    """
    with torch.no_grad():
        return soft_dice(torch.softmax(logits, dim=1), one_hot(labels, logits.shape[1]))


def validate_joint(model, data: FewShotData, device: str) -> dict[str, float]:
    """:func:`validate_segmentation` of a pair network plus the fields' folding percentage."""
    from warpseg.spatial import folding_percent, jacobian_determinant

    scores = validate_segmentation(model, data, device, pair_network=True)
    folding = []
    with torch.inference_mode():
        for _, pair in data.validation_pairs():
            displacement = model(pair["moving"].to(device), pair["fixed"].to(device))["displacement"]
            folding.append(folding_percent(jacobian_determinant(displacement)))
    return {**scores, "folding_percent": float(np.mean(folding))}


def describe_joint(scores: dict[str, float]) -> str:
    """One line: segmentation and registration Dice, and folding."""
    return f"{describe(scores)}; folding {scores['folding_percent']:.3f} %"


def pcreg_rt_task(config: TrainingConfig) -> TrainingTask:
    """Few-shot PC-Reg-RT training on ``config.labels`` with K = ``config.shots`` atlases."""
    names = label_set_names(config.data, config.labels)
    loss = few_shot_loss(PcRegRtLoss, config)
    return TrainingTask(
        loss_function=loss,
        load_data=lambda: FewShotData.from_config(config),
        loss_terms=pcreg_rt_loss_terms, validate=validate_joint, describe=describe_joint, data_record=data_record,
        checkpoint_extra=lambda data: {"segmentation": segmentation_record(data, with_atlas=False)},
        model_options={"num_labels": max(names) + 1})
