"""The main job writes the register contract's files, its inputs, and a screenshot."""
import json

import pytest

from warpseg.demo import run_demo


@pytest.mark.gui
@pytest.mark.slow
def test_demo_writes_results_and_a_screenshot(tmp_path):
    pytest.importorskip("napari")
    out = run_demo(tmp_path / "demo", method="sitk-affine", ndim=2)
    summary = json.loads((out / "result.json").read_text())
    assert summary["dice_mean"] > summary["dice_before"]
    assert (out / "inputs" / "fixed.nii.gz").exists()
    from PIL import Image
    import numpy as np

    pixels = np.asarray(Image.open(out / "screenshot.png"))
    assert pixels.shape[0] > 200 and pixels[..., :3].std() > 10  # something was drawn
