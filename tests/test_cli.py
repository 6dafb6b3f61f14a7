"""The `warpseg` command: the register contract end to end, and bad input handled cleanly."""
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from conftest import blob_pair, rotation_affine
from warpseg.cli import main, parse_options
from warpseg.io import write_volume


@pytest.fixture
def pair_files(tmp_path):
    affine = rotation_affine((1.2, 1.0, 1.4), 3.0, (-10, -12, -8))
    moving, moving_labels = blob_pair((24, 22, 20), affine, 1)
    fixed, fixed_labels = blob_pair((24, 22, 20), affine, 2)
    files = {}
    for name, volume in (("moving", moving), ("moving_seg", moving_labels), ("fixed", fixed),
                         ("fixed_seg", fixed_labels)):
        files[name] = tmp_path / f"{name}.nii.gz"
        write_volume(volume, files[name])
    return files


def test_register_identity_writes_the_contract_files(pair_files, tmp_path):
    out = tmp_path / "out"
    status = main(["register", str(pair_files["moving"]), str(pair_files["fixed"]), "--method", "identity",
                   "--moving-labels", str(pair_files["moving_seg"]), "--fixed-labels", str(pair_files["fixed_seg"]),
                   "--device", "cpu", "--out", str(out), "--quiet"])
    assert status == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["displacement.nii.gz", "jacobian.nii.gz", "result.json", "warped.nii.gz", "warped_labels.nii.gz"]
    summary = json.loads((out / "result.json").read_text())
    assert summary["method"] == "identity" and 0 < summary["dice_mean"] <= 1


def test_label_maps_that_name_their_ids_otherwise_are_flagged(pair_files, tmp_path, capsys):
    """Moving and fixed labels whose IDs mean different structures are still scored, but flagged in
    result.json and on stderr, the same way `segment --labels` flags its reference."""
    from warpseg.io import Volume, read_volume

    named = {}
    for key, names in (("moving_seg", {1: "CSF", 2: "White matter"}), ("fixed_seg", {1: "Cortex", 2: "white-matter"})):
        volume = read_volume(pair_files[key], labels=True)
        named[key] = write_volume(Volume(volume.array, volume.affine, is_labels=True, label_names=names),
                                  tmp_path / f"named_{key}.nii.gz")
    out = tmp_path / "out"
    assert main(["register", str(pair_files["moving"]), str(pair_files["fixed"]), "--method", "identity",
                 "--moving-labels", str(named["moving_seg"]), "--fixed-labels", str(named["fixed_seg"]),
                 "--out", str(out), "--quiet"]) == 0
    assert "1 'CSF' vs 'Cortex'" in capsys.readouterr().err
    summary = json.loads((out / "result.json").read_text())
    assert summary["label_names_differ"] == {"1": ["CSF", "Cortex"]} and 0 < summary["dice_mean"] <= 1


def bad_inputs(tmp_path, files):
    """(description, argv) pairs that must fail with a one-line error."""
    four_d = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.random.rand(8, 8, 8, 3).astype(np.float32), np.eye(4)), four_d)
    with_nan = tmp_path / "nan.nii.gz"
    data = np.random.rand(8, 8, 8).astype(np.float32)
    data[2, 2, 2] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), with_nan)
    constant = tmp_path / "constant.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), constant)
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.random.rand(16, 16, 1).astype(np.float32), np.eye(4)), flat)
    small_labels = tmp_path / "small_seg.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((5, 5, 5), np.uint8), np.eye(4)), small_labels)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    moving, fixed = str(files["moving"]), str(files["fixed"])
    return [
        ("missing file", [str(tmp_path / "nope.nii.gz"), fixed]),
        ("unsupported format", [str(text), fixed]),
        ("4D image", [str(four_d), fixed]),
        ("NaN voxels", [str(with_nan), fixed]),
        ("constant image", [str(constant), fixed]),
        ("2D vs 3D", [str(flat), fixed]),
        ("labels off-grid", [moving, fixed, "--moving-labels", str(small_labels)]),
        ("unknown method", [moving, fixed, "--method", "no-such-method"]),
        ("bad option", [moving, fixed, "--option", "iterations"]),
    ]


def test_bad_input_gives_one_line_and_writes_nothing(pair_files, tmp_path, capsys):
    for description, argv in bad_inputs(tmp_path, pair_files):
        out = tmp_path / f"out_{description.replace(' ', '_')}"
        method = [] if "--method" in argv else ["--method", "identity"]
        status = main(["register", *argv, *method, "--quiet", "--out", str(out)])
        error = capsys.readouterr().err.strip()
        assert status == 2, description
        assert error.startswith("warpseg: error:") and "\n" not in error, (description, error)
        assert "Traceback" not in error
        assert not out.exists(), description


def test_the_installed_command_reports_errors_without_traceback(tmp_path):
    command = [sys.executable, "-m", "warpseg.cli", "register", str(tmp_path / "a.nii.gz"),
               str(tmp_path / "b.nii.gz"), "--out", str(tmp_path / "out")]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2
    assert "no such file" in completed.stderr and "Traceback" not in completed.stderr


def test_options_are_parsed_to_numbers_and_flags():
    assert parse_options(["iterations=50", "rate=0.1", "mode=diffeo", "fast=true"]) == {
        "iterations": 50, "rate": 0.1, "mode": "diffeo", "fast": True}
