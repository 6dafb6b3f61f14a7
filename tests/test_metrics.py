import numpy as np
import pytest

from warpseg.metrics import dice_per_label, label_metrics, normalized_cross_correlation, surface_distances


def test_dice_of_identical_maps_is_one_and_background_is_ignored():
    labels = np.zeros((20, 20), np.uint8)
    labels[2:8, 2:8], labels[10:15, 10:18] = 1, 3
    assert dice_per_label(labels, labels) == {1: 1.0, 3: 1.0}


def test_dice_only_counts_labels_of_the_reference():
    reference = np.zeros((10, 10), np.uint8)
    reference[:5] = 1
    predicted = reference.copy()
    predicted[5:] = 2
    assert dice_per_label(predicted, reference) == {1: 1.0}


def test_dice_of_half_overlap():
    a, b = np.zeros((10, 10), np.uint8), np.zeros((10, 10), np.uint8)
    a[:, :4], b[:, 2:6] = 1, 1
    assert dice_per_label(a, b)[1] == pytest.approx(0.5)


def test_surface_distance_of_a_shift_is_the_shift_in_mm():
    a, b = np.zeros((30, 30, 30), np.uint8), np.zeros((30, 30, 30), np.uint8)
    a[10:20, 10:20, 10:20], b[12:22, 10:20, 10:20] = 1, 1
    hd95, asd = surface_distances(a, b, (1.5, 1.0, 1.0))[1]
    assert hd95 == pytest.approx(3.0, abs=1e-6)  # 2 voxels along an axis of 1.5 mm
    assert 0 < asd < 3.0


def test_missing_label_gives_nan_distance_not_a_crash():
    a, b = np.zeros((10, 10), np.uint8), np.zeros((10, 10), np.uint8)
    b[2:5, 2:5] = 1
    metrics = label_metrics(a, b, (1.0, 1.0))
    assert metrics["dice_mean"] == 0.0 and np.isnan(metrics["hd95_mean"])


def test_ncc():
    x = np.random.default_rng(1).random((8, 9))
    assert normalized_cross_correlation(x, x) == pytest.approx(1.0)
    assert normalized_cross_correlation(x, -2 * x + 3) == pytest.approx(-1.0)


def test_surface_distances_match_monai_definitions():
    """Our one-pass HD95/ASD equal MONAI's compute_hausdorff_distance / compute_average_surface_distance."""
    import warnings

    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    rng = np.random.default_rng(3)
    grid = np.indices((30, 34, 28)).astype(float)
    centre = np.array([15.0, 17.0, 14.0])[:, None, None, None]
    radius = np.sqrt(((grid - centre) ** 2).sum(0))
    predicted = (radius < 9).astype(np.uint8) + (radius < 4)
    reference = (radius + rng.normal(0, 1.0, radius.shape) < 10).astype(np.uint8) + (radius < 5)
    spacing = (1.0, 1.3, 0.8)
    ours = surface_distances(predicted, reference, spacing)
    for label, (hd95, asd) in ours.items():
        pred, ref = (torch.as_tensor(a == label)[None, None] for a in (predicted, reference))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected_hd = compute_hausdorff_distance(pred, ref, include_background=True, percentile=95, spacing=list(spacing))
            expected_asd = compute_average_surface_distance(pred, ref, include_background=True, symmetric=True,
                                                            spacing=list(spacing))
        assert hd95 == pytest.approx(float(expected_hd), rel=1e-5)
        assert asd == pytest.approx(float(expected_asd), rel=1e-5)
