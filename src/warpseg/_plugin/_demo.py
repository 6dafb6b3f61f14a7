"""The main job in a napari window: the sample pair, the Register widget docked, a run, screenshots.

The demo's method, NICE-Transeg with its shipped weights, registers and segments both images in
one pass, so the screenshots include its segmentation of the fixed image.

Exactly what a user gets from Plugins ▸ napari-warpseg ▸ Register, driven by code: the widget runs
the method in its worker thread while this loop keeps the event loop turning, then each result
view is shown in turn and the whole window is saved as a PNG.
"""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from warpseg.errors import WarpsegError

if TYPE_CHECKING:
    from warpseg.engine import RegistrationResult
    from warpseg.io import Volume

WINDOW_SIZE = (1500, 950)
# view name -> (layers shown besides the fixed image, 3D display)
VIEWS = {
    "overlay": (["warped", "grid"], False),
    "labels": (["warped labels"], False),
    "jacobian": (["Jacobian determinant", "folds"], False),
    "checkerboard": (["checkerboard"], False),
    "difference": (["difference"], False),
    "glyphs": (["displacement (mm)", "glyphs"], False),
    "lattice": (["warped", "lattice"], True),
    "segmentation": (["fixed segmentation"], False),  # joint methods (the demo's NICE-Transeg)
}


def register_in_viewer(pair: dict[str, Volume], method: str, screenshots: Path | None,
                       stay_open: bool = False) -> RegistrationResult:
    """Register ``pair`` through the docked widget; save one screenshot per view into ``screenshots``."""
    import napari
    from qtpy.QtWidgets import QApplication

    from warpseg._plugin._layers import volume_to_layer_data
    from warpseg._plugin._sample_data import IMAGE_STYLE, LAYER_NAMES
    from warpseg._plugin._widget_register import RegistrationWidget

    warnings.filterwarnings("ignore", message="Non-orthogonal slicing")  # the oblique sample; see _layers
    viewer = napari.Viewer(show=True, title=f"napari-warpseg: {method}")  # a hidden canvas renders nothing
    try:
        for key, name in LAYER_NAMES.items():
            data, attributes, layer_type = volume_to_layer_data(pair[key], name, **IMAGE_STYLE.get(key, {}))
            getattr(viewer, f"add_{layer_type}")(data, **attributes)
        widget = RegistrationWidget(viewer)
        viewer.window.add_dock_widget(widget, name="Register", area="right")
        viewer.window.resize(*WINDOW_SIZE)
        widget.method.value, widget.method_options.value = method, ""  # defaults, not saved settings
        widget.start()
        application, shown = QApplication.instance(), ""
        while widget.busy:
            application.processEvents()
            time.sleep(0.01)
            if widget.log.value != shown:
                shown = widget.log.value
                print(f"[{method}] {shown}", file=sys.stderr)
        if widget.result is None:
            raise WarpsegError(f"{method} did not finish: {widget.log.value}")
        settle = time.monotonic() + 0.3  # let the dock lay out its new lines before any screenshot
        while time.monotonic() < settle:
            application.processEvents()
            time.sleep(0.01)
        if screenshots is not None:
            save_view_screenshots(viewer, method, screenshots)
        if stay_open:
            show_view(viewer, method, "overlay")
            napari.run()
        return widget.result
    finally:
        if not stay_open:
            viewer.close()


def save_view_screenshots(viewer, method: str, folder: Path) -> list[Path]:
    """One full-window PNG per result view (those the result has), named after the view."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for view in VIEWS:
        if not show_view(viewer, method, view):
            continue
        path = folder / f"{view}.png"
        viewer.screenshot(str(path), canvas_only=False)
        paths.append(path)
    show_view(viewer, method, "overlay")
    return paths


def show_view(viewer, method: str, view: str) -> bool:
    """Show the fixed image and ``view``'s layers of ``method``, hide the rest; False if it has none."""
    from warpseg._plugin._result_views import layer_name

    names, three_d = VIEWS[view]
    wanted = {layer_name(method, name) for name in names}
    if not wanted <= {layer.name for layer in viewer.layers} or (three_d and viewer.dims.ndim < 3):
        return False
    for layer in viewer.layers:
        layer.visible = layer.name in wanted or layer.name == "fixed"
    viewer.layers["fixed"].colormap = "gray" if view in ("labels", "jacobian", "glyphs", "segmentation") else "green"
    viewer.dims.ndisplay = 3 if three_d else 2
    if three_d:
        viewer.camera.angles = (0.0, 30.0, 120.0)
        viewer.layers["fixed"].visible = False
    viewer.reset_view()
    viewer.layers.selection.active = viewer.layers[layer_name(method, names[-1])]
    return True
