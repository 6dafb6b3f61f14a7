"""The main job: register the 3D sample pair, write every output and a screenshot of the result."""
from __future__ import annotations

import sys
from importlib.util import find_spec
from pathlib import Path

DEFAULT_DEMO_METHOD = "sitk-demons"


def run_demo(out: Path, *, method: str | None = None, ndim: int = 3, screenshot: bool = True) -> Path:
    """Build the sample pair, register it, write results (and a screenshot when napari is installed)."""
    from warpseg.cli import ProgressPrinter, format_summary
    from warpseg.engine import register, run_to_end, write_result
    from warpseg.io import write_volume
    from warpseg.samples import sample_pair

    method = method or DEFAULT_DEMO_METHOD
    out = Path(out)
    print(f"demo: building the {ndim}D sample pair (MNI152-derived, see sample_data/README.md)", file=sys.stderr)
    pair = sample_pair(ndim)
    job = register(pair["moving"], pair["fixed"], method, moving_labels=pair["moving_labels"],
                   fixed_labels=pair["fixed_labels"], device="auto")
    result = run_to_end(job, ProgressPrinter(method))
    write_result(result, out)
    inputs = out / "inputs"
    inputs.mkdir(exist_ok=True)
    for name, volume in pair.items():
        write_volume(volume, inputs / f"{name}.nii.gz")
    print(format_summary(result, out))
    if screenshot:
        if find_spec("napari") is None:
            print("demo: napari is not installed; no screenshot (pip install 'napari-warpseg[napari]')",
                  file=sys.stderr)
        else:
            from warpseg._plugin._screenshot import save_result_screenshot

            path = save_result_screenshot(pair, result, out / "screenshot.png")
            print(f"screenshot: {path}")
    return out
