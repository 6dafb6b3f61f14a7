"""Render a registration result in a napari viewer and save a screenshot (used by the demo)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from warpseg._plugin._layers import volume_to_layer_data

if TYPE_CHECKING:
    from warpseg.engine import RegistrationResult
    from warpseg.io import Volume

OVERLAY = {"blending": "additive"}


def result_tiles(pair: dict[str, Volume], result: RegistrationResult) -> list[tuple]:
    """Layer data tuples, two per grid tile: before, after, warped labels, Jacobian with folds."""
    fixed, method = pair["fixed"], result.method
    folds = result.jacobian.with_array((result.jacobian.array <= 0).astype(np.uint8), is_labels=True)
    labels = result.warped_labels
    if labels is None:
        labels = result.jacobian.with_array(np.zeros(fixed.shape, np.uint8), is_labels=True)
    return [
        volume_to_layer_data(fixed, "fixed (green)", colormap="green", **OVERLAY),
        volume_to_layer_data(pair["moving"], "moving before (magenta)", colormap="magenta", **OVERLAY),
        volume_to_layer_data(fixed, "fixed (green) ", colormap="green", **OVERLAY),
        volume_to_layer_data(result.warped, f"warped by {method} (magenta)", colormap="magenta", **OVERLAY),
        volume_to_layer_data(fixed, "fixed"),
        volume_to_layer_data(labels, "warped labels", opacity=0.45),
        volume_to_layer_data(result.jacobian, "Jacobian determinant", colormap="PiYG", contrast_limits=(0.0, 2.0)),
        volume_to_layer_data(folds, "folds (det J <= 0)", opacity=1.0),
    ]


def save_result_screenshot(pair: dict[str, Volume], result: RegistrationResult, path: str | Path) -> Path:
    """Show the result in a napari grid, two layers a tile, and write a PNG of the canvas."""
    import napari

    viewer = napari.Viewer(show=True, title="napari-warpseg demo")  # a hidden canvas renders nothing
    try:
        for data, attributes, layer_type in result_tiles(pair, result):
            getattr(viewer, f"add_{layer_type}")(data, **attributes)
        viewer.grid.enabled = True
        viewer.grid.stride = 2
        viewer.window.resize(1300, 1100)
        viewer.reset_view()
        viewer.screenshot(str(path), canvas_only=True)
    finally:
        viewer.close()
    return Path(path)
