"""Landmarks in the register contract: CSV reading, clear errors, and the target registration error."""
import json

import numpy as np
import pytest

from conftest import blob_pair, oblique_affine
from warpseg.cli import main
from warpseg.engine import register, run_to_end
from warpseg.errors import GeometryError, InputError
from warpseg.io import Landmarks, Volume, read_landmarks, write_volume
from warpseg.io.landmarks import read_landmark_csv
from warpseg.methods import METHODS, MethodOutput, Progress, RegistrationMethod

CORONAL_2D = np.array([[-1.0, 0, 0, 80], [0, 0, 1, -0.5], [0, -1, 0, 96], [0, 0, 0, 1]])  # LIA, like the dev slices
SHIFT_MM = np.array([3.0, 0.0, -2.0])  # in the coronal plane


def write_csv(path, rows, header="x,y,z"):
    lines = ([header] if header else []) + [",".join(f"{v:.6f}" for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def shifted_pair(shape, affine, shift_mm, array=None):
    """An image (blobs unless ``array`` is given) and the same array placed ``shift_mm`` further in world:
    the moving content is the fixed content moved by ``shift_mm``, so fixed point ``p`` matches moving
    point ``p + shift_mm``."""
    fixed = blob_pair(shape, affine, 4)[0] if array is None else Volume(array, affine)
    moving_affine = affine.copy()
    moving_affine[:3, 3] += shift_mm
    return Volume(fixed.array, moving_affine), fixed


def landmarks_on(fixed: Volume, shift_mm, count=6, seed=0) -> Landmarks:
    voxels = np.random.default_rng(seed).uniform(0.25, 0.75, (count, fixed.ndim)) * (np.array(fixed.shape) - 1)
    points = fixed.voxel_to_world(voxels)
    return Landmarks(moving=points + shift_mm, fixed=points)


class KnownTranslation(RegistrationMethod):
    """A test method: the constant displacement (in fixed voxels) of a known world shift."""

    name = "test-known-translation"
    description = "test only"
    shift_voxels = None

    def run(self, pair):
        yield Progress("register", 1, 1, "known translation")
        field = np.broadcast_to(np.reshape(self.shift_voxels, (-1,) + (1,) * pair.ndim), (pair.ndim, *pair.fixed.shape))
        return MethodOutput(np.array(field, dtype=np.float32))


def test_landmark_csv_with_header_blank_lines_and_spaces(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text("x, y, z\n1, 2, 3\n\n 4.5 ,-5,6e0\n")
    assert np.allclose(read_landmark_csv(path), [[1, 2, 3], [4.5, -5, 6]])


@pytest.mark.parametrize("content,message", [
    ("1,2\n", "2 columns"), ("x,y,z\n1,2,3\n4,five,6\n", "not three numbers"), ("x,y,z\n", "no landmarks"),
    ("1,2,nan\n", "finite"),
])
def test_malformed_landmark_files_are_refused_clearly(tmp_path, content, message):
    path = tmp_path / "points.csv"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        read_landmark_csv(path)


def test_missing_files_and_unequal_counts_are_refused(tmp_path):
    with pytest.raises(InputError, match="no such landmark file"):
        read_landmark_csv(tmp_path / "absent.csv")
    moving = write_csv(tmp_path / "m.csv", [[0, 0, 0], [1, 1, 1]])
    fixed = write_csv(tmp_path / "f.csv", [[0, 0, 0]])
    with pytest.raises(InputError, match="2 moving landmarks but 1 fixed"):
        read_landmarks(moving, fixed)


def test_fixed_landmarks_outside_the_fixed_image_are_refused_before_registering():
    moving, fixed = shifted_pair((40, 44), CORONAL_2D, SHIFT_MM)
    inside = landmarks_on(fixed, SHIFT_MM)
    off_plane = Landmarks(moving=inside.moving, fixed=inside.fixed + [0.0, 5.0, 0.0])  # 5 slices off the plane
    beyond = Landmarks(moving=inside.moving, fixed=inside.fixed + [-60.0, 0.0, 0.0])
    for landmarks in (off_plane, beyond):
        with pytest.raises(GeometryError, match="fixed landmark 1 .* outside the fixed image"):
            run_to_end(register(moving, fixed, "identity", device="cpu", landmarks=landmarks))


def test_tre_of_a_known_translation_on_an_oblique_3d_grid(monkeypatch):
    affine = oblique_affine()
    moving, fixed = shifted_pair((30, 26, 14), affine, SHIFT_MM)
    landmarks = landmarks_on(fixed, SHIFT_MM)
    monkeypatch.setitem(METHODS, KnownTranslation.name, KnownTranslation)
    monkeypatch.setattr(KnownTranslation, "shift_voxels", np.linalg.solve(affine[:3, :3], SHIFT_MM))
    identity = run_to_end(register(moving, fixed, "identity", device="cpu", landmarks=landmarks)).metrics
    assert identity["tre_mm_before"] == pytest.approx(np.linalg.norm(SHIFT_MM))
    assert identity["tre_mm_after"] == pytest.approx(np.linalg.norm(SHIFT_MM), abs=1e-4)
    known = run_to_end(register(moving, fixed, KnownTranslation.name, device="cpu", landmarks=landmarks)).metrics
    assert known["tre_mm_after"] < 1e-4 and known["tre_mm_after_max"] < 1e-4
    assert known["landmarks"]["count"] == 6 and len(known["landmarks"]["tre_mm_after"]) == 6


def test_sitk_affine_recovers_a_translation_to_within_a_voxel_on_a_2d_slice():
    from scipy.ndimage import gaussian_filter

    texture = gaussian_filter(np.random.default_rng(0).random((48, 52)), 2.0).astype(np.float32)
    moving, fixed = shifted_pair((48, 52), CORONAL_2D, SHIFT_MM, texture)  # smooth blobs alone are ambiguous
    landmarks = landmarks_on(fixed, SHIFT_MM)
    result = run_to_end(register(moving, fixed, "sitk-affine", device="cpu", landmarks=landmarks,
                                 options={"iterations": 60, "samples": 5000}))
    assert result.metrics["tre_mm_before"] == pytest.approx(np.linalg.norm(SHIFT_MM))
    assert result.metrics["tre_mm_after_max"] <= 1.0  # 1 mm voxels


def test_register_cli_reports_tre_in_result_json(tmp_path):
    moving, fixed = shifted_pair((40, 44), CORONAL_2D, SHIFT_MM)
    landmarks = landmarks_on(fixed, SHIFT_MM)
    write_volume(moving, tmp_path / "moving.nii.gz")
    write_volume(fixed, tmp_path / "fixed.nii.gz")
    moving_csv = write_csv(tmp_path / "moving.csv", landmarks.moving)
    fixed_csv = write_csv(tmp_path / "fixed.csv", landmarks.fixed, header=None)
    common = ["register", str(tmp_path / "moving.nii.gz"), str(tmp_path / "fixed.nii.gz"), "--method", "identity",
              "--device", "cpu", "--quiet", "--out", str(tmp_path / "out")]
    assert main([*common, "--moving-landmarks", str(moving_csv)]) == 2
    assert main([*common, "--moving-landmarks", str(moving_csv), "--fixed-landmarks", str(fixed_csv)]) == 0
    summary = json.loads((tmp_path / "out" / "result.json").read_text())
    assert summary["tre_mm_before"] == pytest.approx(np.linalg.norm(SHIFT_MM), abs=1e-4)
    assert summary["tre_mm_after"] == pytest.approx(summary["tre_mm_before"], abs=1e-3)
    assert len(summary["landmarks"]["tre_mm_before"]) == len(landmarks)
