"""Evaluation metrics shared by every method: Dice, HD95, ASD, NCC and folding."""
from __future__ import annotations

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

    Surfaces are the voxels of a mask that its (cross-shaped) erosion removes; HD95 is the larger
    of the two directed 95th percentiles of surface-to-surface distances, ASD the mean of both
    directions together (MONAI's definitions). One distance transform per surface, computed on the
    bounding box of both masks (a voxel margin around it). A label missing from ``predicted`` gets
    ``(nan, nan)``.
    """
    from scipy import ndimage

    results = {}
    for label in labels_in(reference):
        pred, ref = predicted == label, reference == label
        if not pred.any():
            results[label] = (float("nan"), float("nan"))
            continue
        box = _bounding_box(pred | ref, margin=1)
        pred_surface, ref_surface = (mask[box] ^ ndimage.binary_erosion(mask[box]) for mask in (pred, ref))
        to_reference = ndimage.distance_transform_edt(~ref_surface, sampling=spacing)[pred_surface]
        to_prediction = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)[ref_surface]
        hd95 = max(np.percentile(to_reference, 95), np.percentile(to_prediction, 95))
        asd = np.concatenate([to_reference, to_prediction]).mean()
        results[label] = (float(hd95), float(asd))
    return results


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Slices of the smallest box holding ``mask``'s voxels, grown by ``margin`` within the array."""
    box = []
    for axis in range(mask.ndim):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(0, present[0] - margin), min(mask.shape[axis], present[-1] + 1 + margin)))
    return tuple(box)


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


def differing_label_names(names: dict[int, str] | None, reference: dict[int, str] | None) -> dict[int, list[str]]:
    """IDs both label maps name, but differently (case, spaces and punctuation aside): ``{id: [name,
    reference name]}``. Dice per ID then compares different structures."""
    from warpseg.tissue_classes import name_key

    if not names or not reference:
        return {}
    return {int(label): [names[label], reference[label]] for label in sorted(set(names) & set(reference))
            if name_key(names[label]) != name_key(reference[label])}


def segmentation_metrics(labels: np.ndarray, names: dict[int, str] | None, reference: np.ndarray,
                         reference_names: dict[int, str] | None, spacing: tuple[float, ...]) -> dict:
    """:func:`label_metrics` of a segmentation against a reference label map, both named ``{id: name}``.

    When the two name their IDs differently, ``label_names_differ`` says so, and when both merge
    into the tissue classes by name (seg4 against a CSF / grey / white matter reference, say),
    ``tissue_classes`` holds the metrics of the merged maps, with ``names``: the comparison that means
    something.
    """
    from warpseg.tissue_classes import TISSUE_NAMES, as_tissue_classes, tissue_lookup

    metrics = label_metrics(labels, reference, spacing)
    differing = differing_label_names(names, reference_names)
    if differing:
        metrics["label_names_differ"] = differing
        lookups = tissue_lookup(names), tissue_lookup(reference_names)
        if lookups[0] is not None and lookups[1] is not None:
            merged = (as_tissue_classes(array, lookup) for array, lookup in zip((labels, reference), lookups))
            metrics["tissue_classes"] = {**label_metrics(*merged, spacing),
                                         "names": {str(label): name for label, name in TISSUE_NAMES.items()}}
    return metrics


def label_names_warning(differing: dict[int, list[str]]) -> str:
    """What a ``label_names_differ`` entry means, in the words the CLI and the widgets share."""
    pairs = ", ".join(f"{label} {names[0]!r} vs {names[1]!r}" for label, names in differing.items())
    return f"the two label maps name these IDs differently ({pairs}): their Dice compares different structures"


def dice_headline(metrics: dict) -> str:
    """``Dice 0.806``; for label maps merged into tissue classes, ``Dice 0.412 as CSF / grey matter /
    white matter``: the words the CLI and the widgets share."""
    merged = metrics.get("tissue_classes")
    if merged:
        return f"Dice {merged['dice_mean']:.3f} as {' / '.join(merged['names'].values())}"
    return f"Dice {metrics['dice_mean']:.3f}"


def segmentation_lines(metrics: dict) -> list[str]:
    """One line per segmentation a registration scored: ``fixed segmentation: Dice 0.806``."""
    return [f"{name.replace('_', ' ')}: {dice_headline(scores)}"
            for name, scores in metrics.get("segmentations", {}).items() if "dice_mean" in scores]
