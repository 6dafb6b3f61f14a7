"""Inference plumbing shared by every learned method, registration or segmentation.

Weights lookup (shipped or ``--weights``), checkpoint loading with the dimensionality check, images
to the model grid, and the model's label logits back to the input grid.
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import ClassVar

import numpy as np

from warpseg.errors import InputError


def shipped_weights(method: str, ndim: int, variant: str | None = None) -> Path:
    """Path of the weights shipped in the package for ``method`` in ``ndim`` dimensions
    (``{method}_{ndim}d.pt``, or ``{method}_{ndim}d_{variant}.pt`` for a method trained per label set
    or per similarity)."""
    suffix = f"_{variant}" if variant else ""
    return Path(str(files("warpseg") / "weights" / f"{method}_{ndim}d{suffix}.pt"))


class ShippedWeights:
    """Mixin of learned methods: weights from ``--weights`` or the file shipped for the input's dimensionality.

    Subclasses are :class:`~warpseg.methods.base.Method`\ s; ``training_hint`` completes the
    ``warpseg train`` command suggested when no weights exist.
    """

    training_hint: ClassVar[str] = ""
    label_sets: ClassVar[tuple[str, ...]] = ()
    """Label sets with weights of their own (the first is the default), picked by the ``labels`` option."""
    variant_option: ClassVar[str] = "labels"
    """The option, and ``warpseg train`` flag, whose value :attr:`weights_variant` is."""

    @classmethod
    def has_shipped_weights(cls, ndim: int) -> bool:
        """True when weights ship for ``ndim`` dimensions (for the default label set)."""
        return cls().has_weights_for(ndim)

    def has_weights_for(self, ndim: int) -> bool:
        """True when this instance's weights (given, or shipped for its label set) exist for ``ndim``."""
        try:
            return self.weights_path(ndim).is_file()
        except InputError:
            return False

    @property
    def label_set(self) -> str | None:
        """The label set whose shipped weights are used (None for methods without label sets)."""
        if not self.label_sets:
            return None
        chosen = str(self.options.get("labels", self.label_sets[0]))
        if chosen not in self.label_sets:
            raise InputError(f"{self.name} has no weights for label set {chosen!r}; "
                             f"choose labels={' or labels='.join(self.label_sets)}")
        return chosen

    @property
    def weights_variant(self) -> str | None:
        """Suffix of the shipped weights this instance uses (``{method}_{n}d_{variant}.pt``): its label set."""
        return self.label_set

    def weights_path(self, ndim: int) -> Path:
        return resolve_weights(self.name, self.weights, ndim, self.training_hint, self.weights_variant,
                               self.variant_option)


def resolve_weights(method: str, weights: str | None, ndim: int, training_hint: str = "",
                    variant: str | None = None, variant_option: str = "labels") -> Path:
    """``weights`` when given, else the shipped file; a clear error saying how to train when none ships."""
    if weights:
        return Path(weights)
    path = shipped_weights(method, ndim, variant)
    if not path.is_file():
        flag = f" --{variant_option} {variant}" if variant else ""
        raise InputError(f"no shipped {ndim}D{' ' + variant if variant else ''} weights for {method} yet; "
                         f"train some with `warpseg train {method} --ndim {ndim}{flag}{training_hint} "
                         f"--out {path.name}` and pass --weights")
    return path


def load_learned_model(path: Path, ndim: int, device: str):
    """The model (eval mode) and checkpoint description of ``path``, refused if not ``ndim``-D."""
    from warpseg.learning.checkpoint import load_checkpoint

    model, checkpoint = load_checkpoint(path, device)
    model_ndim = checkpoint["model"]["config"].get("ndim")
    if model_ndim != ndim:
        raise InputError(f"{path} holds a {model_ndim}D model but the images are {ndim}D; "
                         f"give {ndim}D weights")
    return model, checkpoint


def model_grid(shape, spacing, checkpoint: dict):
    """The :class:`~warpseg.learning.preprocess.GridMap` of an input grid for this checkpoint's model."""
    from warpseg.learning.preprocess import Preprocessing, plan_grid

    return plan_grid(tuple(shape), tuple(float(s) for s in spacing), Preprocessing(**checkpoint["preprocessing"]))


def to_model_grid(array: np.ndarray, grid, device: str):
    """A normalised native image ``S`` as a model input ``(1, 1, *padded_shape)`` tensor."""
    import torch

    from warpseg.learning.preprocess import image_to_model_grid

    return image_to_model_grid(torch.as_tensor(np.asarray(array, dtype=np.float32), device=device)[None, None], grid)


def labels_to_native_grid(logits, grid) -> np.ndarray:
    """Label logits ``(1, L, *padded_shape)`` to a label map ``native_shape``.

    The argmax of the softmax probabilities resized linearly to the native grid (computed only
    where it can differ from the model grid's argmax).
    """
    import torch

    from warpseg.learning.preprocess import labels_on_native_grid

    resized = grid.resized_shape != grid.native_shape
    scores = torch.softmax(logits.float(), dim=1) if resized else logits  # same argmax without a resize
    labels = labels_on_native_grid(scores, grid).cpu().numpy()
    return labels.astype(np.uint8 if logits.shape[1] <= 256 else np.int16)


def checkpoint_label_names(checkpoint: dict) -> dict[int, str] | None:
    """``{id: name}`` of a segmentation checkpoint's label set (None for other checkpoints)."""
    names = checkpoint.get("segmentation", {}).get("label_names")
    return {int(key): str(value) for key, value in names.items()} if names else None
