"""Reading and writing volumes: round trips keep data and geometry; bad input gives clear errors."""
import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import oblique_affine, write_dicom_series
from warpseg.errors import InputError
from warpseg.io import Volume, read_volume, write_volume
from warpseg.io.sitk_bridge import affine_from_sitk

SUFFIXES = [".nii.gz", ".nii", ".mha", ".nrrd"]
LPS_FROM_RAS = np.array([-1.0, -1.0, 1.0])


def image_volume(rng, shape=(12, 10, 8), affine=None):
    return Volume(rng.normal(size=shape).astype(np.float32), oblique_affine() if affine is None else affine)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_image_round_trip_keeps_array_dtype_and_oblique_anisotropic_affine(tmp_path, rng, suffix):
    volume = image_volume(rng)
    path = write_volume(volume, tmp_path / f"image{suffix}")
    back = read_volume(path)
    assert not back.is_labels and back.array.dtype == np.float32
    assert np.array_equal(back.array, volume.array)
    assert np.allclose(back.affine, volume.affine, atol=1e-5)
    assert np.allclose(back.spacing, [0.8, 1.1, 2.5], atol=1e-5)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_label_round_trip_stays_integer(tmp_path, rng, suffix):
    labels = Volume(rng.integers(0, 6, size=(9, 11, 7)).astype(np.uint8), oblique_affine(), is_labels=True)
    back = read_volume(write_volume(labels, tmp_path / f"brain_seg{suffix}"))
    assert back.is_labels and np.issubdtype(back.array.dtype, np.integer)
    assert np.array_equal(back.array, labels.array)
    assert np.allclose(back.affine, labels.affine, atol=1e-5)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_2d_volume_round_trip_keeps_the_slice_geometry(tmp_path, rng, suffix):
    volume = image_volume(rng, shape=(14, 9), affine=oblique_affine(spacing=(0.7, 0.9, 3.0)))
    back = read_volume(write_volume(volume, tmp_path / f"slice{suffix}"))
    assert back.ndim == 2 and np.array_equal(back.array, volume.array)
    assert np.allclose(back.affine, volume.affine, atol=1e-5)


def test_dicom_series_folder_reads_back_with_its_geometry(tmp_path, rng):
    array = rng.integers(0, 1000, size=(16, 12, 6)).astype(np.int16)
    spacing, origin = (0.75, 0.8, 2.5), (12.0, -30.0, 40.0)
    direction = oblique_affine(spacing=(1, 1, 1))[:3, :3]
    write_dicom_series(tmp_path / "series", array, spacing, origin, direction)
    volume = read_volume(tmp_path / "series")
    assert volume.shape == array.shape and np.array_equal(volume.array, array.astype(np.float32))
    expected = np.eye(4)
    expected[:3, :3] = np.diag(LPS_FROM_RAS) @ direction @ np.diag(spacing)
    expected[:3, 3] = LPS_FROM_RAS * origin
    assert np.allclose(volume.affine, expected, atol=1e-4)


@pytest.mark.parametrize("singleton", [2, 1])
def test_single_slice_nifti_becomes_a_2d_volume_at_the_same_world_points(tmp_path, rng, singleton):
    shape = [10, 12, 8]
    shape[singleton] = 1
    data = rng.normal(size=shape).astype(np.float32)
    affine = oblique_affine()
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "one_slice.nii.gz")
    volume = read_volume(tmp_path / "one_slice.nii.gz")
    assert volume.ndim == 2 and volume.array.shape == tuple(s for s in shape if s != 1)
    index_3d = [3, 4, 5]
    index_3d[singleton] = 0
    index_2d = [i for axis, i in enumerate(index_3d) if axis != singleton]
    assert volume.array[tuple(index_2d)] == data[tuple(index_3d)]
    assert np.allclose(volume.voxel_to_world([index_2d])[0], (affine @ [*index_3d, 1])[:3])


def test_nibabel_and_simpleitk_agree_on_world_coordinates(tmp_path, rng):
    volume = image_volume(rng)
    path = write_volume(volume, tmp_path / "image.nii.gz")
    nib_image, itk_image = nib.load(str(path)), sitk.ReadImage(str(path))
    for index in ([0, 0, 0], [11, 9, 7], [3, 5, 2]):
        ras = (nib_image.affine @ [*index, 1])[:3]
        lps = np.array(itk_image.TransformIndexToPhysicalPoint(index))
        assert np.allclose(ras, LPS_FROM_RAS * lps, atol=1e-4)
    assert np.allclose(affine_from_sitk(itk_image), nib_image.affine, atol=1e-4)
    mha = read_volume(write_volume(read_volume(path), tmp_path / "image.mha"))
    assert np.allclose(mha.affine, nib_image.affine, atol=1e-4)


def test_world_coordinates_of_a_real_anisotropic_nrrd_match_simpleitk(shared_data):
    path = shared_data / "other" / "pyradiomics_brain_tumor" / "brain2_image.nrrd"
    if not path.exists():
        pytest.skip(f"{path} not in the shared data")
    volume, itk_image = read_volume(path), sitk.ReadImage(str(path))
    assert np.allclose(volume.spacing, itk_image.GetSpacing(), atol=1e-6)
    index = [100, 50, 10]
    lps = np.array(itk_image.TransformIndexToPhysicalPoint(index))
    assert np.allclose(volume.voxel_to_world([index])[0], LPS_FROM_RAS * lps, atol=1e-4)
    assert volume.array[tuple(index)] == sitk.GetArrayViewFromImage(itk_image)[index[2], index[1], index[0]]


def test_real_2d_slice_reads_as_a_2d_image_and_label_map(shared_data):
    folder = shared_data / "oasis2d"
    if not (folder / "subjX_slice_norm.nii.gz").exists():
        pytest.skip(f"oasis2d slices not in {folder}")
    image, labels = read_volume(folder / "subjX_slice_norm.nii.gz"), read_volume(folder / "subjX_slice_seg4.nii.gz")
    assert image.shape == labels.shape == (160, 192)
    assert not image.is_labels and labels.is_labels and labels.array.max() == 4
    assert np.allclose(image.affine, labels.affine)


def bad_file(tmp_path, kind):
    path = tmp_path / {"4d": "four_d.nii.gz", "nan": "nan.nii.gz", "constant": "flat.nii.gz",
                       "vector": "vector.mha", "corrupt": "broken.nii.gz", "text": "notes.txt"}[kind]
    if kind == "4d":
        nib.save(nib.Nifti1Image(np.random.rand(6, 6, 6, 3).astype(np.float32), np.eye(4)), path)
    elif kind == "nan":
        data = np.random.rand(6, 6, 6).astype(np.float32)
        data[1, 2, 3] = np.nan
        nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    elif kind == "constant":
        nib.save(nib.Nifti1Image(np.full((6, 6, 6), 3.0, np.float32), np.eye(4)), path)
    elif kind == "vector":
        sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(5, 6, 7, 3).astype(np.float32), isVector=True),
                        str(path))
    elif kind == "corrupt":
        path.write_bytes(gzip.compress(b"this is not a NIfTI header" * 4))
    else:
        path.write_text("hello")
    return path


@pytest.mark.parametrize("kind, message", [
    ("4d", "4D or multi-channel"), ("vector", "components per voxel"), ("nan", "NaN"),
    ("constant", "constant"), ("corrupt", "cannot be read"), ("text", "unsupported format"),
])
def test_bad_files_raise_input_error_saying_what_to_do(tmp_path, kind, message):
    path = bad_file(tmp_path, kind)
    with pytest.raises(InputError, match=message) as error:
        read_volume(path)
    assert str(path) in str(error.value)


def test_missing_file_and_empty_folder_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_volume(tmp_path / "nope.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="DICOM"):
        read_volume(tmp_path / "empty")


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_label_names_round_trip_through_a_sidecar(tmp_path, suffix):
    from warpseg.io import Volume, read_volume, write_volume
    from warpseg.io.label_names import sidecar_path

    labels = Volume(np.arange(24, dtype=np.uint8).reshape(4, 6) % 3, np.eye(4), is_labels=True,
                    label_names={1: "cortex", 2: "white matter"})
    path = write_volume(labels, tmp_path / f"seg{suffix}")
    assert sidecar_path(path) == tmp_path / "seg.labels.json" and sidecar_path(path).exists()
    back = read_volume(path)
    assert back.is_labels and back.label_names == {1: "cortex", 2: "white matter"}
    (tmp_path / "seg.labels.json").write_text("[1, 2]")
    with pytest.raises(Exception, match="label-name file"):
        read_volume(path)
