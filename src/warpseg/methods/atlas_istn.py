"""Atlas-ISTN as a segmentation method (the atlas label map warped into the image) and a registration method
(any pair through the atlas, or an image to the atlas).

Both run the ITN and the STN of a checkpoint written by ``warpseg atlas build`` (which also holds the
atlas), then refine the STN on each image for ``refine`` iterations (0: the one-pass result). The
segmentation is the atlas label map warped into the image, so it keeps the atlas's topology; the
ITN's own label map is reported beside it (``itn_segmentation``).
"""
from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from warpseg.errors import InputError
from warpseg.learning.label_maps import LABEL_SETS
from warpseg.methods.base import MethodOutput, Progress, RegistrationInput, RegistrationMethod
from warpseg.methods.learned_inference import (
    ShippedWeights, checkpoint_label_names, labels_to_native_grid, load_learned_model, model_grid, shipped_weights,
    to_model_grid,
)
from warpseg.methods.segmenter import SEGMENTATIONS_KEY, SegmentationMethod, SegmentationOutput

if TYPE_CHECKING:
    import torch

    from warpseg.io import Volume

DEFAULTS: dict[str, Any] = {
    "labels": LABEL_SETS[0],       # label set of the shipped weights (seg4 or seg35)
    "refine": 50,                  # STN refinement steps per image (the paper: 50 for brains, 100 for hearts)
    "refine_learning_rate": 1e-3,  # Adam step size of the refinement
    "refine_smoothness": 500.0,    # λ*
    "refine_image_to_atlas": 0.0,  # γ* (β* = 1)
}


class AtlasIstnWeights(ShippedWeights):
    """Weights lookup (``atlas-istn_{ndim}d_{labels}.pt`` or ``--weights``) and the shared inference steps."""

    needs_weights: ClassVar[bool] = True
    label_sets: ClassVar[tuple[str, ...]] = LABEL_SETS
    defaults: ClassVar[dict[str, Any]] = DEFAULTS

    def weights_path(self, ndim: int) -> Path:
        if self.weights:
            return Path(self.weights)
        path = shipped_weights("atlas-istn", ndim, self.label_set)
        if not path.is_file():
            raise InputError(f"no shipped {ndim}D {self.label_set} weights for atlas-istn yet; build an atlas with "
                             f"`warpseg atlas build --data ../shared/data --ndim {ndim} --labels {self.label_set} "
                             "--out DIR` and pass --weights DIR/model.pt")
        return path

    def settings(self) -> dict[str, Any]:
        from warpseg.methods.sitk_runner import resolve_options

        settings = resolve_options(self.defaults, self.options, self.name)
        written = {**settings, **self.options}  # the values as the user wrote them, for the messages
        if settings["refine"] < 0:
            raise InputError(f"{self.name} option refine={written['refine']}: give a number of refinement steps "
                             "(the paper: 50 for brains), or 0 for the one-pass result")
        if settings["refine_learning_rate"] <= 0:
            raise InputError(f"{self.name} option refine_learning_rate={written['refine_learning_rate']}: give an "
                             f"Adam step size above 0 (default {DEFAULTS['refine_learning_rate']})")
        for key in ("refine_smoothness", "refine_image_to_atlas"):
            if settings[key] < 0:
                raise InputError(f"{self.name} option {key}={written[key]}: a loss weight is 0 or more "
                                 f"(default {DEFAULTS[key]})")
        return settings

    def load(self, ndim: int, device: str):
        """The model, its checkpoint description and the weights path."""
        path = self.weights_path(ndim)
        model, checkpoint = load_learned_model(path, ndim, device)
        if checkpoint["method"] != "atlas-istn":
            raise InputError(f"{path} holds {checkpoint['method']} weights, not an Atlas-ISTN model and atlas")
        return model, checkpoint, path

    def transform_image(self, model, tensor: torch.Tensor, atlas_labels: torch.Tensor, settings: dict,
                        stage: str) -> Generator[Progress, None, tuple[dict, dict]]:
        """ITN and STN of one model-grid image ``(1, 1, *S)``, the STN refined; outputs and a summary."""
        import torch

        from warpseg.learning.atlas_refine import refine_transformer

        with torch.no_grad():
            outputs = model(tensor, atlas_labels)
        if not settings["refine"]:
            return outputs, {"iterations": 0}
        refined, summary = yield from refine_transformer(
            model, outputs["probabilities"], atlas_labels, iterations=int(settings["refine"]),
            learning_rate=float(settings["refine_learning_rate"]), smoothness=float(settings["refine_smoothness"]),
            image_to_atlas_weight=float(settings["refine_image_to_atlas"]), stage=stage)
        return {**outputs, **refined}, summary


def fit_atlas_labels(probabilities: torch.Tensor, shape) -> torch.Tensor:
    """Atlas label probabilities ``(1, L, *S_atlas)`` centred on a grid ``shape`` (cropped or padded;
    padding is background)."""
    from warpseg.methods.nice_transeg import fit_to_shape

    fitted = fit_to_shape(probabilities, shape)
    fitted[:, 0] += 1.0 - fitted.sum(dim=1)
    return fitted


def atlas_labels_to_native_grid(warped_atlas: torch.Tensor, grid) -> np.ndarray:
    """Warped atlas probabilities ``(1, L, *padded)`` to a label map on the native grid."""
    import torch

    return labels_to_native_grid(torch.log(warped_atlas.clamp(min=1e-6)), grid)


class AtlasIstnSegmentation(AtlasIstnWeights, SegmentationMethod):
    """The atlas label map warped into the image by the (refined) STN; the ITN's labels beside it."""

    name: ClassVar[str] = "atlas-istn"
    description: ClassVar[str] = ("Atlas-ISTN: the learned atlas's labels warped into the image by a "
                                  "test-time-refined STN (topology of the atlas); the ITN's labels beside them.")

    def run(self, image: Volume, *, atlas: tuple[Volume, Volume] | None, device: str
            ) -> Generator[Progress, None, SegmentationOutput]:
        from warpseg.engine.register import normalise_intensity
        from warpseg.metrics import dice_per_label

        if atlas is not None:
            raise InputError("atlas-istn segments with the atlas built with its model; drop --atlas/--atlas-labels")
        settings = self.settings()
        model, checkpoint, path = self.load(image.ndim, device)
        yield Progress("segment", 0, 1, f"{self.name}: ITN and STN")
        grid = model_grid(image.shape, image.spacing, checkpoint)
        tensor = to_model_grid(normalise_intensity(image.array), grid, device)
        atlas_labels = fit_atlas_labels(model.atlas_probabilities(), tensor.shape[2:])
        outputs, refinement = yield from self.transform_image(model, tensor, atlas_labels, settings, "refine")
        labels = atlas_labels_to_native_grid(outputs["warped_atlas"], grid)
        itn_labels = labels_to_native_grid(outputs["segmentation"], grid)
        yield Progress("segment", 1, 1, f"{self.name}: done")
        names = checkpoint_label_names(checkpoint)
        agreement = list(dice_per_label(labels, itn_labels).values())
        details = {"weights_file": str(path), "label_set": checkpoint["segmentation"]["label_set"],
                   "model_spacing": checkpoint["preprocessing"].get("target_spacing"),
                   "refine": refinement, "itn_agreement_dice": float(np.mean(agreement)) if agreement else None,
                   "trained": {k: checkpoint["training"].get(k) for k in ("command", "validation")},
                   SEGMENTATIONS_KEY: {"itn_segmentation": (itn_labels, names)}}
        return SegmentationOutput(labels, names, details)


class AtlasIstnRegistration(AtlasIstnWeights, RegistrationMethod):
    """Moving to fixed through the atlas: ``x -> Φ_moving(Φ_fixed⁻¹(x))``, each image's STN refined.

    With ``fixed_is_atlas`` the fixed image is taken to be the atlas itself (on its grid, as
    ``atlas build`` writes it) and only the moving image is transformed. Both atlas-based
    segmentations are returned (``fixed_segmentation``, ``moving_segmentation``).
    """

    name: ClassVar[str] = "atlas-istn"
    description: ClassVar[str] = ("Atlas-ISTN: moving to fixed through the learned atlas (similarity + "
                                  "diffeomorphic STN, refined per image); also writes both atlas segmentations.")
    defaults: ClassVar[dict[str, Any]] = {**DEFAULTS, "fixed_is_atlas": False}

    def run(self, pair: RegistrationInput) -> Generator[Progress, None, MethodOutput]:
        import torch

        from warpseg.learning.preprocess import field_to_native_grid
        from warpseg.spatial import compose_displacements

        settings = self.settings()
        model, checkpoint, path = self.load(pair.ndim, pair.device)
        yield Progress("register", 0, 1, f"{self.name}: ITN and STN of both images")
        grid = model_grid(pair.fixed.shape, pair.spacing, checkpoint)
        fixed, moving = (to_model_grid(array, grid, pair.device) for array in (pair.fixed, pair.moving))
        atlas_labels = fit_atlas_labels(model.atlas_probabilities(), fixed.shape[2:])
        summaries = {}
        moving_outputs, summaries["moving"] = yield from self.transform_image(
            model, moving, atlas_labels, settings, "refine moving")
        if settings["fixed_is_atlas"]:
            fixed_to_atlas, fixed_atlas = torch.zeros_like(moving_outputs["image_to_atlas"]), atlas_labels
        else:
            fixed_outputs, summaries["fixed"] = yield from self.transform_image(
                model, fixed, atlas_labels, settings, "refine fixed")
            fixed_to_atlas, fixed_atlas = fixed_outputs["image_to_atlas"], fixed_outputs["warped_atlas"]
        with torch.no_grad():
            displacement = compose_displacements(moving_outputs["atlas_to_image"], fixed_to_atlas)
            field = field_to_native_grid(displacement, grid)[0].float().cpu().numpy()
        yield Progress("register", 1, 1, f"{self.name}: done")
        names = checkpoint_label_names(checkpoint)
        segmentations = {"fixed_segmentation": (atlas_labels_to_native_grid(fixed_atlas, grid), names),
                         "moving_segmentation": (atlas_labels_to_native_grid(moving_outputs["warped_atlas"], grid),
                                                 names)}
        details = {"weights_file": str(path), "label_set": checkpoint["segmentation"]["label_set"],
                   "model_spacing": checkpoint["preprocessing"].get("target_spacing"),
                   "refine": summaries, "fixed_is_atlas": bool(settings["fixed_is_atlas"]),
                   "trained": {k: checkpoint["training"].get(k) for k in ("command", "validation")},
                   SEGMENTATIONS_KEY: segmentations}
        return MethodOutput(field.astype(np.float32), details=details)


__all__ = ["AtlasIstnRegistration", "AtlasIstnSegmentation", "fit_atlas_labels"]
