"""The demo pairs built from the MNI template: deterministic, distinct subjects, designed geometry."""
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT
from warpseg import samples
from warpseg.io import read_volume
from warpseg.spatial import resample_volume

DESIGN = {  # (shape, spacing mm) of moving and fixed
    2: {"moving": ((104, 124), 1.5), "fixed": ((160, 192), 1.0)},
    3: {"moving": ((80, 96, 84), 2.0), "fixed": ((104, 126, 112), 1.5)},
}


@pytest.fixture(scope="session")
def pair_2d(sample_cache):
    return samples.sample_pair(2)


@pytest.fixture(scope="session")
def pair_3d(sample_cache):
    return samples.sample_pair(3)


def assert_same_pair(first, second):
    for key in samples.SAMPLE_KEYS:
        assert first[key].array.dtype == second[key].array.dtype, key
        assert np.array_equal(first[key].array, second[key].array), key
        assert np.array_equal(first[key].affine, second[key].affine), key


def test_the_2d_pair_is_bitwise_deterministic_and_the_cache_returns_it_exactly(pair_2d):
    assert_same_pair(samples.build_sample_pair(2), samples.build_sample_pair(2))
    assert_same_pair(samples.sample_pair(2), pair_2d)  # the second call reads the cached files
    assert_same_pair(samples.build_sample_pair(2), pair_2d)


@pytest.mark.slow
def test_the_3d_pair_is_bitwise_deterministic(pair_3d):
    assert_same_pair(samples.build_sample_pair(3), pair_3d)


def test_another_seed_gives_other_subjects(pair_2d):
    other = samples.build_sample_pair(2, seed=1)
    assert not np.array_equal(other["moving"].array, pair_2d["moving"].array)
    assert np.array_equal(other["moving"].affine, pair_2d["moving"].affine)


@pytest.mark.parametrize("ndim", [2, 3])
def test_shapes_spacings_labels_and_names_are_as_designed(pair_2d, pair_3d, ndim):
    pair = pair_2d if ndim == 2 else pair_3d
    for role in ("moving", "fixed"):
        shape, spacing = DESIGN[ndim][role]
        image, labels = pair[role], pair[f"{role}_labels"]
        assert image.shape == labels.shape == shape and np.array_equal(image.affine, labels.affine)
        assert np.allclose(image.spacing, spacing, atol=1e-5)
        assert not image.is_labels and image.array.dtype == np.float32
        assert np.isfinite(image.array).all() and 0 <= image.array.min() and 0.9 < image.array.max() < 2
        assert labels.is_labels and labels.array.dtype == np.uint8
        assert set(np.unique(labels.array)) == {0, 1, 2, 3}
        assert labels.label_names == {0: "background", 1: "CSF", 2: "grey matter", 3: "white matter"}
        brain = labels.array > 0
        assert 0.2 < brain.mean() < 0.8 and not brain[(0, -1), ...].any()  # the head is inside the grid


def test_the_2d_pair_shares_one_axial_plane(pair_2d):
    for key in ("moving", "fixed"):
        affine = pair_2d[key].affine
        assert np.allclose(affine[:3, 2], [0, 0, pair_2d[key].spacing[0]]) and affine[2, 3] == 12.0
        assert np.allclose(affine[2, :2], 0.0)


def test_the_3d_fixed_grid_is_oblique_and_the_moving_grid_is_not(pair_3d):
    fixed, moving = pair_3d["fixed"].affine[:3, :3] / 1.5, pair_3d["moving"].affine[:3, :3] / 2.0
    assert np.allclose(moving, np.eye(3))
    off_diagonal = np.abs(fixed - np.diag(np.diag(fixed)))
    assert 0.03 < off_diagonal.max() < 0.15  # a few degrees
    assert np.allclose(fixed.T @ fixed, np.eye(3), atol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_the_subjects_differ_by_a_few_millimetres(pair_2d, pair_3d, ndim):
    pair = pair_2d if ndim == 2 else pair_3d
    moved = resample_volume(pair["moving_labels"], pair["fixed_labels"])
    fixed = pair["fixed_labels"].array
    brain = (moved.array > 0) | (fixed > 0)
    agreement = np.mean(moved.array[brain] == fixed[brain])
    assert 0.5 < agreement < 0.95
    assert abs(np.mean(moved.array > 0) - np.mean(fixed > 0)) < 0.05
    intensity = [np.median(pair[key].array[pair[f"{key}_labels"].array == 3]) for key in ("moving", "fixed")]
    assert abs(intensity[0] - intensity[1]) > 1e-3


def test_write_sample_pair_writes_nifti_files_that_read_back(tmp_path, pair_2d):
    paths = samples.write_sample_pair(2, tmp_path / "pair2d")
    assert sorted(p.name for p in paths.values()) == sorted(f"{k}.nii.gz" for k in samples.SAMPLE_KEYS)
    back = read_volume(paths["fixed_labels"])
    assert back.is_labels and np.array_equal(back.array, pair_2d["fixed_labels"].array)
    assert np.array_equal(read_volume(paths["moving"]).array, pair_2d["moving"].array)


def test_the_cache_lives_under_warpseg_cache_without_leftovers(sample_cache, pair_2d):
    folder = samples.sample_cache_dir()
    assert folder == sample_cache / "samples"
    built = [p for p in (folder / f"v{samples.RECIPE_VERSION}").iterdir()]
    assert {p.name for p in built} >= {"pair2d-seed0"} and not [p for p in built if p.name.startswith(".")]


def test_make_sample_data_script_writes_both_pairs(tmp_path, sample_cache, pair_2d, pair_3d):
    script = REPO_ROOT / "sample_data" / "make_sample_data.py"
    completed = subprocess.run([sys.executable, str(script), str(tmp_path / "out")], capture_output=True,
                               encoding="utf-8", errors="replace", timeout=300)
    assert completed.returncode == 0, completed.stderr
    for ndim in (2, 3):
        written = sorted(p.name for p in (tmp_path / "out" / f"pair{ndim}d").iterdir())
        label_names = [f"{k}.labels.json" for k in samples.SAMPLE_KEYS if k.endswith("labels")]
        assert written == sorted([f"{k}.nii.gz" for k in samples.SAMPLE_KEYS] + label_names)
