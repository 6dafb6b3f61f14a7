"""Atlas-ISTN test-time refinement: the ITN frozen, a copy of the STN optimised on one image.

``L* = β* L*_a2s + γ* L*_s2a + λ* L_reg`` with the ITN's own ``ŷ`` in place of the unknown labels
(slides: β* = 1, γ* = 0, λ* = 500–800, 50–100 iterations). The network is left untouched (the copy
is optimised), so a cached model serves the next image unchanged.
"""
from __future__ import annotations

import copy
from collections.abc import Generator

import torch

from warpseg.learning.atlas_istn_loss import registration_terms
from warpseg.methods.base import Progress


def refine_transformer(model, probabilities: torch.Tensor, atlas_labels: torch.Tensor, *, iterations: int,
                       learning_rate: float = 1e-4, smoothness: float = 500.0, atlas_to_image_weight: float = 1.0,
                       image_to_atlas_weight: float = 0.0, stage: str = "refine"
                       ) -> Generator[Progress, None, tuple[dict, dict]]:
    """Optimise a copy of ``model.stn`` for ``iterations`` Adam steps on ``L*``; yield progress per step.

    Returns the refined STN outputs (as :meth:`~warpseg.models.AtlasIstn.transform` gives them)
    and a summary ``{"iterations", "loss_before", "loss_after"}``. Closing the generator stops
    after the current step.

    Shapes
    ------
    probabilities ``(1, L, *S)`` (the ITN's ``ŷ``); atlas_labels ``(1, L, *S)`` on the same grid.
    """
    stn = copy.deepcopy(model.stn).requires_grad_(True)
    optimiser = torch.optim.Adam(stn.parameters(), lr=learning_rate)
    target, atlas = probabilities.detach(), atlas_labels.detach()

    def loss(outputs: dict) -> torch.Tensor:
        terms = registration_terms(outputs, target, atlas, smoothness=smoothness,
                                   atlas_to_image_weight=atlas_to_image_weight,
                                   image_to_atlas_weight=image_to_atlas_weight)
        return sum(terms.values())

    losses = []
    for step in range(iterations):
        with torch.enable_grad():
            total = loss(model.transform(target, atlas, stn=stn))
            optimiser.zero_grad(set_to_none=True)
            total.backward()
            optimiser.step()
        losses.append(float(total.detach()))
        yield Progress(stage, step + 1, iterations, f"test-time refinement of the STN, step {step + 1}/{iterations}",
                       loss=losses[-1])
    with torch.no_grad():
        outputs = model.transform(target, atlas, stn=stn)
        final = float(loss(outputs))
    summary = {"iterations": iterations, "loss_before": losses[0] if losses else final, "loss_after": final}
    return outputs, summary
