"""NICE-Trans: non-iterative coarse-to-fine joint affine and deformable registration (one forward pass)."""
from __future__ import annotations

from pathlib import Path

from warpseg.methods.learned import LearnedRegistration, shipped_weights


class NiceTransRegistration(LearnedRegistration):
    name = "nice-trans"
    description = "NICE-Trans network: affine + Swin-Transformer coarse-to-fine deformable, one forward pass."


class NiceTransAffineRegistration(LearnedRegistration):
    """The affine stage of the same NICE-Trans network (the paper's 'affine only' row)."""

    name = "nice-trans-affine"
    description = "The affine head of NICE-Trans alone (same weights as nice-trans)."
    output_key = "affine_displacement"

    def weights_path(self, ndim: int) -> Path:
        if self.weights:
            return Path(self.weights)
        path = shipped_weights("nice-trans", ndim)
        return path if path.is_file() else super().weights_path(ndim)
