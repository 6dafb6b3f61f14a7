"""The main job runs the Register widget with the shipped NICE-Transeg in a napari window; writes results,
segmentations, inputs and screenshots."""
import json

import pytest

from warpseg.demo import run_demo


@pytest.mark.gui
@pytest.mark.slow
def test_demo_writes_results_and_a_screenshot_of_each_view(tmp_path):
    pytest.importorskip("napari")
    out = run_demo(tmp_path / "demo", ndim=2)  # the shipped NICE-Transeg: registers and segments
    summary = json.loads((out / "result.json").read_text())
    assert summary["method"] == "nice-transeg" and summary["dice_mean"] > summary["dice_before"]
    fixed_scores = summary["segmentations"]["fixed_segmentation"]
    assert fixed_scores["tissue_classes"]["dice_mean"] > 0.5  # seg4 against the sample's CSF / grey / white
    assert (out / "inputs" / "fixed.nii.gz").exists() and (out / "fixed_segmentation.nii.gz").exists()
    from PIL import Image
    import numpy as np

    shots = {path.stem: path for path in (out / "screenshots").glob("*.png")}
    assert set(shots) == {"overlay", "labels", "jacobian", "checkerboard", "difference", "glyphs",
                          "segmentation"}  # no 3D lattice in 2D
    pixels = [np.asarray(Image.open(shots[view]))[..., :3].astype(float) for view in ("overlay", "jacobian")]
    assert pixels[0].shape[0] > 200 and pixels[0].std() > 10  # something was drawn
    assert np.abs(pixels[0] - pixels[1]).mean() > 5  # and the views differ
