"""Viewer responsiveness: the longest the napari event loop waits while the Register widget works."""
from __future__ import annotations

import datetime
import sys
import warnings
from pathlib import Path

from warpseg.bench.report import machine_description, replace_section

VIEWER_METHODS = ("sitk-demons", "sitk-bspline", "nice-trans")
TARGET_MS = 100


def run_viewer_benchmark(methods=None, output: Path = Path("BENCHMARKS.md")) -> list[tuple]:
    """Register the 3D sample pair with each method through the widget in a real viewer, probed."""
    import napari

    from warpseg._plugin._probe import probe_registration
    from warpseg._plugin._sample_data import brain_pair
    from warpseg._plugin._widget_register import RegistrationWidget
    from warpseg.methods import available_methods

    warnings.filterwarnings("ignore", message="Non-orthogonal slicing")
    rows = []
    for method in [m for m in (methods or VIEWER_METHODS) if m in available_methods(3)]:
        viewer = napari.Viewer(show=True)
        try:
            for data, attributes, layer_type in brain_pair(3):
                getattr(viewer, f"add_{layer_type}")(data, **attributes)
            widget = RegistrationWidget(viewer)
            viewer.window.add_dock_widget(widget, name="Register")
            widget.method.value, widget.method_options.value = method, ""  # defaults, not saved settings
            measured = probe_registration(widget)
            print(f"[bench viewer] {method}: {measured}", file=sys.stderr)
            rows.append((method, measured))
        finally:
            viewer.close()
    replace_section(Path(output), "viewer", render_viewer_table(rows))
    return rows


def render_viewer_table(rows) -> str:
    lines = [
        "## Viewer responsiveness while registering (3D sample pair)",
        "",
        f"Run {datetime.date.today().isoformat()} on {machine_description()}, napari under Xvfb (Mesa). "
        "A 5 ms Qt timer records the longest gap of the event loop while the Register widget's job runs in its "
        f"worker thread (target: at most {TARGET_MS} ms), and while the result layers are added afterwards (one "
        "layer per turn of the event loop; napari needs a few hundred ms to create a layer here). Run is pressed "
        "once the viewer is idle (no gap over 20 ms for 0.5 s): a window that has just opened spends its first "
        "second painting. 'Run click' is how long pressing Run itself holds the loop: checking the fields and, "
        "for methods that stream previews, creating the empty live layer that the previews then fill in place.",
        "",
        "| method | Run click (ms) | job (s) | longest gap while running (ms) | adding layers (s) | "
        "longest gap while adding (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for method, m in rows:
        lines.append(f"| {method} | {m.run_click_ms:.0f} | {m.seconds_running:.1f} | {m.longest_gap_running_ms:.0f} | "
                     f"{m.seconds_adding:.1f} | {m.longest_gap_adding_ms:.0f} |")
    return "\n".join(lines) + "\n"
