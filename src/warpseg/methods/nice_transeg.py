"""NICE-Transeg: joint registration and few-shot segmentation, as a registration and a segmentation method.

``nice-transeg`` registers like every learned method (the register contract) and also returns both
segmentations (moving and fixed) with the checkpoint's label names; as a segmentation method it
segments one image against an atlas (``--atlas`` or the one its checkpoint keeps).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from warpseg.methods.learned import LearnedRegistration, refine_defaults
from warpseg.methods.learned_inference import checkpoint_label_names, labels_to_native_grid, to_model_grid
from warpseg.methods.learned_segmentation import LABEL_SETS, TRAINING_HINT, LearnedSegmentation
from warpseg.methods.segmenter import SEGMENTATIONS_KEY

if TYPE_CHECKING:
    import torch

    from warpseg.io import Volume


class NiceTransegRegistration(LearnedRegistration):
    """The register contract with NICE-Transeg, plus ``moving_segmentation`` and ``fixed_segmentation``."""

    name = "nice-transeg"
    description = ("NICE-Transeg: NICE-Trans with coupled segmentation branches; also writes both "
                   "segmentations.")
    training_hint = TRAINING_HINT
    label_sets = LABEL_SETS
    defaults = {**refine_defaults(), "labels": LABEL_SETS[0]}

    def extra_details(self, outputs: dict, grid, checkpoint: dict) -> dict[str, Any]:
        """Both segmentations on the fixed grid, with the checkpoint's label names."""
        names = checkpoint_label_names(checkpoint)
        return {SEGMENTATIONS_KEY: {key: (labels_to_native_grid(outputs[key], grid), names)
                                    for key in ("moving_segmentation", "fixed_segmentation")}}


def fit_to_shape(tensor: torch.Tensor, shape) -> torch.Tensor:
    """Centred zero-pad or crop of the spatial axes of ``(N, C, *S)`` to ``shape``."""
    import torch.nn.functional as F

    padding, index = [], [slice(None), slice(None)]
    for size, target in zip(tensor.shape[2:], shape):
        start = max(0, (size - target) // 2)
        index.append(slice(start, start + target))
        extra = max(0, target - size)
        padding = [extra // 2, extra - extra // 2] + padding
    return F.pad(tensor[tuple(index)], padding)


def best_matching_slice(stack: torch.Tensor, image: torch.Tensor) -> int:
    """Index of the slice of ``stack`` ``(N, 1, *S)`` most correlated with ``image`` ``(1, 1, *S)``."""
    flat = stack.flatten(1).float()
    target = image.flatten(1).float()
    flat = flat - flat.mean(1, keepdim=True)
    target = target - target.mean(1, keepdim=True)
    correlation = (flat * target).sum(1) / (flat.norm(dim=1) * target.norm(dim=1) + 1e-8)
    return int(correlation.argmax())


class NiceTransegSegmentation(LearnedSegmentation):
    """NICE-Transeg's fixed segmentation of the image, registered against an atlas.

    The moving image is ``--atlas`` when given (resampled onto the image grid), else the atlas kept
    in the checkpoint (the first labelled training subject, on the training grid; in 2D its slice
    most correlated with the image). The images are expected in the training data's orientation.

    With ``fuse_atlas_labels`` (the default) the label map is the mean of the network's ``S_F`` and
    the atlas labels warped by the same pass's field (class probabilities, on the model grid): the
    network's map alone is reported beside it as ``network_segmentation``. Off, it is ``S_F`` alone,
    as in the paper.
    """

    name: ClassVar[str] = "nice-transeg"
    description: ClassVar[str] = ("NICE-Transeg: segmentation branch coupled to NICE-Trans registration "
                                  "against an atlas (the checkpoint's or --atlas), fused with the warped atlas labels.")
    defaults: ClassVar[dict[str, Any]] = {**LearnedSegmentation.defaults, "fuse_atlas_labels": True}

    def predict(self, model, tensor, checkpoint: dict, *, atlas, image, grid) -> tuple:
        import torch

        from warpseg.errors import InputError
        from warpseg.learning.losses import one_hot
        from warpseg.spatial import warp_image

        moving, moving_labels, source = self.atlas_on_model_grid(tensor, checkpoint, atlas, image, grid)
        outputs = model(moving.to(tensor), tensor)
        network = outputs["fixed_segmentation"]
        details = {"atlas": source, "fuse_atlas_labels": self.resolved["fuse_atlas_labels"]}
        if not self.resolved["fuse_atlas_labels"]:
            return network, details
        if int(moving_labels.max()) >= network.shape[1]:
            raise InputError(f"the atlas labels go up to {int(moving_labels.max())} but this model's label set "
                             f"({self.label_set}) stops at {network.shape[1] - 1}; give an atlas labelled in "
                             f"{self.label_set}, or --option fuse_atlas_labels=false to use its image only")
        warped = warp_image(one_hot(moving_labels.to(tensor.device), network.shape[1]), outputs["displacement"])
        fused = (torch.softmax(network.float(), dim=1) + warped) / 2
        details[SEGMENTATIONS_KEY] = {
            "network_segmentation": (labels_to_native_grid(network, grid), checkpoint_label_names(checkpoint))}
        return torch.log(fused.clamp_min(1e-6)), details

    @staticmethod
    def atlas_on_model_grid(tensor: torch.Tensor, checkpoint: dict, atlas, image: Volume, grid) -> tuple:
        """The moving image ``(1, 1, *padded)``, its labels ``(1, 1, *padded)`` (integer, the checkpoint's
        label IDs) and a description of where they came from."""
        import numpy as np
        import torch

        from warpseg.engine.register import normalise_intensity, on_fixed_grid
        from warpseg.errors import InputError
        from warpseg.learning.preprocess import image_to_model_grid

        if atlas is not None:
            resampled, labels = on_fixed_grid(atlas[0], image), on_fixed_grid(atlas[1], image)
            labels = torch.as_tensor(np.asarray(labels.array, dtype=np.int64), device=tensor.device)[None, None]
            return (to_model_grid(normalise_intensity(resampled.array), grid, str(tensor.device)),
                    image_to_model_grid(labels, grid, mode="nearest"), "given atlas")
        stored = checkpoint.get("segmentation", {}).get("atlas")
        if stored is None:
            raise InputError("this checkpoint keeps no atlas; pass --atlas and --atlas-labels")
        stack = fit_to_shape(stored["image"].float(), tensor.shape[2:])
        index = best_matching_slice(stack, tensor.cpu()) if stack.shape[0] > 1 else 0
        labels = fit_to_shape(stored["labels"][index: index + 1].long(), tensor.shape[2:])
        return (stack[index: index + 1], labels,
                f"checkpoint atlas {stored['subject']}" + (f" slice {index}" if stack.shape[0] > 1 else ""))
