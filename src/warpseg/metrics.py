"""Evaluation metrics shared by every method: Dice, HD95, ASD, NCC and folding."""
from __future__ import annotations

import warnings

import numpy as np


def labels_in(reference: np.ndarray) -> list[int]:
    """Foreground labels present in a reference label map (background 0 excluded)."""
    return [int(value) for value in np.unique(reference) if value != 0]


def dice_per_label(predicted: np.ndarray, reference: np.ndarray) -> dict[int, float]:
    """Dice of every foreground label present in ``reference``."""
    if predicted.shape != reference.shape:
        raise ValueError(f"label maps differ in shape: {predicted.shape} vs {reference.shape}")
    scores = {}
    for label in labels_in(reference):
        pred, ref = predicted == label, reference == label
        scores[label] = float(2.0 * np.logical_and(pred, ref).sum() / (pred.sum() + ref.sum()))
    return scores


def surface_distances(predicted: np.ndarray, reference: np.ndarray,
                      spacing: tuple[float, ...]) -> dict[int, tuple[float, float]]:
    """``{label: (HD95, ASD)}`` in mm for every foreground label present in ``reference``.

    A label missing from ``predicted`` gets ``(nan, nan)``. Uses MONAI's surface-distance metrics.
    """
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    results = {}
    for label in labels_in(reference):
        pred = torch.as_tensor(predicted == label)[None, None]
        ref = torch.as_tensor(reference == label)[None, None]
        if not bool(pred.any()):
            results[label] = (float("nan"), float("nan"))
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hd95 = compute_hausdorff_distance(pred, ref, include_background=True, percentile=95,
                                              spacing=list(spacing))
            asd = compute_average_surface_distance(pred, ref, include_background=True, symmetric=True,
                                                   spacing=list(spacing))
        results[label] = (float(hd95), float(asd))
    return results


def normalized_cross_correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Global NCC of two images in [-1, 1]; 0 when either is constant."""
    a = first.astype(np.float64).ravel() - first.mean()
    b = second.astype(np.float64).ravel() - second.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def label_metrics(warped_labels: np.ndarray, fixed_labels: np.ndarray,
                  spacing: tuple[float, ...]) -> dict:
    """Dice per label and mean, HD95 and ASD means in mm, of warped moving labels vs fixed labels."""
    dice = dice_per_label(warped_labels, fixed_labels)
    distances = surface_distances(warped_labels, fixed_labels, spacing)
    hd95 = [value[0] for value in distances.values()]
    asd = [value[1] for value in distances.values()]
    return {
        "dice_mean": float(np.mean(list(dice.values()))) if dice else float("nan"),
        "dice_per_label": {str(label): score for label, score in dice.items()},
        "hd95_mean": float(np.nanmean(hd95)) if np.isfinite(hd95).any() else float("nan"),
        "asd_mean": float(np.nanmean(asd)) if np.isfinite(asd).any() else float("nan"),
    }
