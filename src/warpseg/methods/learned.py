"""Learned registration methods: a checkpoint, its preprocessing, one forward pass."""
from __future__ import annotations

import time
from importlib.resources import files
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from warpseg.errors import InputError
from warpseg.methods.base import MethodOutput, Progress, RegistrationInput, RegistrationMethod
from warpseg.methods.nir import NIR_DEFAULTS


def refine_defaults() -> dict[str, Any]:
    """Options of every learned method: ``refine`` (NIR iterations started from the model's field,
    0: off) and ``refine_<nir option>`` for the rest of that optimisation."""
    return {"refine": 0, **{f"refine_{key}": value for key, value in NIR_DEFAULTS.items()
                            if key != "iterations"}}


def refine_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The NIR settings of a learned method's ``refine`` options."""
    picked = {key: settings[f"refine_{key}"] for key in NIR_DEFAULTS if f"refine_{key}" in settings}
    return {**NIR_DEFAULTS, **picked, "iterations": int(settings["refine"])}


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

    defaults: ClassVar[dict[str, Any]] = refine_defaults()

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
        from warpseg.methods.nir import check_settings
        from warpseg.methods.sitk_runner import resolve_options
        from warpseg.learning.preprocess import (Preprocessing, field_to_native_grid, image_to_model_grid,
                                                 plan_grid)

        settings = resolve_options(refine_defaults(), self.options, self.name)
        refine = check_settings(refine_settings(settings), self.name) if settings["refine"] > 0 else None
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
        if refine is None:
            return MethodOutput(field.astype(np.float32), details=details)
        return (yield from self.refined(pair, field, refine, details))

    def refined(self, pair: RegistrationInput, field: np.ndarray, settings: dict[str, Any],
                details: dict[str, Any]):
        """Test-time optimisation: a NIR field fitted on top of the model's ``field`` ``(ndim, *S)``.

        Like NIR, the method keeps the fit: :meth:`best_output` gives the best field so far.
        """
        from warpseg.methods.nir import FieldFit

        self.fit = FieldFit(pair, settings, initial=field)
        output = yield from self.fit.run(stage="refine")
        output.details = {**details, "refine": output.details}
        return output

    def best_output(self) -> MethodOutput | None:
        """The best refined field so far, marked partial (None unless a refinement started)."""
        fit = getattr(self, "fit", None)
        return None if fit is None else fit.best_output(partial=True)

    def forward_options(self) -> dict:
        """Keyword arguments for the model's forward pass (none by default)."""
        return {}
