"""Few-shot segmentation training for the shared loop: NICE-Transeg's joint loss and the U-Net baseline.

NICE-Transeg (METHODS.md §2), every step one labelled atlas (moving) and one unlabelled image (fixed):

* registration: ``-LNCC(I_m o phi, I_f) + sigma * diffusion(phi)`` (+ the same similarity on the
  affine-only field, as NICE-Trans training does), and ``1 - Dice(y_m o phi, y_f)`` when the fixed
  image is labelled too (one of the K atlases; ``--dice-weight``, 1 by default). Without this term
  the joint training let registration drift: from NICE-Trans's weights (held-out registration Dice
  0.79) to 0.68 in 500 steps;
* supervised, on the labelled side only: ``weighted CE(S_M, y_m) + (1 - Dice(S_M, y_m))``, and the
  same for ``S_F`` when the fixed image is a labelled atlas too;
* consistency: ``1 - Dice(S_F, S_M o phi)`` on softmax probabilities (gradients reach both branches
  and the field). All terms weigh 1 by default, as in the paper.

The U-Net baseline sees only the labelled atlases: ``weighted CE + Dice`` of its prediction.
"""
from __future__ import annotations

import numpy as np
import torch

from warpseg.learning.few_shot import FewShotData
from warpseg.learning.label_maps import label_set_names
from warpseg.learning.losses import RegistrationLoss, SegmentationLoss, one_hot, probability_dice_loss
from warpseg.learning.train import TrainingConfig, TrainingTask


class JointSegmentationLoss(torch.nn.Module):
    """The loss parts of few-shot training and their weights (see the module docstring)."""

    def __init__(self, ndim: int, smoothness: float = 1.0, similarity: str = "lncc",
                 segmentation_weight: float = 1.0, consistency_weight: float = 1.0, dice_weight: float = 1.0) -> None:
        super().__init__()
        self.registration = RegistrationLoss(ndim, smoothness=smoothness, dice_weight=dice_weight,
                                             similarity=similarity)
        self.segmentation = SegmentationLoss()
        self.segmentation_weight, self.consistency_weight = segmentation_weight, consistency_weight

    def supervised(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted cross-entropy and Dice terms of ``logits`` ``(B, L, *S)`` against labels ``(B, 1, *S)``."""
        return {name: self.segmentation_weight * value for name, value in self.segmentation(logits, labels).items()}


def nice_transeg_loss_terms(model, loss_function: JointSegmentationLoss, pair: dict,
                            device: str) -> dict[str, torch.Tensor]:
    """All NICE-Transeg terms of one (atlas, unlabelled image) pair; ``"total"`` is their sum."""
    from warpseg.spatial import warp_image

    moving, fixed = pair["moving"].to(device), pair["fixed"].to(device)
    outputs = model(moving, fixed)
    displacement = outputs["displacement"]
    onehots = ()
    if "fixed_labels" in pair:
        num_labels = outputs["moving_segmentation"].shape[1]
        onehots = (warp_image(one_hot(pair["moving_labels"].to(device), num_labels), displacement),
                   one_hot(pair["fixed_labels"].to(device), num_labels))
    terms = loss_function.registration(warp_image(moving, displacement), fixed, displacement, *onehots)
    del terms["total"]
    if "dice" in terms:  # the segmentation terms below have a "dice" of their own
        terms["registration_dice"] = terms.pop("dice")
    if outputs["affine_displacement"] is not displacement:
        terms["affine_similarity"] = loss_function.registration.similarity(
            warp_image(moving, outputs["affine_displacement"]), fixed)
    terms.update(loss_function.supervised(outputs["moving_segmentation"], pair["moving_labels"].to(device)))
    if "fixed_labels" in pair:  # a labelled fixed image supervises the fixed branch the same way
        fixed_terms = loss_function.supervised(outputs["fixed_segmentation"], pair["fixed_labels"].to(device))
        terms.update({f"fixed_{name}": value for name, value in fixed_terms.items()})
    if loss_function.consistency_weight > 0:
        warped_moving = warp_image(torch.softmax(outputs["moving_segmentation"], dim=1), displacement)
        fixed_probabilities = torch.softmax(outputs["fixed_segmentation"], dim=1)
        terms["consistency"] = loss_function.consistency_weight * probability_dice_loss(fixed_probabilities,
                                                                                        warped_moving)
    terms["total"] = sum(terms.values())
    return terms


def unet_loss_terms(model, loss_function: JointSegmentationLoss, pair: dict, device: str) -> dict[str, torch.Tensor]:
    """The baseline's terms: its prediction on the labelled atlas image against the atlas labels."""
    logits = model(pair["moving"].to(device))["segmentation"]
    terms = loss_function.supervised(logits, pair["moving_labels"].to(device))
    terms["total"] = sum(terms.values())
    return terms


def validate_segmentation(model, data: FewShotData, device: str, pair_network: bool) -> dict[str, float]:
    """Segmentation Dice (seg4, merged from seg35 when needed) on the held-out subjects.

    For a pair network (NICE-Transeg) also the registration Dice of the warped atlas seg4 labels
    (before and after) and ``propagation_agreement``: Dice between the predicted labels and the
    atlas labels warped by the predicted field, in the label set.
    """
    from warpseg.spatial import warp_labels

    model.eval()
    scores: dict[str, list[float]] = {"segmentation_dice": [], "dice": [], "dice_before": [],
                                      "propagation_agreement": []}
    with torch.inference_mode():
        for _, pair in data.validation_pairs():
            fixed = pair["fixed"].to(device)
            reference = pair["fixed_seg4"][0, 0].numpy()
            if not pair_network:
                predicted = model(fixed)["segmentation"].argmax(1, keepdim=True).cpu()
                scores["segmentation_dice"].append(mean_dice(data.to_seg4(predicted), reference))
                continue
            outputs = model(pair["moving"].to(device), fixed)
            predicted = outputs["fixed_segmentation"].argmax(1, keepdim=True).cpu()
            scores["segmentation_dice"].append(mean_dice(data.to_seg4(predicted), reference))
            warped = warp_labels(pair["moving_labels"].to(device), outputs["displacement"]).cpu()
            scores["propagation_agreement"].append(mean_dice(predicted, warped[0, 0].numpy()))
            scores["dice"].append(mean_dice(data.to_seg4(warped), reference))
            scores["dice_before"].append(mean_dice(pair["moving_seg4"], reference))
    summary = {name: float(np.mean(values)) for name, values in scores.items() if values}
    return {**summary, "pairs": len(scores["segmentation_dice"])}


def mean_dice(predicted: torch.Tensor | np.ndarray, reference: np.ndarray) -> float:
    """Mean Dice over the foreground labels of ``reference``; ``predicted`` ``(1, 1, *S)`` or ``S``."""
    from warpseg.metrics import dice_per_label

    predicted = np.asarray(predicted).reshape(reference.shape)
    scores = list(dice_per_label(predicted, reference).values())
    return float(np.mean(scores)) if scores else float("nan")


def describe(scores: dict[str, float]) -> str:
    """One line of validation scores."""
    text = f"segmentation Dice {scores['segmentation_dice']:.3f}"
    if "dice" in scores:
        text += f"; registration Dice {scores['dice']:.3f} (before {scores['dice_before']:.3f})"
    return text


def few_shot_loss(loss_class, config: TrainingConfig):
    """``loss_class`` (a few-shot joint loss) with the weights of ``config``."""
    return loss_class(config.ndim, smoothness=config.smoothness, similarity=config.similarity,
                      dice_weight=config.dice_weight, segmentation_weight=config.segmentation_weight,
                      consistency_weight=config.consistency_weight)


def segmentation_task(config: TrainingConfig) -> TrainingTask:
    """Few-shot training of ``config.method`` (nice-transeg or seg-unet) on ``config.labels``."""
    names = label_set_names(config.data, config.labels)
    pair_network = config.method == "nice-transeg"
    loss = few_shot_loss(JointSegmentationLoss, config)
    return TrainingTask(
        loss_function=loss,
        load_data=lambda: FewShotData.from_config(config),
        loss_terms=nice_transeg_loss_terms if pair_network else unet_loss_terms,
        validate=lambda model, data, device: validate_segmentation(model, data, device, pair_network),
        describe=describe, data_record=data_record,
        checkpoint_extra=lambda data: {"segmentation": segmentation_record(data, with_atlas=pair_network)},
        model_options={"num_labels": max(names) + 1})


def data_record(data: FewShotData) -> dict:
    """Which subjects trained and validated the network, and which of them were labelled."""
    return {"training_subjects": data.sources, "validation_subjects": [s.name for s in data.validation],
            "label_set": data.label_set, "shots": data.shots,
            "labelled_subjects": [s.name for s in data.atlases], "unlabelled_subjects": data.unlabelled_names,
            "self_pair_share": data.self_pair_share}


def segmentation_record(data: FewShotData, with_atlas: bool) -> dict:
    """The checkpoint's ``segmentation`` entry: label set, names, and (pair networks) the first atlas and
    the further real labelled atlases."""
    record = {"label_set": data.label_set, "label_names": dict(data.label_names), "num_labels": data.num_labels,
              "shots": data.shots, "labelled_subjects": [s.name for s in data.atlases]}
    if with_atlas:
        record["atlas"] = data.atlas_record()
        record["further_atlases"] = data.further_atlas_records()
    return record


def store_further_atlases(path, data_dir) -> list[str]:
    """Add the further real labelled atlases to a pair network's checkpoint trained before they were kept
    (rebuilt from its recorded training data on its training grid); returns their subjects.

    The checkpoint's weights and everything else stay as they were; ``training["further_atlases"]``
    records that they were added afterwards.
    """
    from warpseg.learning.checkpoint import read_checkpoint, write_checkpoint_payload

    payload = read_checkpoint(path)
    config = payload["training"]["config"]
    data = FewShotData(data_dir, config["ndim"], config["labels"], config["shots"], config["validation_subjects"],
                       config["label_maps"], spacing=config.get("spacing"))
    records = data.further_atlas_records()
    if not records:
        return []
    payload["segmentation"]["further_atlases"] = records
    payload["training"]["further_atlases"] = "added after training from the same data (store_further_atlases)"
    write_checkpoint_payload(path, payload)
    return [record["subject"] for record in records]
