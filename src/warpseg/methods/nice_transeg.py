"""NICE-Transeg: joint registration and few-shot segmentation, as a registration and a segmentation method.

``nice-transeg`` registers like every learned method (the register contract) and also returns both
segmentations (moving and fixed) with the checkpoint's label names; as a segmentation method it
segments one image against an atlas (``--atlas`` or the one its checkpoint keeps).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from warpseg.methods.learned import LearnedRegistration, refine_defaults, refine_settings
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


def refined_field(moving: torch.Tensor, fixed: torch.Tensor, field: torch.Tensor, settings: dict, stage: str):
    """Test-time refinement of a field on the model grid: a NIR fit on top of it (job; returns the
    refined ``(1, ndim, *S)`` field and the fit's summary).

    Shapes
    ------
    moving, fixed ``(1, 1, *S)`` normalised images; field ``(1, ndim, *S)`` in model-grid voxels.
    """
    import torch

    from warpseg.methods.base import RegistrationInput
    from warpseg.methods.nir import FieldFit

    images = (moving[0, 0].float().cpu().numpy(), fixed[0, 0].float().cpu().numpy())
    pair = RegistrationInput(*images, spacing=(1.0,) * (fixed.dim() - 2), device=str(fixed.device))
    output = yield from FieldFit(pair, settings, initial=field[0].float().cpu().numpy()).run(stage=stage)
    return torch.as_tensor(output.displacement, device=fixed.device)[None], output.details


class NiceTransegSegmentation(LearnedSegmentation):
    """NICE-Transeg's fixed segmentation of the image, registered against one or more atlases.

    The moving image is ``--atlas`` when given (resampled onto the image grid), else the atlases kept
    in the checkpoint (the labelled training subjects with real images, on the training grid; in 2D
    each one's slice most correlated with the image). The images are expected in the training data's
    orientation.

    With ``fuse_atlas_labels`` (the default) the label map is the mean, over the atlases (option
    ``atlases``: how many of the checkpoint's, 0 for all), of the network's ``S_F`` and the atlas labels
    warped by the same pass's field (class probabilities, on the model grid); ``S_F`` of the first
    atlas alone is reported beside it as ``network_segmentation``. Off, the label map is that one
    ``S_F``, as in the paper. With ``refine`` > 0 each atlas's field is refined at test time before it
    warps the atlas labels (``refine`` NIR steps on the model grid, the ``refine_*`` options as for
    registration); ``S_F`` is the network's either way.
    """

    name: ClassVar[str] = "nice-transeg"
    description: ClassVar[str] = ("NICE-Transeg: segmentation branch coupled to NICE-Trans registration "
                                  "against atlases (the checkpoint's or --atlas), fused with the warped atlas labels.")
    defaults: ClassVar[dict[str, Any]] = {**LearnedSegmentation.defaults, "fuse_atlas_labels": True, "atlases": 0,
                                          **refine_defaults()}

    def predict_steps(self, model, tensor, checkpoint: dict, *, atlas, image, grid):
        import torch

        from warpseg.learning.losses import one_hot
        from warpseg.spatial import warp_image

        fuse, refine = self._fusion_settings()
        limit = (self.resolved["atlases"] or None) if fuse else 1
        with torch.inference_mode():
            atlases = self.atlases_on_model_grid(tensor, checkpoint, atlas, image, grid, limit)
        details = {"atlas": "; ".join(source for _, _, source in atlases), "fuse_atlas_labels": fuse}
        network, total, refinements = None, 0, []
        for index, (moving, moving_labels, _) in enumerate(atlases):
            with torch.inference_mode():
                outputs = model(moving.to(tensor), tensor)
            if network is None:
                network = outputs["fixed_segmentation"]
                if not fuse:
                    return network, details
            self._check_atlas_labels(moving_labels, network.shape[1])
            field = outputs["displacement"]
            if refine is not None:
                field, summary = yield from refined_field(moving.to(tensor), tensor, field, refine,
                                                          stage=f"refine atlas {index + 1}/{len(atlases)}")
                refinements.append(summary)
            with torch.inference_mode():
                warped = warp_image(one_hot(moving_labels.to(tensor.device), network.shape[1]), field)
                total = total + torch.softmax(outputs["fixed_segmentation"].float(), dim=1) + warped
        if refinements:
            details["refine"] = refinements
        with torch.inference_mode():
            details[SEGMENTATIONS_KEY] = {
                "network_segmentation": (labels_to_native_grid(network, grid), checkpoint_label_names(checkpoint))}
            return torch.log((total / (2 * len(atlases))).clamp_min(1e-6)), details

    def _fusion_settings(self) -> tuple[bool, dict | None]:
        """``fuse_atlas_labels``, and the NIR settings of the refinement (None without one); bad values refused."""
        from warpseg.errors import InputError

        settings = self.resolved
        if settings["atlases"] < 0:
            raise InputError(f"atlases={settings['atlases']}: give how many of the checkpoint's atlases "
                             "to use (1, 2, ...), or 0 for all of them")
        fuse, refine = bool(settings["fuse_atlas_labels"]), refine_settings(settings, self.name)
        if refine is not None and not fuse:
            raise InputError("refine moves the atlas labels, which fuse_atlas_labels=false leaves out; "
                             "drop refine or keep the fusion on")
        return fuse, refine

    def _check_atlas_labels(self, labels: torch.Tensor, num_labels: int) -> None:
        from warpseg.errors import InputError

        if int(labels.max()) >= num_labels:
            raise InputError(f"the atlas labels go up to {int(labels.max())} but this model's label set "
                             f"({self.label_set}) stops at {num_labels - 1}; give an atlas labelled in "
                             f"{self.label_set}, or --option fuse_atlas_labels=false to use its image only")

    @staticmethod
    def atlases_on_model_grid(tensor: torch.Tensor, checkpoint: dict, atlas, image: Volume, grid,
                              limit: int | None = None) -> list[tuple]:
        """``(image (1, 1, *padded), labels (1, 1, *padded) integer, where it came from)`` of the given
        atlas (resampled onto the grid of ``image``), or of the first ``limit`` (None: all) atlases the
        checkpoint keeps."""
        import numpy as np
        import torch

        from warpseg.engine.register import normalise_intensity, on_fixed_grid
        from warpseg.errors import InputError
        from warpseg.learning.preprocess import image_to_model_grid

        if atlas is not None:
            resampled, labels = on_fixed_grid(atlas[0], image), on_fixed_grid(atlas[1], image)
            labels = torch.as_tensor(np.asarray(labels.array, dtype=np.int64), device=tensor.device)[None, None]
            return [(to_model_grid(normalise_intensity(resampled.array), grid, str(tensor.device)),
                     image_to_model_grid(labels, grid, mode="nearest"), "given atlas")]
        record = checkpoint.get("segmentation", {})
        if record.get("atlas") is None:
            raise InputError("this checkpoint keeps no atlas; pass --atlas and --atlas-labels")
        found = []
        for stored in [record["atlas"], *record.get("further_atlases", [])][:limit]:
            stack = fit_to_shape(stored["image"].float(), tensor.shape[2:])
            index = best_matching_slice(stack, tensor.cpu()) if stack.shape[0] > 1 else 0
            labels = fit_to_shape(stored["labels"][index: index + 1].long(), tensor.shape[2:])
            found.append((stack[index: index + 1], labels, f"checkpoint atlas {stored['subject']}"
                          + (f" slice {index}" if stack.shape[0] > 1 else "")))
        return found
