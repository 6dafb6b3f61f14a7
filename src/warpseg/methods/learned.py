"""Learned registration methods: a checkpoint, its preprocessing, one forward pass."""
from __future__ import annotations

import time
from importlib.resources import files
from pathlib import Path
from typing import ClassVar

import numpy as np

from warpseg.errors import InputError
from warpseg.methods.base import MethodOutput, Progress, RegistrationInput, RegistrationMethod


def shipped_weights(method: str, ndim: int) -> Path:
    """Path of the weights shipped in the package for ``method`` in ``ndim`` dimensions."""
    return Path(str(files("warpseg") / "weights" / f"{method}_{ndim}d.pt"))


class LearnedRegistration(RegistrationMethod):
    """A network that maps (moving, fixed) to a displacement in one forward pass.

    Subclasses only name themselves; the checkpoint says which network to build and how to
    preprocess. Without ``weights`` the shipped weights for the input's dimensionality are used.
    """

    needs_weights: ClassVar[bool] = True
    output_key: ClassVar[str] = "displacement"

    @classmethod
    def has_shipped_weights(cls, ndim: int) -> bool:
        try:
            return cls().weights_path(ndim).is_file()
        except InputError:
            return False

    def weights_path(self, ndim: int) -> Path:
        if self.weights:
            return Path(self.weights)
        path = shipped_weights(self.name, ndim)
        if not path.is_file():
            raise InputError(f"no shipped {ndim}D weights for {self.name}; train some with "
                             f"`warpseg train {self.name} --ndim {ndim}` and pass --weights")
        return path

    def run(self, pair: RegistrationInput):
        import torch

        from warpseg.learning.checkpoint import load_checkpoint
        from warpseg.learning.preprocess import (Preprocessing, field_to_native_grid, image_to_model_grid,
                                                 plan_grid)

        path = self.weights_path(pair.ndim)
        model, checkpoint = load_checkpoint(path, pair.device)
        model_ndim = checkpoint["model"]["config"].get("ndim")
        if model_ndim != pair.ndim:
            raise InputError(f"{path} holds a {model_ndim}D model but the images are {pair.ndim}D; "
                             f"give {pair.ndim}D weights")
        yield Progress("register", 0, 1, f"{self.name}: one forward pass")
        started = time.perf_counter()
        preprocessing = Preprocessing(**checkpoint["preprocessing"])
        grid = plan_grid(pair.fixed.shape, pair.spacing, preprocessing)
        with torch.inference_mode():
            moving, fixed = (image_to_model_grid(torch.as_tensor(a, device=pair.device)[None, None], grid)
                             for a in (pair.moving, pair.fixed))
            outputs = model(moving, fixed, **self.forward_options())
            field = field_to_native_grid(outputs[self.output_key], grid)[0].float().cpu().numpy()
        seconds = time.perf_counter() - started
        yield Progress("register", 1, 1, f"{self.name}: done in {seconds * 1000:.0f} ms")
        details = {"weights_file": str(path), "seconds_inference": seconds,
                   "trained": {k: checkpoint["training"].get(k) for k in ("command", "validation")}}
        return MethodOutput(field.astype(np.float32), details=details)

    def forward_options(self) -> dict:
        """Keyword arguments for the model's forward pass (none by default)."""
        return {}
