"""BRBS training for the shared loop: consistent registration, space-style sampling, mix-misalignment.

Every step takes one labelled atlas ``A`` (labels ``y``) and T = 2 unlabelled images ``U_t``, and one
forward pass (:class:`~warpseg.models.Brbs` with a :class:`SpaceStyleSampling` draw) gives the fields
``phi_t = exp(v_t)``, their inverses ``exp(-v_t)``, K = 2 generated labelled images ``(X_k, Y_k)``
and the segmenter's logits of ``A``, ``U_t``, ``X_k`` and the mixed image ``X_mix``. The terms:

* registration, knowledge-consistency constraints: BiC, the similarity both ways
  ``-LNCC(A o phi_t, U_t) - LNCC(U_t o phi_t^-1, A)`` (with ``sigma * diffusion(phi_t)``); SeC,
  ``dice_weight * t * [(1 - Dice(onehot(y) o phi_t, R_t)) + (1 - Dice(R_t o phi_t^-1, onehot(y)))]``
  with ``R_t`` the semantic regions of ``U_t``, the segmenter's (detached) arg-max, trusted as far
  as the segmenter segments the labelled atlas (``t``, :func:`perception_trust`);
* segmentation: ``segmentation_weight *`` (weighted CE + Dice) on the real atlas and, with soft
  labels, on the generated ``(X_k, Y_k)``; MMR ``consistency_weight * ||S(g X_0 + (1 - g) X_1) -
  (g S(X_0) + (1 - g) S(X_1))||^2`` (:func:`mix_misalignment_loss`).

The generated images come from the detached fields, so segmentation terms never move the
registration. Deviation from the paper: its stages (registration, then sampling and segmentation)
run jointly here, one step each, so the sampler improves as the registration does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from warpseg.learning.augment import augment_pair_member
from warpseg.learning.few_shot import FewShotData
from warpseg.learning.label_maps import label_set_names
from warpseg.learning.losses import RegistrationLoss, SegmentationLoss, class_weights, one_hot, soft_dice
from warpseg.learning.pcreg_rt_training import describe_joint, perception_trust, validate_joint
from warpseg.learning.segmentation_training import data_record, few_shot_loss, segmentation_record
from warpseg.learning.train import TrainingConfig, TrainingTask
from warpseg.models.brbs import SpaceStyleSampling

TARGETS, GENERATED = 2, 2
"""Unlabelled images per step (T) and images generated from them (K)."""


def mix_misalignment_loss(mixed: torch.Tensor, first: torch.Tensor, second: torch.Tensor,
                          gamma: float) -> torch.Tensor:
    """MMR: ``S(g X_A + (1 - g) X_B)`` should be ``g S(X_A) + (1 - g) S(X_B)``.

    The squared difference of the probability vectors, summed over labels and averaged over voxels;
    the mixed prediction is the student (the target is detached), so misaligned regions are
    answered with a lower, linear response instead of a confident wrong one.

    Shapes
    ------
    mixed, first, second: probabilities ``(B, L, *S)``; returns a scalar.
    """
    target = gamma * first + (1.0 - gamma) * second
    return (mixed - target.detach()).square().sum(dim=1).mean()


def soft_label_loss(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Weighted cross-entropy and ``1 - Dice`` of logits ``(B, L, *S)`` against soft labels ``(B, L, *S)``."""
    weights = class_weights(labels.argmax(1, keepdim=True), labels.shape[1]).to(logits)
    return {"cross_entropy": F.cross_entropy(logits, labels, weight=weights),
            "dice": 1.0 - soft_dice(torch.softmax(logits, dim=1), labels)}


class BrbsData(FewShotData):
    """:class:`FewShotData` whose pairs hold T unlabelled images and a space-style sampling draw."""

    def sample(self, generator: torch.Generator) -> dict:
        """An augmented atlas, ``fixed`` ``(T, 1, *S)`` unlabelled images and ``sampling``.

        Shapes
        ------
        moving ``(1, 1, *S)``; moving_labels ``(1, 1, *S)``; fixed ``(T, 1, *S)``.
        """
        atlas = self.atlases[int(torch.randint(len(self.atlases), (1,), generator=generator))]
        index = int(torch.randint(len(atlas), (1,), generator=generator))
        pair = {"subjects": [atlas.name]}
        pair["moving"], pair["moving_labels"] = augment_pair_member(
            self._image(atlas, index, generator), atlas.labels[index: index + 1], generator, spacing=self.spacing)
        targets = []
        for _ in range(TARGETS):
            subject = self._pick_unlabelled(atlas.name, generator)
            item = min(len(subject) - 1, max(0, index + int(torch.randint(-2, 3, (1,), generator=generator))))
            image, _ = augment_pair_member(self._image(subject, item, generator), None, generator, spacing=self.spacing)
            targets.append(image)
            pair["subjects"].append(subject.name)
        pair["fixed"] = torch.cat(targets)
        pair["sampling"] = SpaceStyleSampling.draw(generator, GENERATED, TARGETS)
        return pair

    def generation_record(self) -> dict:
        """Unlabelled real training images for ``warpseg brbs generate`` (float16, never held-out subjects).

        Shapes
        ------
        each ``image``: ``(N, 1, *S)``: the 41 slices in 2D, ``N = 1`` in 3D, on the training grid.
        """
        sole_atlas = self.atlases[0].name if len(self.atlases) == 1 else None
        return {"targets": [{"subject": s.name, "image": s.images.to(torch.float16)}
                            for s in self.real_pool if s.name != sole_atlas]}


class BrbsLoss(torch.nn.Module):
    """The weights and parts of the BRBS loss (see the module docstring)."""

    def __init__(self, ndim: int, smoothness: float = 1.0, similarity: str = "lncc", dice_weight: float = 1.0,
                 segmentation_weight: float = 1.0, consistency_weight: float = 1.0) -> None:
        super().__init__()
        self.registration = RegistrationLoss(ndim, smoothness=smoothness, dice_weight=dice_weight,
                                             similarity=similarity)
        self.segmentation = SegmentationLoss()
        self.segmentation_weight, self.consistency_weight = segmentation_weight, consistency_weight


def brbs_loss_terms(model, loss_function: BrbsLoss, pair: dict, device: str) -> dict[str, torch.Tensor]:
    """All BRBS terms of one (atlas, T unlabelled images) draw; ``"total"`` is their sum."""
    atlas, targets = pair["moving"].to(device), pair["fixed"].to(device)
    labels = pair["moving_labels"].to(device)
    outputs = model(atlas, targets, moving_labels=labels, sampling=pair["sampling"])
    terms = registration_terms(loss_function.registration, atlas, labels, targets, outputs)
    weight = loss_function.segmentation_weight
    if weight > 0:
        for name, value in loss_function.segmentation(outputs["moving_segmentation"], labels).items():
            terms[f"atlas_{name}"] = weight * value
        for name, value in soft_label_loss(outputs["generated_segmentation"], outputs["generated_labels"]).items():
            terms[f"generated_{name}"] = weight * value
    if loss_function.consistency_weight > 0 and "mixed_segmentation" in outputs:
        first, second = torch.softmax(outputs["generated_segmentation"][:2], dim=1).split(1)
        terms["mix_misalignment"] = loss_function.consistency_weight * mix_misalignment_loss(
            torch.softmax(outputs["mixed_segmentation"], dim=1), first, second, pair["sampling"].mix)
    terms["total"] = sum(terms.values())
    return terms


def registration_terms(loss: RegistrationLoss, atlas: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor,
                       outputs: dict) -> dict[str, torch.Tensor]:
    """BiC (similarity both ways, smoothness) and SeC (semantic Dice both ways) of T atlas-to-image fields."""
    from warpseg.spatial import warp_image

    forward, inverse = outputs["displacement"], outputs["inverse_displacement"]
    num_labels = outputs["fixed_segmentation"].shape[1]
    atlas_onehot = one_hot(labels, num_labels).expand(len(targets), -1, *labels.shape[2:])
    regions = one_hot(outputs["fixed_segmentation"].detach().argmax(1, keepdim=True), num_labels)
    moving = atlas.expand_as(targets)
    to_image = loss(warp_image(moving, forward), targets, forward, warp_image(atlas_onehot, forward), regions)
    to_atlas = loss(warp_image(targets, inverse), moving, inverse, warp_image(regions, inverse), atlas_onehot)
    terms = {"similarity": to_image["similarity"] + to_atlas["similarity"], "smoothness": to_image["smoothness"]}
    if "dice" in to_image:
        trust = perception_trust(outputs["moving_segmentation"], labels)
        terms["semantic_consistency"] = trust * (to_image["dice"] + to_atlas["dice"])
    return terms


def brbs_task(config: TrainingConfig) -> TrainingTask:
    """Few-shot BRBS training on ``config.labels`` with K = ``config.shots`` atlases."""
    names = label_set_names(config.data, config.labels)
    loss = few_shot_loss(BrbsLoss, config)
    return TrainingTask(
        loss_function=loss,
        load_data=lambda: BrbsData.from_config(config),
        loss_terms=brbs_loss_terms, validate=validate_joint, describe=describe_joint, data_record=data_record,
        checkpoint_extra=lambda data: {"segmentation": segmentation_record(data, with_atlas=True),
                                       "generation": data.generation_record()},
        model_options={"num_labels": max(names) + 1})
