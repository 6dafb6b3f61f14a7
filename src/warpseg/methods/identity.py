"""The identity transform: the baseline every method must beat."""
from __future__ import annotations

import numpy as np

from warpseg.methods.base import MethodOutput, Progress, RegistrationInput, RegistrationMethod


class Identity(RegistrationMethod):
    name = "identity"
    description = "No registration: the moving image resampled onto the fixed grid (the 'before' row)."

    def run(self, pair: RegistrationInput):
        yield Progress("register", 1, 1, "identity")
        return MethodOutput(np.zeros((pair.ndim, *pair.fixed.shape), dtype=np.float32))
