"""`warpseg train`: a short real run writes a self-describing, resumable checkpoint that registers."""
import json

import pytest

from warpseg.cli import main
from warpseg.learning.checkpoint import read_checkpoint


@pytest.mark.slow
def test_train_resume_and_register_with_the_checkpoint(tmp_path, shared_data):
    weights = tmp_path / "vxm_2d.pt"
    common = ["train", "vxm", "--ndim", "2", "--data", str(shared_data), "--label-maps", "1",
              "--validate-every", "2", "--device", "cpu", "--out", str(weights)]
    assert main([*common, "--steps", "2"]) == 0
    first = read_checkpoint(weights)
    assert first["method"] == "vxm" and first["model"]["class"] == "VoxelMorph"
    assert first["training"]["data"]["validation_subjects"] == ["vxm"]
    assert "vxm" not in first["training"]["data"]["training_subjects"]
    assert first["preprocessing"]["target_spacing"] == 1.0
    assert 0 < first["training"]["validation"]["dice"] <= 1

    assert main([*common, "--steps", "4", "--resume"]) == 0
    resumed = read_checkpoint(weights)
    assert [entry["step"] for entry in resumed["training"]["history"]] == [2, 4]

    out = tmp_path / "out"
    slices = shared_data / "oasis2d"
    assert main(["register", str(slices / "subjX_slice_norm.nii.gz"), str(slices / "vxm_slice_norm.nii.gz"),
                 "--method", "vxm", "--weights", str(weights), "--moving-labels",
                 str(slices / "subjX_slice_seg4.nii.gz"), "--fixed-labels", str(slices / "vxm_slice_seg4.nii.gz"),
                 "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "result.json").read_text())
    assert summary["weights"] == str(weights) and summary["method"] == "vxm"
