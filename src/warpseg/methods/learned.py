"""Learned registration methods: a checkpoint, its preprocessing, one forward pass."""
from __future__ import annotations

import time
from typing import Any, ClassVar

import numpy as np

from warpseg.methods.base import MethodOutput, Progress, RegistrationInput, RegistrationMethod
from warpseg.methods.learned_inference import (
    ShippedWeights, load_learned_model, model_grid, shipped_weights, to_model_grid,
)
from warpseg.methods.nir import NIR_DEFAULTS

__all__ = ["LearnedRegistration", "refine_defaults", "refine_settings", "shipped_weights"]


def refine_defaults() -> dict[str, Any]:
    """Options of every learned method: ``refine`` (NIR iterations started from the model's field,
    0: off) and ``refine_<nir option>`` for the rest of that optimisation."""
    return {"refine": 0, **{f"refine_{key}": value for key, value in NIR_DEFAULTS.items()
                            if key != "iterations"}}


def refine_settings(settings: dict[str, Any], method: str) -> dict[str, Any] | None:
    """The checked NIR settings of a learned method's ``refine`` options; None when ``refine`` is 0.

    A negative ``refine`` and bad NIR choices are refused with a message naming the option.
    """
    from warpseg.errors import InputError
    from warpseg.methods.nir import check_settings

    if settings["refine"] < 0:
        raise InputError(f"{method} option refine={settings['refine']}: give a number of refinement steps "
                         "(100 is a good start), or 0 for none")
    if not settings["refine"]:
        return None
    picked = {key: settings[f"refine_{key}"] for key in NIR_DEFAULTS if f"refine_{key}" in settings}
    return check_settings({**NIR_DEFAULTS, **picked, "iterations": int(settings["refine"])}, method,
                          prefix="refine_")


class LearnedRegistration(ShippedWeights, RegistrationMethod):
    """A network that maps (moving, fixed) to a displacement in one forward pass.

    Subclasses only name themselves; the checkpoint says which network to build and how to
    preprocess. Without ``weights`` the shipped weights for the input's dimensionality are used.
    """

    needs_weights: ClassVar[bool] = True
    output_key: ClassVar[str] = "displacement"
    training_hint: ClassVar[str] = ""
    """Options after ``warpseg train NAME --ndim N`` in the no-weights message (e.g. ``" --labels seg4"``)."""

    defaults: ClassVar[dict[str, Any]] = refine_defaults()


    def run(self, pair: RegistrationInput):
        import torch

        from warpseg.learning.preprocess import field_to_native_grid
        from warpseg.methods.sitk_runner import resolve_options

        settings = resolve_options(self.defaults, self.options, self.name)
        refine = refine_settings(settings, self.name)
        path = self.weights_path(pair.ndim)
        model, checkpoint = load_learned_model(path, pair.ndim, pair.device)
        yield Progress("register", 0, 1, f"{self.name}: one forward pass")
        started = time.perf_counter()
        grid = model_grid(pair.fixed.shape, pair.spacing, checkpoint)
        with torch.inference_mode():
            moving, fixed = (to_model_grid(a, grid, pair.device) for a in (pair.moving, pair.fixed))
            outputs = model(moving, fixed, **self.forward_options())
            field = field_to_native_grid(outputs[self.output_key], grid)[0].float().cpu().numpy()
            extra = self.extra_details(outputs, grid, checkpoint)
        seconds = time.perf_counter() - started
        yield Progress("register", 1, 1, f"{self.name}: done in {seconds * 1000:.0f} ms")
        details = {"weights_file": str(path), "seconds_inference": seconds,
                   "trained": {k: checkpoint["training"].get(k) for k in ("command", "validation")}, **extra}
        if refine is None:
            return MethodOutput(field.astype(np.float32), details=details)
        return (yield from self.refined(pair, field, refine, details))

    def extra_details(self, outputs: dict, grid, checkpoint: dict) -> dict[str, Any]:
        """More entries for :attr:`MethodOutput.details` from the forward pass (none by default)."""
        return {}

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
