"""The segment contract: atlas propagation, label names beside the label map, scores, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import blob_pair, rotation_affine
from warpseg.cli import main
from warpseg.engine import run_to_end, segment
from warpseg.io import Volume, read_volume, write_volume

NAMES = {1: "outer", 2: "middle", 3: "core"}


def labelled(shape, affine, seed):
    image, labels = blob_pair(shape, affine, seed)
    return image, Volume(labels.array, labels.affine, is_labels=True, label_names=dict(NAMES))


@pytest.fixture
def atlas_and_image():
    atlas = labelled((48, 52), rotation_affine((1.2, 1.2, 1.0), 8.0, (-30, -30, 0)), seed=1)
    image = labelled((56, 60), rotation_affine((1.0, 1.0, 1.0), -4.0, (-28, -30, 0)), seed=2)
    return atlas, image


def test_atlas_propagation_follows_the_registration(atlas_and_image):
    (atlas_image, atlas_labels), (image, reference) = atlas_and_image
    scores = {}
    for registration in ("identity", "sitk-demons"):
        job = segment(image, "atlas-propagation", atlas=(atlas_image, atlas_labels), reference=reference,
                      options={"registration": registration})
        result = run_to_end(job)
        assert result.segmentation.shape == image.shape and np.allclose(result.segmentation.affine, image.affine)
        assert result.segmentation.label_names == NAMES and result.details["registration"] == registration
        scores[registration] = result.metrics["dice_mean"]
    assert scores["sitk-demons"] > scores["identity"] + 0.05


def test_segment_cli_writes_the_label_map_its_names_and_scores(tmp_path, atlas_and_image):
    (atlas_image, atlas_labels), (image, reference) = atlas_and_image
    paths = {}
    for name, volume in (("atlas", atlas_image), ("atlas_seg", atlas_labels), ("image", image), ("ref_seg", reference)):
        paths[name] = write_volume(volume, tmp_path / f"{name}.nii.gz")
    out = tmp_path / "out"
    code = main(["segment", str(paths["image"]), "--atlas", str(paths["atlas"]), "--atlas-labels",
                 str(paths["atlas_seg"]), "--labels", str(paths["ref_seg"]), "--option", "registration=sitk-demons",
                 "--out", str(out), "--quiet"])
    assert code == 0
    written = read_volume(out / "segmentation.nii.gz")
    assert written.is_labels and written.label_names == NAMES and np.allclose(written.affine, image.affine)
    summary = json.loads((out / "result.json").read_text())
    assert summary["method"] == "atlas-propagation" and summary["label_names"] == {"1": "outer", "2": "middle",
                                                                                   "3": "core"}
    assert 0.5 < summary["dice_mean"] <= 1.0 and set(summary["dice_per_label"]) == {"1", "2", "3"}


def test_a_reference_that_names_its_labels_otherwise_is_flagged(tmp_path, atlas_and_image, capsys):
    """Scoring against labels whose IDs mean other structures (the sample pair's 1 = CSF vs seg4's
    1 = Cortex) is flagged in result.json and by the CLI; names differing only in case or spacing are not."""
    (atlas_image, atlas_labels), (image, reference) = atlas_and_image
    renamed = Volume(reference.array, reference.affine, is_labels=True,
                     label_names={1: "OUTER", 2: "the core", 3: "middle"})
    result = run_to_end(segment(image, "atlas-propagation", atlas=(atlas_image, atlas_labels), reference=renamed,
                                options={"registration": "identity"}))
    assert result.metrics["label_names_differ"] == {2: ["middle", "the core"], 3: ["core", "middle"]}
    paths = {name: write_volume(volume, tmp_path / f"{name}.nii.gz") for name, volume in
             (("atlas", atlas_image), ("atlas_seg", atlas_labels), ("image", image), ("ref_seg", renamed))}
    assert main(["segment", str(paths["image"]), "--atlas", str(paths["atlas"]), "--atlas-labels",
                 str(paths["atlas_seg"]), "--labels", str(paths["ref_seg"]), "--option", "registration=identity",
                 "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert "2 'middle' vs 'the core'" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "result.json").read_text())["label_names_differ"]["3"] == ["core", "middle"]
    same = run_to_end(segment(image, "atlas-propagation", atlas=(atlas_image, atlas_labels), reference=reference,
                              options={"registration": "identity"}))
    assert "label_names_differ" not in same.metrics


@pytest.mark.parametrize("problem", ["no atlas", "3D atlas", "unknown method"])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, atlas_and_image, problem):
    (atlas_image, atlas_labels), (image, _) = atlas_and_image
    atlas_3d, atlas_3d_labels = blob_pair((12, 12, 12), np.eye(4), 1)
    paths = {name: write_volume(volume, tmp_path / f"{name}.nii.gz") for name, volume in
             (("atlas", atlas_image), ("atlas_seg", atlas_labels), ("image", image), ("atlas3d", atlas_3d),
              ("atlas3d_seg", atlas_3d_labels))}
    arguments = {"no atlas": [str(paths["image"])],
                 "3D atlas": [str(paths["image"]), "--atlas", str(paths["atlas3d"]), "--atlas-labels",
                              str(paths["atlas3d_seg"])],
                 "unknown method": [str(paths["image"]), "--method", "nope"]}[problem]
    out = tmp_path / "out"
    assert main(["segment", *arguments, "--out", str(out), "--quiet"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("warpseg: error:")
    expected = {"no atlas": "needs an atlas", "3D atlas": "3D but the image is 2D", "unknown method": "unknown"}[problem]
    assert expected in error[0] and not out.exists()
