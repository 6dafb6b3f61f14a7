"""The compare dock widget: several methods, one table, layers toggled per method, CSV and PNG export."""
from __future__ import annotations

import csv

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def test_comparing_methods_fills_the_table_and_toggles_their_layers(make_napari_viewer, qtbot, sample_cache,
                                                                   tmp_path, monkeypatch):
    import napari.utils.notifications

    from warpseg._plugin._widget_compare import CompareWidget

    errors = []
    monkeypatch.setattr(napari.utils.notifications, "show_error", errors.append)
    viewer = make_napari_viewer()
    viewer.open_sample("napari-warpseg", "brain_pair_2d")
    widget = CompareWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.methods.value = ["identity", "sitk-demons"]
    widget.start()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert not errors, errors
    rows = widget.table.data.to_list()
    assert [row[0] for row in rows] == ["identity", "sitk-demons"]
    assert rows[1][2] > rows[0][2] + 0.03  # demons beats identity on Dice
    assert rows[0][1] == pytest.approx(rows[0][2], abs=1e-3)  # identity changes nothing
    widget.shown.value = "identity"
    assert viewer.layers["identity: warped"].visible and not viewer.layers["sitk-demons: warped"].visible
    widget.shown.value = "sitk-demons"
    assert viewer.layers["sitk-demons: grid"].visible and not viewer.layers["identity: grid"].visible
    widget.csv_file.value = tmp_path / "table.csv"
    widget.png_file.value = tmp_path / "view.png"
    assert widget.export_table() and widget.save_view()
    with open(tmp_path / "table.csv") as handle:
        table = list(csv.reader(handle))
    assert table[0][0] == "method" and [row[0] for row in table[1:]] == ["identity", "sitk-demons"]
    from PIL import Image

    assert np.asarray(Image.open(tmp_path / "view.png")).std() > 5


def test_comparing_nothing_is_a_clear_error(make_napari_viewer, monkeypatch):
    import napari.utils.notifications

    from warpseg._plugin._widget_compare import CompareWidget

    errors = []
    monkeypatch.setattr(napari.utils.notifications, "show_error", errors.append)
    viewer = make_napari_viewer()
    viewer.open_sample("napari-warpseg", "brain_pair_2d")
    widget = CompareWidget(viewer)
    widget.methods.value = []
    assert widget.start() is None and "at least one method" in errors[0]
