"""The register contract: outputs on the fixed grid, ITK-convention field, atomic writes."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import blob_pair, rotation_affine
from warpseg.engine import register, run_to_end, write_result
from warpseg.io import read_volume, write_volume
from warpseg.methods import METHODS, MethodOutput, Progress, RegistrationMethod


class SmoothWave(RegistrationMethod):
    """A test method: a fixed smooth displacement of up to 2 voxels, whatever the images."""

    name = "test-wave"
    description = "test only"

    def run(self, pair):
        shape = pair.fixed.shape
        axes = np.meshgrid(*[np.linspace(0, np.pi, s) for s in shape], indexing="ij")
        field = np.stack([2.0 * np.sin(axes[(d + 1) % len(shape)]) for d in range(len(shape))])
        yield Progress("register", 1, 1, "wave")
        return MethodOutput(field.astype(np.float32))


@pytest.fixture(autouse=True)
def wave_method(monkeypatch):
    monkeypatch.setitem(METHODS, SmoothWave.name, SmoothWave)


def write_pair(folder, ndim):
    if ndim == 3:
        moving, moving_labels = blob_pair((30, 26, 22), rotation_affine((2.0, 2.0, 2.5), 7.0, (-30, -25, -20)), 1)
        fixed, fixed_labels = blob_pair((40, 36, 30), rotation_affine((1.5, 1.5, 1.8), -4.0, (-28, -24, -22)), 2)
    else:  # single coronal-plane slices, like the dev data's LIA 2D header
        lia = np.array([[-1.0, 0, 0, 80], [0, 0, 1, -0.5], [0, -1, 0, 96], [0, 0, 0, 1]])
        moving, moving_labels = blob_pair((40, 44), lia, 1)
        fixed, fixed_labels = blob_pair((40, 44), lia, 2)
    paths = {}
    for name, volume in (("moving", moving), ("moving_labels", moving_labels), ("fixed", fixed),
                         ("fixed_labels", fixed_labels)):
        paths[name] = folder / f"{name}.nii.gz"
        write_volume(volume, paths[name])
    return paths


def run_contract(paths, out, method="test-wave"):
    job = register(read_volume(paths["moving"], labels=False), read_volume(paths["fixed"], labels=False), method,
                   moving_labels=read_volume(paths["moving_labels"], labels=True),
                   fixed_labels=read_volume(paths["fixed_labels"], labels=True), device="cpu")
    records = []
    result = run_to_end(job, records.append)
    write_result(result, out)
    return result, records


@pytest.mark.parametrize("ndim", [2, 3])
def test_outputs_lie_on_the_fixed_grid(tmp_path, ndim):
    paths = write_pair(tmp_path, ndim)
    result, records = run_contract(paths, tmp_path / "out")
    assert records and all(isinstance(r, Progress) for r in records)
    fixed = read_volume(paths["fixed"], labels=False)
    for name in ("warped.nii.gz", "warped_labels.nii.gz", "jacobian.nii.gz"):
        volume = read_volume(tmp_path / "out" / name, labels=name.startswith("warped_labels"))
        assert volume.shape == fixed.shape and np.allclose(volume.affine, fixed.affine, atol=1e-4), name
    summary = json.loads((tmp_path / "out" / "result.json").read_text())
    for key in ("method", "weights", "device", "seconds_registration", "seconds_total", "dice_mean",
                "dice_per_label", "hd95_mean", "folding_percent"):
        assert key in summary
    assert summary["method"] == "test-wave" and summary["device"] == "cpu"


@pytest.mark.parametrize("ndim", [2, 3])
def test_simpleitk_through_the_written_field_reproduces_warped_labels(tmp_path, ndim):
    paths = write_pair(tmp_path, ndim)
    run_contract(paths, tmp_path / "out")
    field_file = tmp_path / "out" / ("displacement.mha" if ndim == 2 else "displacement.nii.gz")
    transform = sitk.DisplacementFieldTransform(sitk.ReadImage(str(field_file), sitk.sitkVectorFloat64))
    reference = sitk.ReadImage(str(paths["fixed"]))
    moving_labels = sitk.ReadImage(str(paths["moving_labels"]))
    resampled = sitk.Resample(moving_labels, reference, transform, sitk.sitkNearestNeighbor, 0)
    ours = sitk.ReadImage(str(tmp_path / "out" / "warped_labels.nii.gz"))
    theirs, mine = sitk.GetArrayFromImage(resampled), sitk.GetArrayFromImage(ours)
    assert theirs.shape == mine.shape
    assert np.mean(theirs == mine) > 0.999  # ties at exact half-voxels may round differently
    assert np.mean(mine != sitk.GetArrayFromImage(sitk.Resample(moving_labels, reference,
                                                               sitk.Transform(), sitk.sitkNearestNeighbor))) > 0.01


def test_displacement_file_is_a_physical_vector_image(tmp_path):
    paths = write_pair(tmp_path, 3)
    result, _ = run_contract(paths, tmp_path / "out")
    image = sitk.ReadImage(str(tmp_path / "out" / "displacement.nii.gz"))
    assert image.GetNumberOfComponentsPerPixel() == 3
    vectors = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0, 3))
    expected = result.displacement_mm() * np.array([-1.0, -1.0, 1.0])  # RAS -> LPS
    assert np.allclose(vectors, expected, atol=1e-4)


def test_identity_method_gives_zero_field_and_dice_before(tmp_path):
    paths = write_pair(tmp_path, 3)
    result, _ = run_contract(paths, tmp_path / "out", method="identity")
    assert np.all(result.displacement == 0)
    assert result.metrics["dice_mean"] == pytest.approx(result.metrics["dice_before"])
    assert result.metrics["folding_percent"] == 0.0


def test_a_failing_write_leaves_nothing_behind(tmp_path, monkeypatch):
    paths = write_pair(tmp_path, 2)
    import warpseg.engine.outputs as outputs

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(outputs, "write_itk_displacement", broken)
    with pytest.raises(OSError):
        run_contract(paths, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_closing_the_job_cancels_it():
    moving, _ = blob_pair((20, 20), np.eye(4), 1)
    fixed, _ = blob_pair((20, 20), np.eye(4), 2)
    job = register(moving, fixed, "test-wave", device="cpu")
    next(job)
    job.close()
    with pytest.raises(StopIteration):
        next(job)


def test_outputs_open_in_napari_on_the_fixed_image(tmp_path):
    from warpseg._plugin._reader import get_reader

    paths = write_pair(tmp_path, 3)
    run_contract(paths, tmp_path / "out")
    fixed_layer = get_reader(str(paths["fixed"]))(str(paths["fixed"]))[0]
    for name, kind in (("warped.nii.gz", "image"), ("warped_labels.nii.gz", "labels"), ("jacobian.nii.gz", "image")):
        path = str(tmp_path / "out" / name)
        data, attributes, layer_type = get_reader(path)(path)[0]
        assert layer_type == kind, name
        assert data.shape == fixed_layer[0].shape
        assert np.allclose(attributes["affine"], fixed_layer[1]["affine"], atol=1e-4), name
