"""The napari reader, writers and sample data: geometry in world mm, round trips, clean imports."""
import subprocess
import sys

import numpy as np
import pytest

from conftest import oblique_affine, write_dicom_series
from warpseg._plugin._layers import (
    AFFINE_KEY, LABEL_NAMES_KEY, layer_data_to_volume, napari_affine, napari_axes, volume_to_layer_data,
)
from warpseg._plugin._reader import get_reader
from warpseg._plugin._writer import write_image, write_labels
from warpseg.errors import InputError
from warpseg.io import Volume, read_volume, write_volume

REVERSED_RAS = [2, 1, 0]


def corners(shape):
    """Every corner of the voxel grid, at voxel edges (index -0.5 and size - 0.5)."""
    grids = np.meshgrid(*[[-0.5, size - 0.5] for size in shape], indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=1)


def apply(matrix, points):
    return points @ matrix[:-1, :-1].T + matrix[:-1, -1]


def voxel_index(volume, napari_index):
    """Volume voxel indices of napari data indices (napari data axis d is voxel axis voxel_axes[d])."""
    _, voxel_axes = napari_axes(volume.affine, volume.ndim)
    index = np.empty_like(napari_index)
    index[:, list(voxel_axes)] = napari_index
    return index


@pytest.mark.parametrize("name", ["photo.png", "notes.txt", "image.tif", "archive.nii.zip"])
def test_reader_declines_unknown_files(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x89PNG not ours")
    assert get_reader(str(tmp_path / name)) is None
    assert get_reader([str(tmp_path / name), str(tmp_path / "ok.nii.gz")]) is None


def test_reader_declines_a_folder_without_dicom(tmp_path):
    (tmp_path / "README").write_text("no images here")
    (tmp_path / "data.bin").write_bytes(bytes(300))
    assert get_reader(str(tmp_path)) is None


def test_reader_accepts_supported_files_and_a_dicom_folder(tmp_path, rng):
    for name in ("a.nii", "b.NII.GZ", "c.mha", "d.mhd", "e.nrrd", "f.nhdr"):
        assert callable(get_reader(str(tmp_path / name)))
    write_dicom_series(tmp_path / "series", rng.integers(0, 500, (8, 8, 4)).astype(np.int16),
                       (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    reader = get_reader(str(tmp_path / "series"))
    [(data, attributes, layer_type)] = reader(str(tmp_path / "series"))
    assert layer_type == "image" and data.shape == (4, 8, 8) and attributes["name"] == "series"


def test_reader_reports_a_corrupt_file_with_our_message(tmp_path):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"\x1f\x8b garbage")
    reader = get_reader(str(path))
    with pytest.raises(InputError, match="cannot be read"):
        reader(str(path))


@pytest.mark.parametrize("orientation", ["oblique", "LIA"])
def test_layer_affine_maps_voxel_corners_to_world_mm(tmp_path, rng, orientation):
    affine = oblique_affine()
    if orientation == "LIA":  # FreeSurfer-style: i -> left, j -> inferior, k -> anterior
        affine = np.array([[-1.0, 0, 0, 80], [0, 0, 1.2, -100], [0, -0.9, 0, 90], [0, 0, 0, 1]])
    volume = Volume(rng.normal(size=(12, 10, 8)).astype(np.float32), affine)
    path = write_volume(volume, tmp_path / f"{orientation}.nii.gz")
    [(data, attributes, layer_type)] = get_reader(str(path))(str(path))
    assert layer_type == "image" and attributes["name"] == orientation
    points = corners(data.shape)
    expected_ras = volume.voxel_to_world(voxel_index(volume, points))
    assert np.allclose(apply(attributes["affine"], points), expected_ras[:, REVERSED_RAS], atol=1e-4)
    centres = corners(data.shape) + 0.5 - (corners(data.shape) > 0)  # the corner voxels themselves
    for napari_index, index in zip(centres.astype(int), voxel_index(volume, centres).astype(int)):
        assert data[tuple(napari_index)] == volume.array[tuple(index)]
    # napari slices along the data axis of each world axis: the diagonal dominates
    matrix = np.abs(attributes["affine"][:3, :3])
    assert np.all(np.diag(matrix) >= matrix.max(axis=1) - 1e-9)
    assert np.allclose(attributes["metadata"][AFFINE_KEY], read_volume(path).affine)
    low, high = attributes["contrast_limits"]
    assert data.min() <= low < high <= data.max()


def test_label_maps_become_labels_layers_with_names():
    labels = Volume(np.array([[0, 1], [2, 3]], np.uint8), np.eye(4), is_labels=True,
                    label_names={1: "CSF", 2: "grey matter", 3: "white matter"})
    data, attributes, layer_type = volume_to_layer_data(labels, name="seg")
    assert layer_type == "labels" and np.issubdtype(data.dtype, np.integer)
    assert attributes["metadata"][LABEL_NAMES_KEY] == {1: "CSF", 2: "grey matter", 3: "white matter"}
    assert attributes["features"]["name"][attributes["features"]["index"].index(2)] == "grey matter"


def test_two_slices_of_one_plane_overlay_whatever_their_spacing_and_axis_order(rng):
    axial = np.diag([1.0, 1.0, 1.0, 1.0])
    axial[:3, 3] = (-80, -110, 12)
    coarse_transposed = np.array([[0, 1.5, 0, -78], [1.5, 0, 0, -112], [0, 0, 1.5, 12], [0, 0, 0, 1]])
    first = Volume(np.zeros((160, 192), np.float32), axial)
    second = Volume(np.zeros((120, 100), np.float32), coarse_transposed)
    world = np.array([[12.0, -30.0, 12.0], [-50.0, 40.0, 12.0]])
    for volume in (first, second):
        assert napari_axes(volume.affine, 2)[0] == (1, 0)
        napari_index = volume.world_to_voxel(world)[:, list(napari_axes(volume.affine, 2)[1])]
        assert np.allclose(apply(napari_affine(volume), napari_index), world[:, [1, 0]])


def test_a_coronal_slice_keeps_its_superior_and_right_axes():
    lia = np.array([[-1.0, 0, 0, 80], [0, 0, 1, -0.5], [0, -1, 0, 96], [0, 0, 0, 1]])
    volume = Volume(np.zeros((40, 44), np.float32), lia)
    assert napari_axes(lia, 2) == ((2, 0), (1, 0))
    assert np.allclose(napari_affine(volume), [[-1, 0, 96], [0, -1, 80], [0, 0, 1]])


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".nrrd"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_writer_round_trip_keeps_geometry_and_labels(tmp_path, rng, suffix, ndim):
    shape = (14, 11, 9)[:ndim]
    image = Volume(rng.normal(size=shape).astype(np.float32), oblique_affine())
    labels = Volume(rng.integers(0, 4, size=shape).astype(np.uint8), oblique_affine(), is_labels=True)
    [written] = write_image(str(tmp_path / f"image{suffix}"), *volume_to_layer_data(image)[:2])
    [written_labels] = write_labels(str(tmp_path / f"labels{suffix}"), *volume_to_layer_data(labels)[:2])
    back, back_labels = read_volume(written), read_volume(written_labels, labels=True)
    assert np.array_equal(back.array, image.array) and np.array_equal(back_labels.array, labels.array)
    assert np.issubdtype(back_labels.array.dtype, np.integer)
    assert np.allclose(back.affine, image.affine, atol=1e-5)
    assert np.allclose(back_labels.affine, image.affine, atol=1e-5)


def test_writer_follows_a_layer_moved_after_reading(tmp_path, rng):
    volume = Volume(rng.normal(size=(8, 9, 10)).astype(np.float32), oblique_affine())
    data, attributes, _ = volume_to_layer_data(volume)
    data = np.ascontiguousarray(data)
    attributes["affine"] = attributes["affine"].copy()
    attributes["affine"][0, 3] += 10.0  # napari world axis 0 is S: the user moved it up 10 mm
    [written] = write_image(str(tmp_path / "moved"), data, attributes)
    assert written.endswith("moved.nii.gz")
    expected = volume.affine.copy()
    expected[2, 3] += 10.0
    assert np.allclose(read_volume(written).affine, expected, atol=1e-5)


def test_writer_derives_geometry_from_scale_and_translate_without_metadata(tmp_path, rng):
    data = rng.normal(size=(6, 7, 8)).astype(np.float32)
    attributes = {"name": "plain", "scale": [3.0, 1.0, 0.5], "translate": [10.0, 20.0, 30.0], "metadata": {}}
    volume = layer_data_to_volume(data, attributes, "image")
    assert volume.shape == (8, 7, 6) and np.array_equal(volume.array, data.transpose(2, 1, 0))
    assert np.allclose(volume.affine, [[0.5, 0, 0, 30], [0, 1, 0, 20], [0, 0, 3, 10], [0, 0, 0, 1]])
    [written] = write_image(str(tmp_path / "plain.mha"), data, attributes)
    assert np.allclose(read_volume(written).affine, volume.affine, atol=1e-6)


def test_writer_rejects_layers_it_cannot_store(tmp_path):
    with pytest.raises(InputError, match="4 dimensions"):
        write_image(str(tmp_path / "x.nii.gz"), np.zeros((2, 3, 4, 5), np.float32), {"name": "t"})
    with pytest.raises(InputError, match="RGB"):
        write_image(str(tmp_path / "x.nii.gz"), np.zeros((3, 4, 3), np.uint8), {"name": "c", "rgb": True})


def test_manifest_is_valid_and_its_commands_import():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-warpseg")
    manifest.validate_imports()
    contributions = manifest.contributions
    assert contributions.readers[0].accepts_directories
    assert {"*.nii", "*.nii.gz", "*.mha", "*.mhd", "*.nrrd", "*.nhdr"} <= set(contributions.readers[0].filename_patterns)
    assert {s.display_name for s in contributions.sample_data} == {"Brain pair 2D (with labels)",
                                                                   "Brain pair 3D (with labels)"}
    completed = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-warpseg"],
                               capture_output=True, encoding="utf-8", errors="replace", timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_the_library_imports_without_napari_or_qt():
    code = ("import sys, warpseg, warpseg.io, warpseg.spatial, warpseg.samples\n"
            "print(sorted(m for m in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui') "
            "if m in sys.modules))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


def world_box(layer, mask=None):
    """World bounding box (2, ndim) of a layer's voxels, or of those where ``mask`` is set."""
    index = np.argwhere(mask) if mask is not None else corners(layer.data.shape) + 0.5
    world = np.array([layer.data_to_world(point) for point in index[:: max(1, len(index) // 4000)]])
    return np.stack([world.min(axis=0), world.max(axis=0)])


@pytest.mark.gui
@pytest.mark.parametrize("key", ["brain_pair_3d", "brain_pair_2d"])
def test_sample_pair_overlays_in_the_viewer(make_napari_viewer, sample_cache, key):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-warpseg", key)
    names = [layer.name for layer in viewer.layers]
    assert names == ["moving", "moving labels", "fixed", "fixed labels"]
    moving, fixed = viewer.layers["moving"], viewer.layers["fixed"]
    assert moving.data.shape != fixed.data.shape and type(viewer.layers["fixed labels"]).__name__ == "Labels"
    field_of_view = [world_box(layer) for layer in (moving, fixed)]
    brain = [world_box(viewer.layers[name], viewer.layers[name].data > 0) for name in ("moving labels", "fixed labels")]
    assert np.abs(field_of_view[0].mean(axis=0) - field_of_view[1].mean(axis=0)).max() < 3.0
    assert np.abs(brain[0] - brain[1]).max() < 8.0  # the subjects' deformations differ by a few mm


@pytest.mark.gui
def test_a_corrupt_file_gives_our_error_and_leaves_the_viewer_empty(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(Exception, match="cannot be read as NIfTI"):
        viewer.open(str(path), plugin="napari-warpseg")
    assert len(viewer.layers) == 0
