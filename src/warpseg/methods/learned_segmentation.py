"""Learned segmentation methods: a checkpoint, the model grid, one forward pass, labels back on the image grid."""
from __future__ import annotations

import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, ClassVar

from warpseg.learning.label_maps import LABEL_SETS
from warpseg.methods.base import Progress
from warpseg.methods.learned_inference import (
    ShippedWeights, checkpoint_label_names, labels_to_native_grid, load_learned_model, model_grid, to_model_grid,
)
from warpseg.methods.segmenter import SegmentationMethod, SegmentationOutput

if TYPE_CHECKING:
    import torch

    from warpseg.io import Volume

TRAINING_HINT = " --data ../shared/data"



class LearnedSegmentation(ShippedWeights, SegmentationMethod):
    """A network that maps an image to label logits; subclasses implement :meth:`predict`.

    Without ``weights`` the shipped ``{name}_{ndim}d_{labels}.pt`` is used (option ``labels``: seg4 or
    seg35). The label IDs and names are the checkpoint's label set.
    """

    needs_weights: ClassVar[bool] = True
    training_hint: ClassVar[str] = TRAINING_HINT
    label_sets: ClassVar[tuple[str, ...]] = LABEL_SETS
    defaults: ClassVar[dict[str, Any]] = {"labels": LABEL_SETS[0]}

    def run(self, image: Volume, *, atlas: tuple[Volume, Volume] | None, device: str
            ) -> Generator[Progress, None, SegmentationOutput]:
        import torch

        from warpseg.engine.register import normalise_intensity
        from warpseg.methods.sitk_runner import resolve_options

        self.resolved = resolve_options(self.defaults, self.options, self.name)
        path = self.weights_path(image.ndim)
        model, checkpoint = load_learned_model(path, image.ndim, device)
        yield Progress("segment", 0, 1, f"{self.name}: one forward pass")
        started = time.perf_counter()
        grid = model_grid(image.shape, image.spacing, checkpoint)
        with torch.inference_mode():
            tensor = to_model_grid(normalise_intensity(image.array), grid, device)
        logits, details = yield from self.predict_steps(model, tensor, checkpoint, atlas=atlas, image=image, grid=grid)
        with torch.inference_mode():
            labels = labels_to_native_grid(logits, grid)
        seconds = time.perf_counter() - started
        yield Progress("segment", 1, 1, f"{self.name}: done in {seconds * 1000:.0f} ms")
        details = {"weights_file": str(path), "seconds_inference": seconds,
                   "label_set": checkpoint.get("segmentation", {}).get("label_set"),
                   "model_spacing": checkpoint["preprocessing"].get("target_spacing"),
                   "trained": {k: checkpoint["training"].get(k) for k in ("command", "validation")}, **details}
        return SegmentationOutput(labels, checkpoint_label_names(checkpoint), details)

    def predict(self, model, tensor: torch.Tensor, checkpoint: dict, *, atlas: tuple[Volume, Volume] | None,
                image: Volume, grid) -> tuple[torch.Tensor, dict]:
        """Label logits ``(1, L, *padded)`` of the model-grid image ``tensor`` ``(1, 1, *padded)``, and
        details to report. ``image`` is the native volume, ``grid`` its map to the model grid."""
        raise NotImplementedError

    def predict_steps(self, model, tensor: torch.Tensor, checkpoint: dict, *, atlas: tuple[Volume, Volume] | None,
                      image: Volume, grid) -> Generator[Progress, None, tuple[torch.Tensor, dict]]:
        """:meth:`predict` as a job that may report progress (and be cancelled) on the way, for methods
        that optimise at test time; by default one :meth:`predict` in inference mode, with no progress."""
        import torch

        yield from ()
        with torch.inference_mode():
            return self.predict(model, tensor, checkpoint, atlas=atlas, image=image, grid=grid)


class SegmentationUNetSegmentation(LearnedSegmentation):
    """The plain U-Net baseline trained on the same K labelled atlases as NICE-Transeg."""

    name: ClassVar[str] = "seg-unet"
    description: ClassVar[str] = "Plain U-Net segmentation baseline trained on K labelled atlases."

    def predict(self, model, tensor, checkpoint: dict, *, atlas, image, grid) -> tuple:
        return model(tensor)["segmentation"], {}


class OwnSegmentationNet(LearnedSegmentation):
    """A method whose model carries a segmentation net of its own, ``model.segment(image)``
    (PC-Reg-RT's perception, BRBS's segmentation net): no atlas at inference."""

    def predict(self, model, tensor, checkpoint: dict, *, atlas, image, grid) -> tuple:
        return model.segment(tensor), {}


__all__ = ["LABEL_SETS", "LearnedSegmentation", "OwnSegmentationNet", "SegmentationUNetSegmentation"]
