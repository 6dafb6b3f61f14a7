"""The weights shipped in the package: self-described, and better than identity on a held-out pair."""
import pytest

from warpseg.engine import register, run_to_end
from warpseg.io import read_volume
from warpseg.learning.checkpoint import read_checkpoint
from warpseg.methods import METHODS

SHIPPED = [(name, ndim) for name, method in METHODS.items() if method.needs_weights
           for ndim in (2, 3) if method.has_shipped_weights(ndim) and name != "nice-trans-affine"]


@pytest.mark.parametrize("method,ndim", SHIPPED)
def test_shipped_checkpoints_describe_their_training(method, ndim):
    checkpoint = read_checkpoint(METHODS[method]().weights_path(ndim))
    training = checkpoint["training"]
    assert checkpoint["method"] == method and checkpoint["model"]["config"]["ndim"] == ndim
    trained_by = "warpseg atlas build" if method == "atlas-istn" else f"warpseg train {method}"
    assert training["command"].startswith(trained_by)
    assert training["data"]["validation_subjects"] and training["validation"]["dice"] > 0
    assert not set(training["data"]["validation_subjects"]) & set(training["data"]["training_subjects"])


@pytest.mark.parametrize("method", [name for name, ndim in SHIPPED if ndim == 2])
def test_shipped_2d_weights_beat_identity_on_the_held_out_subject(method, shared_data):
    folder = shared_data / "oasis2d"
    result = run_to_end(register(
        read_volume(folder / "vxm_slice_norm.nii.gz", labels=False), read_volume(folder / "subjX_slice_norm.nii.gz", labels=False),
        method, moving_labels=read_volume(folder / "vxm_slice_seg4.nii.gz", labels=True),
        fixed_labels=read_volume(folder / "subjX_slice_seg4.nii.gz", labels=True), device="cpu"))
    assert result.metrics["dice_mean"] > result.metrics["dice_before"] + 0.03
    assert result.metrics["folding_percent"] < 0.5


@pytest.mark.parametrize("method", [name for name, ndim in SHIPPED if ndim == 3])
def test_shipped_3d_weights_beat_identity_on_the_held_out_subject(method, shared_data):
    folder = shared_data / "oasis3d"
    result = run_to_end(register(
        read_volume(folder / "vxm_aligned_norm.nii.gz", labels=False),
        read_volume(folder / "subjX_aligned_norm.nii.gz", labels=False), method,
        moving_labels=read_volume(folder / "vxm_aligned_seg4.nii.gz", labels=True),
        fixed_labels=read_volume(folder / "subjX_aligned_seg4.nii.gz", labels=True), device="cpu"))
    assert result.metrics["dice_mean"] > result.metrics["dice_before"] + 0.01
    assert result.metrics["folding_percent"] < 0.5
