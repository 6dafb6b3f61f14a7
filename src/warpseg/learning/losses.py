"""Training losses grouped as image, label and deformation terms (MONAI where it has them).

Image similarity is pluggable: ``"mse"``, ``"lncc"``, ``"mi"`` or a weighted sum written
``"mi:0.5,lncc:0.5"`` (see :func:`parse_similarity`). Every similarity is a loss: lower is better.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from warpseg.errors import InputError

SIMILARITIES = ("mse", "lncc", "mi")
"""Names of the image similarities a training run can choose."""


def parse_similarity(text: str) -> list[tuple[str, float]]:
    """``"lncc"`` or ``"mi:0.5,lncc:0.5"`` to ``[(name, weight), ...]``; a clear error otherwise."""
    terms = []
    for part in (piece.strip() for piece in str(text).split(",")):
        name, _, weight = part.partition(":")
        name = name.strip().lower()
        if name not in SIMILARITIES:
            raise InputError(f"unknown similarity {name!r} in {text!r}; choose from {', '.join(SIMILARITIES)}, "
                             "or a weighted sum such as 'mi:0.5,lncc:0.5'")
        try:
            value = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise InputError(f"similarity weight {weight!r} in {text!r} is not a number") from None
        if value <= 0 or any(name == seen for seen, _ in terms):
            raise InputError(f"similarity {text!r}: each name once, with a positive weight")
        terms.append((name, value))
    return terms


class MutualInformationLoss(torch.nn.Module):
    """Negative global mutual information with Gaussian Parzen windows (differentiable).

    Intensities (clipped to [0, 1], the engine's normalisation) are spread over ``bins`` equally
    spaced bin centres with Gaussian weights of width ``sigma_ratio`` times the bin spacing,
    normalised per voxel. The joint histogram is the voxel mean of the outer products of both
    images' weights; ``MI = sum p_ab log(p_ab / (p_a p_b))`` in nats.

    Shapes
    ------
    ``forward(warped, fixed)``: both ``(B, 1, *S)``; returns a scalar, ``-MI`` averaged over the batch.
    """

    def __init__(self, bins: int = 32, sigma_ratio: float = 0.5, eps: float = 1e-10) -> None:
        super().__init__()
        if bins < 2 or sigma_ratio <= 0:
            raise ValueError(f"need bins >= 2 and sigma_ratio > 0, got {bins} and {sigma_ratio}")
        self.register_buffer("centres", torch.linspace(0.0, 1.0, bins), persistent=False)
        self.sigma = sigma_ratio / (bins - 1)
        self.eps = eps

    def parzen_weights(self, image: torch.Tensor) -> torch.Tensor:
        """Per-voxel bin memberships: ``(B, C, *S)`` to ``(B, N, bins)`` summing to 1 over bins."""
        values = image.reshape(image.shape[0], -1, 1).clamp(0.0, 1.0)
        weights = torch.exp(-0.5 * ((values - self.centres.to(image)) / self.sigma) ** 2)
        return weights / weights.sum(dim=-1, keepdim=True)

    def mutual_information(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """MI in nats of two images, per batch element: ``(B,)``."""
        a, b = self.parzen_weights(first), self.parzen_weights(second)
        joint = a.transpose(1, 2) @ b / a.shape[1]  # (B, bins, bins)
        marginals = joint.sum(dim=2, keepdim=True) * joint.sum(dim=1, keepdim=True)
        ratio = (joint + self.eps) / (marginals + self.eps)
        return (joint * torch.log(ratio)).sum(dim=(1, 2))

    def forward(self, warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        return -self.mutual_information(warped, fixed).mean()


class MeanSquaredErrorLoss(torch.nn.Module):
    """Mean squared intensity difference (the paper's ``||R - W(S, G)||^2``), a scalar."""

    def forward(self, warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(warped, fixed)


class SimilarityLoss(torch.nn.Module):
    """A weighted sum of image similarity losses chosen by name (see :func:`parse_similarity`).

    Shapes
    ------
    ``forward(warped, fixed)``: both ``(B, 1, *S)``; returns a scalar.
    """

    def __init__(self, ndim: int, similarity: str = "lncc", window: int = 9) -> None:
        super().__init__()
        from monai.losses import LocalNormalizedCrossCorrelationLoss

        self.terms = parse_similarity(similarity)
        builders = {"mse": MeanSquaredErrorLoss, "mi": MutualInformationLoss,
                    "lncc": lambda: LocalNormalizedCrossCorrelationLoss(spatial_dims=ndim, kernel_size=window)}
        self.losses = torch.nn.ModuleDict({name: builders[name]() for name, _ in self.terms})

    def forward(self, warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        if len(self.terms) == 1:  # exactly the single loss (no multiplication by 1.0)
            return self.losses[self.terms[0][0]](warped, fixed)
        return sum(weight * self.losses[name](warped, fixed) for name, weight in self.terms)


class RegistrationLoss(torch.nn.Module):
    """``similarity(warped, fixed) + smoothness * diffusion(u) + dice_weight * (1 - Dice(labels))``.

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
    similarity
        The image similarity (see :func:`parse_similarity`); ``"lncc"`` (-LNCC) by default.
    """

    def __init__(self, ndim: int, window: int = 9, smoothness: float = 1.0, dice_weight: float = 1.0,
                 similarity: str = "lncc") -> None:
        super().__init__()
        from monai.losses import DiffusionLoss

        self.similarity = SimilarityLoss(ndim, similarity, window)
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


def class_weights(labels: torch.Tensor, num_classes: int, eps: float = 1.0) -> torch.Tensor:
    """Cross-entropy class weights ``1 / sqrt(voxel share)``, scaled to a mean of 1 over present classes.

    Shapes
    ------
    labels ``(B, 1, *S)`` integer; returns ``(num_classes,)`` (absent classes get weight 0).
    """
    counts = torch.bincount(labels.reshape(-1).long(), minlength=num_classes)[:num_classes].float()
    present = counts > 0
    weights = torch.where(present, (counts.sum() / (counts + eps)).sqrt(), torch.zeros_like(counts))
    return weights / weights[present].mean()


class SegmentationLoss(torch.nn.Module):
    """Weighted cross-entropy + (1 - soft Dice) of label logits against an integer label map.

    The weights (:func:`class_weights`) come from the label map itself, so rare structures count.

    Shapes
    ------
    ``forward(logits, labels)``: logits ``(B, L, *S)``, labels ``(B, 1, *S)`` integer; returns
    ``{"cross_entropy", "dice"}`` scalars.
    """

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        num_classes = logits.shape[1]
        weights = class_weights(labels, num_classes).to(logits)
        cross_entropy = F.cross_entropy(logits, labels[:, 0].long(), weight=weights)
        dice = 1.0 - soft_dice(torch.softmax(logits, dim=1), one_hot(labels, num_classes))
        return {"cross_entropy": cross_entropy, "dice": dice}


def probability_dice_loss(first: torch.Tensor, second: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``1 -`` mean soft Dice over the foreground channels of two probability maps (both differentiable).

    Shapes
    ------
    first, second ``(B, L, *S)``, channel 0 background; returns a scalar.
    """
    dims = tuple(range(2, first.dim()))
    overlap = (first * second).sum(dims)
    total = first.sum(dims) + second.sum(dims)
    return 1.0 - ((2 * overlap + eps) / (total + eps))[:, 1:].mean()
