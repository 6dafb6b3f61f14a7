"""The atlas dock widget: the atlas layers evolve every epoch, Finish now keeps the build, bad folders change nothing."""
from __future__ import annotations

import json

import numpy as np
import pytest

from test_atlas_istn import write_tiny_shared_data

pytestmark = pytest.mark.gui


def open_widget(viewer, data, out, epochs=2):
    from warpseg._plugin._widget_atlas import AtlasWidget

    widget = AtlasWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Build atlas")
    widget.data.value, widget.out.value = str(data), str(out)
    widget.epochs.value, widget.steps.value, widget.rate.value = epochs, 4, 0.5
    return widget


def test_atlas_layers_update_every_epoch_on_the_atlas_grid(make_napari_viewer, qtbot, tmp_path, errors):
    from warpseg.io import read_volume

    viewer = make_napari_viewer()
    widget = open_widget(viewer, write_tiny_shared_data(tmp_path / "data"), tmp_path / "atlas")
    shown = []
    viewer.layers.events.inserted.connect(lambda event: shown.append(event.value.name))
    widget.learning_rate.value, widget.extra_loss.value = 5e-4, True
    widget.start()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert not errors
    assert [record["epoch"] for record in widget.history] == [0, 1, 2]
    assert {"loss_segmentation_dice", "loss_segmentation_cross_entropy"} <= set(widget.history[-1])
    stored = json.loads((tmp_path / "atlas" / "atlas_history.json").read_text())
    assert stored[-1]["loss_segmentation_cross_entropy"] > 0
    assert shown == ["atlas: image", "atlas: labels"]  # created once, then updated in place
    written = read_volume(tmp_path / "atlas" / "atlas_labels.nii.gz")
    layer = viewer.layers["atlas: labels"]
    assert np.array_equal(layer.data, written.array.T if layer.data.shape != written.shape else written.array)
    image_layer = viewer.layers["atlas: image"]
    assert np.allclose(image_layer.affine.affine_matrix, layer.affine.affine_matrix)
    assert "written to" in widget.log.value


def test_finish_now_writes_the_atlas_built_so_far(make_napari_viewer, qtbot, tmp_path, errors):
    viewer = make_napari_viewer()
    widget = open_widget(viewer, write_tiny_shared_data(tmp_path / "data"), tmp_path / "atlas", epochs=500)
    widget.start()
    qtbot.waitUntil(lambda: len(widget.history) >= 2, timeout=120_000)
    assert widget.finish_button.enabled
    widget.finish_now()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert not errors
    history = json.loads((tmp_path / "atlas" / "atlas_history.json").read_text())
    assert history[-1].get("finished_early") and history[-1]["epoch"] < 500


def test_a_folder_without_the_data_layout_is_an_error_that_changes_nothing(make_napari_viewer, tmp_path, errors):
    viewer = make_napari_viewer()
    widget = open_widget(viewer, tmp_path, tmp_path / "atlas")
    assert widget.start() is None and "not a data folder" in errors[0]
    assert len(viewer.layers) == 0 and not (tmp_path / "atlas").exists()
