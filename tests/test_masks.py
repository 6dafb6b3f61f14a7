"""Masks restrict what a method sees; the outputs still warp the whole moving image."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import blob_pair
from warpseg.cli import main
from warpseg.engine import register, run_to_end
from warpseg.errors import WarpsegError
from warpseg.io import Volume, write_volume

SHAPE, AFFINE = (36, 40, 24), np.diag([1.2, 1.0, 1.5, 1.0])
FAST_DEMONS = {"iterations": [10, 10, 5], "affine_iterations": 10}


def pair():
    (moving, moving_labels), (fixed, fixed_labels) = blob_pair(SHAPE, AFFINE, 1), blob_pair(SHAPE, AFFINE, 2)
    return moving, moving_labels, fixed, fixed_labels


def corner_mask(image: Volume) -> Volume:
    mask = np.zeros(image.shape, np.uint8)
    mask[: SHAPE[0] // 3] = 1
    return image.with_array(mask, is_labels=True)


def test_a_mask_changes_what_the_method_registers_but_not_what_is_warped():
    moving, moving_labels, fixed, fixed_labels = pair()
    common = dict(moving_labels=moving_labels, fixed_labels=fixed_labels, options=FAST_DEMONS)
    whole = run_to_end(register(moving, fixed, "sitk-demons", **common))
    masked = run_to_end(register(moving, fixed, "sitk-demons", fixed_mask=corner_mask(fixed),
                                 moving_mask=corner_mask(moving), **common))
    assert not np.allclose(whole.displacement, masked.displacement, atol=0.05)
    outside = corner_mask(fixed).array == 0
    assert masked.warped.array[outside].max() > 0.3  # the whole moving image is warped, not the masked one


@pytest.mark.parametrize("problem, words", [("empty", "is empty"), ("off grid", "not on the fixed image's grid"),
                                            ("not integer", "not integer")])
def test_bad_masks_are_refused_clearly(tmp_path, capsys, problem, words):
    moving, _, fixed, _ = pair()
    mask = {"empty": fixed.with_array(np.zeros(SHAPE, np.uint8), is_labels=True),
            "off grid": Volume((np.arange(1000).reshape(10, 10, 10) % 2).astype(np.uint8), AFFINE, is_labels=True),
            "not integer": fixed.with_array(np.full(SHAPE, 0.5, np.float32), is_labels=True)}[problem]
    with pytest.raises(WarpsegError, match=words):
        run_to_end(register(moving, fixed, "identity", fixed_mask=mask))
    if problem == "not integer":
        return  # a file is read as a label map, so it is always whole numbers
    paths = [write_volume(volume, tmp_path / f"{name}.nii.gz") for name, volume in
             (("moving", moving), ("fixed", fixed), ("mask", mask))]
    assert main(["register", str(paths[0]), str(paths[1]), "--method", "identity", "--fixed-mask", str(paths[2]),
                 "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert words in capsys.readouterr().err and not (tmp_path / "out").exists()
