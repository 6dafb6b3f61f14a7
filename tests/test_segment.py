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



def tissue_maps(shape=(24, 28, 20), seed=0):
    """A CSF / grey / white matter reference and the same map in seg4 (its grey matter split in two)."""
    rng = np.random.default_rng(seed)
    tissue = rng.integers(0, 4, shape).astype(np.uint8)
    seg4 = np.array([0, 4, 1, 3], np.uint8)[tissue]
    seg4[(tissue == 2) & (np.arange(shape[0]) < shape[0] // 2)[:, None, None]] = 2
    return tissue, seg4


def test_seg4_against_a_tissue_reference_is_scored_by_tissue_class():
    """seg4 (1 Cortex, 2 Subcortical GM, 3 WM, 4 CSF) against CSF / grey / white matter: the IDs mean
    other structures, but merged by name the two maps are the same here."""
    from warpseg.metrics import dice_headline, segmentation_metrics
    from warpseg.samples import LABEL_NAMES
    from warpseg.tissue_classes import tissue_lookup

    tissue, seg4 = tissue_maps()
    seg4_names = {0: "Background", 1: "Cortex", 2: "Subcortical-Gray-Matter", 3: "White-Matter", 4: "CSF"}
    metrics = segmentation_metrics(seg4, seg4_names, tissue, LABEL_NAMES, (1.0, 1.0, 1.0))
    assert metrics["dice_mean"] < 0.7 and set(metrics["label_names_differ"]) == {1, 2}
    assert metrics["tissue_classes"]["dice_mean"] == pytest.approx(1.0)
    assert dice_headline(metrics) == "Dice 1.000 as CSF / grey matter / white matter"
    damaged = np.where(seg4 == 3, 4, seg4).astype(np.uint8)  # white matter called CSF
    scores = segmentation_metrics(damaged, seg4_names, tissue, LABEL_NAMES, (1.0, 1.0, 1.0))["tissue_classes"]
    assert scores["dice_per_label"]["3"] == 0.0 and scores["dice_per_label"]["2"] == pytest.approx(1.0)
    assert tissue_lookup({0: "background", 1: "Left-Hippocampus"}) is None  # not a tissue class: no merge
    assert "tissue_classes" not in segmentation_metrics(seg4, {1: "a", 2: "b", 3: "c", 4: "d"}, tissue,
                                                        LABEL_NAMES, (1.0, 1.0, 1.0))


def test_cli_reports_the_tissue_class_dice_without_a_warning(tmp_path, capsys):
    from warpseg.samples import LABEL_NAMES

    tissue, seg4 = tissue_maps()
    image = Volume(seg4.astype(np.float32) + 0.1, np.eye(4))
    seg4_names = {0: "Background", 1: "Cortex", 2: "Subcortical-Gray-Matter", 3: "White-Matter", 4: "CSF"}
    paths = {name: write_volume(volume, tmp_path / f"{name}.nii.gz") for name, volume in (
        ("image", image), ("atlas_seg", Volume(seg4, np.eye(4), is_labels=True, label_names=seg4_names)),
        ("ref_seg", Volume(tissue, np.eye(4), is_labels=True, label_names=LABEL_NAMES)))}
    assert main(["segment", str(paths["image"]), "--atlas", str(paths["image"]), "--atlas-labels",
                 str(paths["atlas_seg"]), "--labels", str(paths["ref_seg"]), "--option", "registration=identity",
                 "--out", str(tmp_path / "out"), "--quiet"]) == 0
    printed = capsys.readouterr()
    assert "Dice 1.000 as CSF / grey matter / white matter" in printed.out and "warning" not in printed.err
    summary = json.loads((tmp_path / "out" / "result.json").read_text())
    assert summary["tissue_classes"]["names"] == {"1": "CSF", "2": "grey matter", "3": "white matter"}


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
