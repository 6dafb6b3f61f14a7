"""Regenerate the screenshots under docs/ (run under xvfb-run from the repository root):

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_screenshots.py [register|compare|segment|atlas]

The result views come from the main job (`warpseg demo`); the compare and segment views from
those widgets on the 2D sample pair; the atlas view from a short 2D atlas build on ../shared/data.
"""
from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path

DOCS = Path(__file__).resolve().parent


def result_views() -> None:
    from warpseg.demo import run_demo

    out = run_demo(DOCS / "_demo_run")
    for shot in sorted((out / "screenshots").glob("*.png")):
        shutil.copy(shot, DOCS / f"register_{shot.name}")
    shutil.rmtree(out)


def widget_view(widget_class, name: str, file_name: str, setup=None, shown=None) -> None:
    """Open the 2D sample pair, dock ``widget_class``, run it, and save the window as ``file_name``.

    ``setup(widget)`` sets its fields first; ``shown`` (layer names) limits the visible layers.
    """
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    viewer.open_sample("napari-warpseg", "brain_pair_2d")
    widget = widget_class(viewer)
    viewer.window.add_dock_widget(widget, name=name)
    viewer.window.resize(1500, 950)
    if setup is not None:
        setup(widget)
    widget.start()
    while widget.busy:
        QApplication.instance().processEvents()
        time.sleep(0.01)
    if shown is not None:
        for layer in viewer.layers:
            layer.visible = layer.name in shown
    viewer.layers["fixed"].colormap = "gray"
    viewer.reset_view()
    viewer.screenshot(str(DOCS / file_name), canvas_only=False)
    viewer.close()


def compare_view() -> None:
    from warpseg._plugin._widget_compare import CompareWidget

    def pick_methods(widget) -> None:
        widget.methods.value = ["identity", "sitk-bspline", "sitk-demons", "nice-trans", "vxm", "nir"]

    widget_view(CompareWidget, "Compare methods", "compare.png", setup=pick_methods)


def segment_view() -> None:
    from warpseg._plugin._widget_segment import SegmentationWidget

    widget_view(SegmentationWidget, "Segment", "segment.png", shown=("fixed", "atlas-propagation: segmentation"))


def atlas_view() -> None:
    import tempfile

    from warpseg._plugin._widget_atlas import AtlasWidget

    out = Path(tempfile.mkdtemp()) / "atlas"

    def short_build(widget) -> None:
        widget.epochs.value, widget.steps.value, widget.out.value = 3, 50, str(out)

    widget_view(AtlasWidget, "Build atlas", "atlas.png", setup=short_build, shown=("atlas: image", "atlas: labels"))
    shutil.rmtree(out.parent)


if __name__ == "__main__":
    import sys

    warnings.filterwarnings("ignore")
    views = {"register": result_views, "compare": compare_view, "segment": segment_view, "atlas": atlas_view}
    for name in sys.argv[1:] or views:
        views[name]()
