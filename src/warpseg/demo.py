"""The main job: register and segment the sample pair with a shipped model, write every output, and
show (or photograph) the result.

With napari installed the pair is registered through the Register dock widget in a real viewer
window (under Xvfb on a headless machine) and every result view is saved as a screenshot;
``stay_open`` keeps the window for the user. Without napari the same registration runs headless.
"""
from __future__ import annotations

import sys
from importlib.util import find_spec
from pathlib import Path

DEFAULT_DEMO_METHOD = "nice-transeg"
"""Shipped 2D and 3D weights (seg4): registers the pair and segments both images in one forward pass."""


def run_demo(out: Path, *, method: str | None = None, ndim: int = 3, screenshot: bool = True,
             stay_open: bool = False) -> Path:
    """Build the sample pair, register (and, with a joint method, segment) it, write results and (with
    napari) one screenshot per view."""
    from warpseg.cli import ProgressPrinter, format_summary
    from warpseg.engine import register, run_to_end, write_result
    from warpseg.io import write_volume
    from warpseg.samples import sample_pair

    method = method or DEFAULT_DEMO_METHOD
    out = Path(out)
    print(f"demo: building the {ndim}D sample pair (MNI152-derived, see sample_data/README.md)", file=sys.stderr)
    pair = sample_pair(ndim)
    in_viewer = (screenshot or stay_open) and find_spec("napari") is not None
    if in_viewer:
        from warpseg._plugin._demo import register_in_viewer

        result = register_in_viewer(pair, method, out / "screenshots" if screenshot else None, stay_open)
    else:
        if screenshot:
            print("demo: napari is not installed; no screenshots (pip install 'napari-warpseg[napari]')",
                  file=sys.stderr)
        job = register(pair["moving"], pair["fixed"], method, moving_labels=pair["moving_labels"],
                       fixed_labels=pair["fixed_labels"], device="auto")
        result = run_to_end(job, ProgressPrinter(method))
    write_result(result, out)
    inputs = out / "inputs"
    inputs.mkdir(exist_ok=True)
    for name, volume in pair.items():
        write_volume(volume, inputs / f"{name}.nii.gz")
    print(format_summary(result, out))
    if in_viewer and screenshot:
        print(f"screenshots: {out / 'screenshots'}")
    return out
