"""Registration from an initial transform (ITK convention, as ANTs, Slicer and SimpleITK write it)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import blob_pair
from warpseg.cli import main
from warpseg.engine import register, run_to_end
from warpseg.io import Volume, read_initial_transform, write_volume
from warpseg.io.sitk_bridge import sitk_to_array, volume_to_sitk
from warpseg.metrics import dice_per_label

AFFINE = np.array([[1.2, 0.0, 0.0, -20.0], [0.0, 1.0, 0.1, -25.0], [0.0, 0.0, 1.5, -15.0], [0, 0, 0, 1.0]])


def known_transform() -> sitk.AffineTransform:
    """A rotation of 8 degrees about z and a shift of a few mm, about the grid's middle (LPS)."""
    transform = sitk.AffineTransform(3)
    transform.SetCenter((2.0, 2.0, 5.0))
    angle = np.deg2rad(8.0)
    transform.SetMatrix((np.cos(angle), -np.sin(angle), 0.0, np.sin(angle), np.cos(angle), 0.0, 0.0, 0.0, 1.0))
    transform.SetTranslation((3.0, -2.0, 1.5))
    return transform


def pair_through(transform):
    """A moving blob image and the fixed image it becomes through ``transform`` (fixed -> moving points)."""
    moving, labels = blob_pair((34, 40, 22), AFFINE, 1)
    fixed, fixed_labels = (
        Volume(sitk_to_array(sitk.Resample(volume_to_sitk(volume), volume_to_sitk(volume), transform,
                                           sitk.sitkNearestNeighbor if volume.is_labels else sitk.sitkLinear, 0.0)
                             ).astype(volume.array.dtype), AFFINE, is_labels=volume.is_labels)
        for volume in (moving, labels))
    return moving, labels, fixed, fixed_labels


def test_the_initial_transform_is_where_registration_starts_and_is_part_of_the_field(tmp_path):
    transform = known_transform()
    moving, labels, fixed, fixed_labels = pair_through(transform)
    plain = run_to_end(register(moving, fixed, "identity", moving_labels=labels, fixed_labels=fixed_labels))
    started = run_to_end(register(moving, fixed, "identity", moving_labels=labels, fixed_labels=fixed_labels,
                                  initial_transform=transform))
    assert plain.metrics["dice_mean"] < 0.85 and started.metrics["dice_before"] == plain.metrics["dice_mean"]
    assert started.metrics["dice_mean"] > 0.97 and started.metrics["ncc_after"] > 0.99
    # the exported field is the whole map: SimpleITK applies it and finds the fixed labels
    from warpseg.engine import write_result

    write_result(started, tmp_path / "out")
    field = sitk.DisplacementFieldTransform(sitk.ReadImage(str(tmp_path / "out" / "displacement.nii.gz"),
                                                           sitk.sitkVectorFloat64))
    reference = volume_to_sitk(fixed_labels)
    applied = sitk_to_array(sitk.Resample(volume_to_sitk(labels), reference, field, sitk.sitkNearestNeighbor, 0))
    assert np.mean(list(dice_per_label(applied, fixed_labels.array).values())) > 0.97


def test_a_method_that_moves_gets_its_field_composed_with_the_start(tmp_path):
    """Demons' own field after the initial transform: the written field, applied by SimpleITK,
    warps the moving labels as warpseg did."""
    from warpseg.engine import write_result

    moving, labels, fixed, fixed_labels = pair_through(known_transform())
    result = run_to_end(register(moving, fixed, "sitk-demons", moving_labels=labels, fixed_labels=fixed_labels,
                                 initial_transform=known_transform(), options={"iterations": [5, 5, 5]}))
    write_result(result, tmp_path / "out")
    field = sitk.DisplacementFieldTransform(sitk.ReadImage(str(tmp_path / "out" / "displacement.nii.gz"),
                                                           sitk.sitkVectorFloat64))
    applied = sitk_to_array(sitk.Resample(volume_to_sitk(labels), volume_to_sitk(fixed_labels), field,
                                          sitk.sitkNearestNeighbor, 0))
    assert (applied == result.warped_labels.array).mean() > 0.99


def test_cli_reads_an_itk_transform_file_and_refuses_bad_ones(tmp_path, capsys):
    transform = known_transform()
    moving, labels, fixed, fixed_labels = pair_through(transform)
    paths = {name: write_volume(volume, tmp_path / f"{name}.nii.gz") for name, volume in
             (("moving", moving), ("fixed", fixed), ("moving_seg", labels), ("fixed_seg", fixed_labels))}
    sitk.WriteTransform(transform, str(tmp_path / "initial.tfm"))
    assert read_initial_transform(tmp_path / "initial.tfm").GetDimension() == 3
    common = [str(paths["moving"]), str(paths["fixed"]), "--method", "identity", "--moving-labels",
              str(paths["moving_seg"]), "--fixed-labels", str(paths["fixed_seg"]), "--quiet"]
    assert main(["register", *common, "--initial-transform", str(tmp_path / "initial.tfm"),
                 "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "result.json").read_text())
    assert summary["dice_mean"] > 0.97 and summary["details"]["initial_transform"].endswith("initial.tfm")
    (tmp_path / "notes.txt").write_text("hello")
    two_d = sitk.AffineTransform(2)
    sitk.WriteTransform(two_d, str(tmp_path / "flat.tfm"))
    field = sitk.DisplacementFieldTransform(3)
    sitk.WriteTransform(field, str(tmp_path / "field.h5"))
    capsys.readouterr()
    for bad, words in (("nope.tfm", "no such transform file"), ("notes.txt", "not an ITK transform file"),
                       ("flat.tfm", "2D transform"), ("field.h5", "no inverse")):
        assert main(["register", *common, "--initial-transform", str(tmp_path / bad),
                     "--out", str(tmp_path / f"out_{bad}")]) == 2
        assert words in capsys.readouterr().err
        assert not (tmp_path / f"out_{bad}").exists()


def test_a_2d_pair_with_an_initial_transform_is_refused():
    from warpseg.errors import InputError

    moving, _ = blob_pair((30, 34), np.eye(4), 1)
    fixed, _ = blob_pair((30, 34), np.eye(4), 2)
    with pytest.raises(InputError, match="needs 3D images"):
        run_to_end(register(moving, fixed, "identity", initial_transform=known_transform()))


def test_a_joint_methods_moving_segmentation_goes_back_through_the_inverse():
    """Predicted where registration starts (the moving image through the transform), the moving
    segmentation comes back onto the moving grid: there it matches the moving labels as before."""
    from warpseg.io.initial_transform import InitialAlignment

    transform = known_transform()
    moving, labels, fixed, _ = pair_through(transform)
    alignment = InitialAlignment(transform, moving, fixed)
    on_start = alignment.start(labels, fixed)
    back = alignment.back_to_moving(on_start)
    agreement = (back.array == labels.array)[labels.array > 0].mean()
    assert back.shape == moving.shape and agreement > 0.9
