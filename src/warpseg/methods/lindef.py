"""Linear + deformable CNN (Christodoulidis et al. 2018): fold-free by construction, one forward pass."""
from __future__ import annotations

from warpseg.methods.learned import LearnedRegistration


class LinearDeformableRegistration(LearnedRegistration):
    name = "lindef"
    description = "Linear + deformable CNN: affine + cumulative-sum grid, fold-free by construction, one forward pass."
