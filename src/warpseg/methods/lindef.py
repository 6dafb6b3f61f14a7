"""Linear + deformable CNN (Christodoulidis et al. 2018): fold-free by construction, one forward pass."""
from __future__ import annotations

from typing import Any, ClassVar

from warpseg.errors import InputError
from warpseg.methods.learned import LearnedRegistration

SIMILARITIES = ("lncc", "mse", "mi")
"""The image similarities lindef weights ship for (the first is the default)."""


class LinearDeformableRegistration(LearnedRegistration):
    name = "lindef"
    description = ("Linear + deformable CNN: affine + cumulative-sum grid, fold-free by construction, one forward "
                   "pass; weights trained with LNCC, MSE or mutual information (option similarity).")
    defaults: ClassVar[dict[str, Any]] = {**LearnedRegistration.defaults, "similarity": SIMILARITIES[0]}
    variant_option: ClassVar[str] = "similarity"

    @property
    def weights_variant(self) -> str:
        """The similarity the shipped weights were trained with: ``lindef_<n>d_<similarity>.pt``."""
        chosen = str(self.options.get("similarity", SIMILARITIES[0]))
        if chosen not in SIMILARITIES:
            raise InputError(f"lindef ships weights for similarity {', '.join(SIMILARITIES)}, not {chosen!r}; "
                             "pass --weights for others")
        return chosen
