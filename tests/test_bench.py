"""The benchmark: dev pairs across subjects, tables that replace only their own section."""
import pytest

from warpseg.bench.pairs import dev_pairs, held_out_slice_pairs
from warpseg.bench.report import summarise, update_benchmarks_file
from warpseg.bench.run import run_benchmark
from warpseg.errors import InputError

ROW = {"pair": "vxm->subjX", "device": "cpu", "dice_before": 0.5, "dice_mean": 0.7, "hd95_mean": 3.0, "asd_mean": 1.0,
       "folding_percent": 0.0, "seconds": 2.0}


def test_pairs_never_register_a_subject_to_itself(shared_data):
    pairs = dev_pairs(shared_data, 2)
    assert len(pairs) == 6
    assert all(p.moving.name.split("_")[0] != p.fixed.name.split("_")[0] for p in pairs)
    first_three = dev_pairs(shared_data, 3, max_pairs=3)
    assert sorted(p.name.split("->")[0] for p in first_three) == ["subjX", "subjY", "vxm"]


def test_held_out_slice_pairs_pair_the_same_slice_of_vxm_and_each_other_subject(tmp_path, shared_data):
    import nibabel as nib
    import numpy as np

    pairs = held_out_slice_pairs(shared_data, tmp_path)
    assert len(pairs) == 41 * 4 and len({p.name for p in pairs}) == len(pairs)
    assert all("vxm" in p.name.split("@")[0].split("->") for p in pairs)
    at_109 = [p for p in pairs if p.name.endswith("@z109")]
    assert [p.name for p in at_109] == ["vxm->subjX@z109", "subjX->vxm@z109", "vxm->subjY@z109", "subjY->vxm@z109"]
    moving, reference = nib.load(at_109[0].moving), nib.load(shared_data / "oasis2d/vxm_slice_norm.nii.gz")
    assert moving.shape == (160, 192, 1)
    np.testing.assert_array_equal(moving.get_fdata(), reference.get_fdata())
    stack = nib.load(shared_data / "oasis2d/vxm_stack_z090-130_norm.nii.gz")
    np.testing.assert_allclose(moving.affine[:3, 3], stack.affine[:3, 3] + 19 * stack.affine[:3, 2])
    labels = nib.load(at_109[0].fixed_labels)
    np.testing.assert_array_equal(labels.get_fdata(), nib.load(shared_data / "oasis2d/subjX_slice_seg4.nii.gz").get_fdata())


def test_held_out_slices_benchmark_is_2d_only(tmp_path, shared_data):
    with pytest.raises(InputError, match="--ndim 2"):
        run_benchmark(shared_data, methods=["identity"], ndims=[2, 3], output=tmp_path / "B.md", held_out_slices=True)
    tables = run_benchmark(shared_data, methods=["identity"], ndims=[2], max_pairs=4, output=tmp_path / "B.md",
                           held_out_slices=True)
    assert tables[2]["identity"]["pairs"] == 4
    text = (tmp_path / "B.md").read_text()
    assert "<!-- bench:held-out-slices-2d -->" in text and "## Registration, 2D held-out slice pairs" in text


def test_slice_pairs_count_as_held_out_whichever_side_the_held_out_subject_is_on():
    rows = [dict(ROW, pair=name, dice_mean=dice) for name, dice in
            (("subjX->vxm@z90", 0.6), ("vxm->subjX@z90", 0.8), ("subjX->subjY", 0.1))]
    assert summarise({"m": rows})["m"]["dice_held_out"][0] == pytest.approx(0.7)


def test_methods_the_issues_compare_get_per_pair_differences(tmp_path):
    from warpseg.bench.report import render_table

    rows = {"vxm": [dict(ROW, pair="a", dice_mean=0.70), dict(ROW, pair="b", dice_mean=0.80)],
            "pcreg-rt": [dict(ROW, pair="a", dice_mean=0.75), dict(ROW, pair="b", dice_mean=0.79)],
            "nice-transeg": [dict(ROW, pair="a", dice_mean=0.5)]}
    summary = summarise(rows)
    assert summary["pcreg-rt"]["paired"] == pytest.approx(("vxm", 0.02, 0.03, 1, 2))
    assert "paired" not in summary["vxm"] and "paired" not in summary["nice-transeg"]  # no nice-trans in this run
    assert "pcreg-rt − vxm: +0.020 ± 0.030, higher on 1 of 2 pairs" in render_table(2, [], summary, "test machine")


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="--data"):
        dev_pairs(tmp_path, 2)


def test_sections_are_replaced_in_place(tmp_path, shared_data):
    path = tmp_path / "BENCHMARKS.md"
    pairs = dev_pairs(shared_data, 2, max_pairs=1)
    update_benchmarks_file(path, "register-2d", 2, pairs, summarise({"identity": [ROW]}), "test machine")
    update_benchmarks_file(path, "register-3d", 3, pairs, summarise({"identity": [ROW]}), "test machine")
    faster = dict(ROW, seconds=1.0)
    update_benchmarks_file(path, "register-2d", 2, pairs, summarise({"identity": [faster]}), "test machine")
    text = path.read_text()
    assert text.count("<!-- bench:register-2d -->") == 1 and text.count("<!-- bench:register-3d -->") == 1
    assert "| identity | 0.500 ± 0.000 | 0.700 ± 0.000 | 0.700 ± 0.000 | 3.00 ± 0.00 | 1.00 ± 0.00 | 0.000 | 1.000 |" in text


def test_new_sections_go_before_the_hand_written_reading(tmp_path):
    from warpseg.bench.report import READING_HEADING, replace_section

    path = tmp_path / "BENCHMARKS.md"
    replace_section(path, "first", "table one\n")
    path.write_text(path.read_text() + f"\n{READING_HEADING} (by hand)\n\nnotes\n")
    replace_section(path, "second", "table two\n")
    replace_section(path, "first", "table one, again\n")
    text = path.read_text()
    assert text.index("table one, again") < text.index("table two") < text.index(READING_HEADING)
    assert text.rstrip().endswith("notes") and "table one\n" not in text


def test_identity_benchmark_on_one_real_2d_pair(tmp_path, shared_data):
    output = tmp_path / "BENCHMARKS.md"
    tables = run_benchmark(shared_data, methods=["identity"], ndims=[2], max_pairs=1, output=output)
    entry = tables[2]["identity"]
    assert 0.3 < entry["dice_before"][0] < 0.95
    assert entry["dice_mean"][0] == pytest.approx(entry["dice_before"][0])
    assert "| identity |" in output.read_text()
    run_benchmark(shared_data, methods=["identity"], ndims=[2], max_pairs=1, output=output, section="sweep")
    text = output.read_text()
    assert text.count("<!-- bench:register-2d -->") == 1 and text.count("<!-- bench:sweep-2d -->") == 1


def test_method_variants_carry_their_options():
    from warpseg.bench.run import default_methods, parse_method_list, parse_variant

    specs = parse_method_list("identity, nir[iterations=20,mode=displacement],vxm[refine=5]")
    assert specs == ["identity", "nir[iterations=20,mode=displacement]", "vxm[refine=5]"]
    assert parse_variant(specs[1]) == ("nir", {"iterations": 20, "mode": "displacement"})
    assert parse_variant("identity") == ("identity", {})
    assert "nice-trans[refine=100]" in default_methods(2) and "nir" in default_methods(2)
    with pytest.raises(Exception, match="NAME\\[KEY=VALUE"):
        parse_variant("nir[iterations=3")


def test_segmentation_benchmark_scores_held_out_targets_on_the_seg4_scale(tmp_path, shared_data):
    """Identity atlas propagation: the table's Dice is the atlas labels' Dice against the target's seg4
    truth (seg35 merged to seg4 first); the corrupted copy keeps the geometry and changes the image."""
    import numpy as np

    from warpseg.bench.segmentation import corrupted, load_atlas, load_targets, run_segmentation_benchmark
    from warpseg.learning.label_maps import to_seg4_lookup
    from warpseg.metrics import dice_per_label

    output = tmp_path / "BENCHMARKS.md"
    tables = run_segmentation_benchmark(shared_data, methods=["atlas-propagation[registration=identity]"],
                                        ndims=[2], corrupt=True, output=output)
    for label_set, atlas_name, target_name in (("seg4", "subjX", "vxm"), ("seg35", "vxm", "subjY")):
        _, atlas_labels = load_atlas(shared_data, atlas_name, 2, label_set)
        target = load_targets(shared_data, target_name, 2, corrupt=False)[0]
        merged = to_seg4_lookup(shared_data, label_set)[np.asarray(atlas_labels.array, dtype=np.int64)]
        expected = np.mean(list(dice_per_label(merged, np.asarray(target.seg4.array)).values()))
        rows = tables[(2, label_set)]["atlas-propagation[registration=identity]"]
        assert [row["target"] for row in rows] == [target_name, f"{target_name}+noise+bias"]
        assert rows[0]["dice_mean"] == pytest.approx(expected)
    text = output.read_text()
    assert "<!-- bench:segment-seg4-2d -->" in text and "<!-- bench:segment-seg35-2d -->" in text
    image = load_targets(shared_data, "vxm", 2, corrupt=False)[0].image
    copy = corrupted(image)
    assert copy.shape == image.shape and np.allclose(copy.affine, image.affine)
    assert 0.01 < np.abs(copy.array - image.array).mean() < 0.2


def test_segmentation_table_averages_corrupted_copies_and_compares_a_method_with_itself_copy_by_copy():
    import numpy as np

    from warpseg.bench.segmentation import render_segmentation_table
    from warpseg.io import Volume

    def row(target, seed, dice):
        return {"target": target, "seed": seed, "dice_mean": dice, "components": 1.0, "seconds": 2.0}

    atlas_dice, itn_dice = [0.70, 0.80, 0.60], [0.75, 0.70, 0.50]
    rows = {"m": [row("vxm", None, 0.9)] + [row("vxm+noise+bias", k, d) for k, d in enumerate(atlas_dice)],
            "m: itn": [row("vxm", None, 0.95)] + [row("vxm+noise+bias", k, d) for k, d in enumerate(itn_dice)]}
    labels = Volume(np.zeros((8, 8), np.uint8), np.eye(4), is_labels=True)
    table = render_segmentation_table(2, "seg4", "subjX", (labels, labels), rows, "test machine")
    assert "| m | 0.900 | 0.700 ± 0.082 |" in table and "| m: itn | 0.950 | 0.650 ± 0.108 |" in table
    assert "mean ± sd over 3 copies" in table
    assert "m − itn: +0.050 ± 0.071, at least as high on 2 of 3." in table
    single = {label: measured[:2] for label, measured in rows.items()}
    assert "± " not in render_segmentation_table(2, "seg4", "subjX", (labels, labels), single, "test machine")


def test_components_per_label_counts_separate_pieces():
    import numpy as np

    from warpseg.bench.segmentation import components_per_label

    labels = np.zeros((20, 20), dtype=np.uint8)
    labels[2:5, 2:5] = 1
    labels[10:12, 10:12] = 1
    labels[15:18, 2:5] = 2
    assert components_per_label(labels) == pytest.approx(1.5)


def test_the_grid_ceiling_falls_as_the_model_grid_coarsens():
    """Labels of one voxel survive no coarse grid; wide bands survive a 2x grid nearly whole."""
    import numpy as np

    from warpseg.bench.segmentation import ceiling_sentence, grid_ceiling
    from warpseg.io import Volume

    labels = np.zeros((48, 40), dtype=np.uint8)
    labels[8:40, 8:32] = 1
    labels[16:32, 16:24] = 2
    labels[::6, 4] = 3  # single voxels
    truth = Volume(labels, np.eye(4), is_labels=True)
    same, double, quadruple = (grid_ceiling(truth, spacing) for spacing in (1.0, 2.0, 4.0))
    assert same == pytest.approx(1.0) and 1.0 > double > quadruple
    assert "2 mm grid" in ceiling_sentence({2.0: double}) and ceiling_sentence({}) == ""


def test_atlas_evolution_section_and_figure_from_a_build_folder(tmp_path):
    import json

    import numpy as np

    from warpseg.bench.atlas import report_atlas_evolution
    from warpseg.io import Volume, write_volume

    build = tmp_path / "build"
    build.mkdir()
    history = [{"epoch": epoch, "gradient_magnitude": 0.03 - 0.001 * epoch, "label_entropy": 0.4 - 0.01 * epoch,
                "dice": 0.5 + 0.01 * epoch, "itn_dice": 0.6} for epoch in range(0, 11)]
    (build / "atlas_history.json").write_text(json.dumps(history))
    for epoch in (5, 10):
        labels = np.zeros((20, 24), dtype=np.uint8)
        labels[5:15, 6:18] = 1
        write_volume(Volume(np.random.default_rng(epoch).random((20, 24)).astype(np.float32), np.eye(4)),
                     build / f"atlas_image_epoch{epoch:03d}.nii.gz")
        write_volume(Volume(labels, np.eye(4), is_labels=True), build / f"atlas_labels_epoch{epoch:03d}.nii.gz")
    output = tmp_path / "BENCHMARKS.md"
    figure = report_atlas_evolution(build, output)
    text = output.read_text()
    assert figure == tmp_path / "docs" / "atlas_evolution.png" and figure.stat().st_size > 1000
    assert "| 10 | 0.0200 | 0.3000 | 0.600 | 0.600 |" in text and "](docs/atlas_evolution.png)" in text
    assert [line.split(" |")[0] for line in text.splitlines() if line.startswith("| ") and "|---" not in line][1:] == [
        "| 0", "| 1", "| 5", "| 10"]
    second = report_atlas_evolution(build, output, section="atlas-evolution-seg35")
    text = output.read_text()
    assert second == tmp_path / "docs" / "atlas_evolution_seg35.png" and "](docs/atlas_evolution_seg35.png)" in text
    assert text.count("## Atlas evolution") == 2 and "](docs/atlas_evolution.png)" in text  # the first stays
    with pytest.raises(InputError, match="atlas_history.json"):
        report_atlas_evolution(tmp_path, output)
