"""Training losses grouped as image, label and deformation terms (MONAI where it has them)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


class RegistrationLoss(torch.nn.Module):
    """``-LNCC(warped, fixed) + smoothness * diffusion(u) + dice_weight * (1 - Dice(labels))``.

    Parameters
    ----------
    ndim
        Spatial dimensions.
    window
        LNCC window (9 in NICE-Trans and VoxelMorph).
    smoothness
        Weight of the diffusion regulariser (mean squared spatial gradient of ``u``), σ in the papers.
    dice_weight
        Weight of the soft Dice of the warped moving one-hot labels, used when both sides have labels.
    """

    def __init__(self, ndim: int, window: int = 9, smoothness: float = 1.0, dice_weight: float = 1.0) -> None:
        super().__init__()
        from monai.losses import DiffusionLoss, LocalNormalizedCrossCorrelationLoss

        self.similarity = LocalNormalizedCrossCorrelationLoss(spatial_dims=ndim, kernel_size=window)
        self.diffusion = DiffusionLoss()
        self.smoothness, self.dice_weight = smoothness, dice_weight

    def forward(self, warped: torch.Tensor, fixed: torch.Tensor, displacement: torch.Tensor,
                warped_onehot: torch.Tensor | None = None, fixed_onehot: torch.Tensor | None = None) -> dict:
        """The total loss and its terms.

        Shapes
        ------
        warped, fixed: ``(B, 1, *S)``; displacement: ``(B, ndim, *S)``; one-hots ``(B, L, *S)``.
        """
        terms = {"similarity": self.similarity(warped, fixed),
                 "smoothness": self.smoothness * self.diffusion(displacement)}
        if warped_onehot is not None and fixed_onehot is not None and self.dice_weight > 0:
            terms["dice"] = self.dice_weight * (1.0 - soft_dice(warped_onehot, fixed_onehot))
        terms["total"] = sum(terms.values())
        return terms


def soft_dice(predicted: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Mean soft Dice over foreground channels (channel 0 is background) present in ``reference``."""
    dims = tuple(range(2, predicted.dim()))
    overlap = (predicted * reference).sum(dims)
    total = predicted.sum(dims) + reference.sum(dims)
    dice = (2 * overlap + eps) / (total + eps)
    present = reference.sum(dims) > 0
    present[:, 0] = False
    return dice[present].mean() if present.any() else dice.new_tensor(1.0)


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B, 1, *S)`` integer labels to ``(B, num_classes, *S)`` float one-hot."""
    return torch.movedim(F.one_hot(labels[:, 0].long(), num_classes), -1, 1).float()
