"""The segmentation dock widget: atlas propagation on the sample pair, label names, Dice table."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import rename_label

pytestmark = pytest.mark.gui


def open_widget(viewer):
    from warpseg._plugin._widget_segment import SegmentationWidget

    viewer.open_sample("napari-warpseg", "brain_pair_2d")
    widget = SegmentationWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment")
    return widget


def test_atlas_propagation_adds_a_named_label_layer_and_a_dice_table(make_napari_viewer, qtbot, sample_cache,
                                                                      errors):
    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    assert (widget.image.value.name, widget.atlas.value.name, widget.reference.value.name) == (
        "fixed", "moving", "fixed labels")
    widget.registration.value = "sitk-demons"
    widget.start()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert not errors
    layer = viewer.layers["atlas-propagation: segmentation"]
    assert type(layer).__name__ == "Labels" and layer.data.shape == viewer.layers["fixed"].data.shape
    assert np.allclose(layer.affine.affine_matrix, viewer.layers["fixed"].affine.affine_matrix)
    assert "name" in layer.features and len(set(layer.features["name"]) - {""}) >= 3
    rows = widget.table.data.to_list()
    assert len(rows) >= 3 and all(0.5 < row[2] <= 1.0 for row in rows) and all(row[1] for row in rows)
    assert "mean Dice" in widget.scores.value


def test_a_reference_naming_its_labels_otherwise_is_flagged_beside_the_scores(make_napari_viewer, qtbot,
                                                                              sample_cache, errors):
    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    names = rename_label(viewer.layers["fixed labels"], 1, "Hippocampus")
    widget.registration.value = "identity"
    widget.start()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert not errors
    assert "mean Dice" in widget.scores.value
    assert f"1 {names[1]!r} vs 'Hippocampus'" in widget.scores.value and "different structures" in widget.scores.value


def test_a_seg4_model_on_the_tissue_labelled_sample_is_scored_by_tissue_class(make_napari_viewer, qtbot,
                                                                              sample_cache, errors):
    """The sample's CSF / grey / white matter reference against a seg4 network: merged by name, not ID by ID."""
    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    widget.method.value = "nice-transeg"
    widget.start()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert not errors
    assert "as CSF / grey matter / white matter" in widget.scores.value
    assert "different structures" not in widget.scores.value
    rows = widget.table.data.to_list()
    assert [row[1] for row in rows] == ["CSF", "grey matter", "white matter"] and all(0 < row[2] <= 1 for row in rows)


def test_missing_atlas_labels_is_an_error_that_changes_nothing(make_napari_viewer, errors):
    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    widget.atlas_labels.value = None
    names = [layer.name for layer in viewer.layers]
    assert widget.start() is None and "needs an atlas" in errors[0]
    assert [layer.name for layer in viewer.layers] == names


def test_a_refining_network_shows_its_progress_and_cancel_adds_nothing(make_napari_viewer, qtbot, sample_cache,
                                                                         errors):
    import time

    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    names = [layer.name for layer in viewer.layers]
    widget.method.value = "nice-transeg"
    widget.method_options.value = "refine=1000000"
    job = widget.start()
    qtbot.waitUntil(lambda: "refine atlas 1/" in widget.log.value, timeout=60_000)
    cancelled_at = time.monotonic()
    widget.cancel_button.clicked.emit(True)
    qtbot.waitUntil(lambda: not job.running, timeout=30_000)
    assert time.monotonic() - cancelled_at < 5.0 and "cancelled" in widget.log.value and not errors
    assert [layer.name for layer in viewer.layers] == names
