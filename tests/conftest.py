"""Shared, generic test helpers: geometry, synthetic blob pairs, a DICOM series on disk, real data,
and the sample-data cache."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def oblique_affine(spacing=(0.8, 1.1, 2.5), angles_deg=(7.0, -4.0, 12.0),
                   origin=(-40.0, 25.0, -10.0)) -> np.ndarray:
    """A 4x4 voxel-to-RAS affine with anisotropic spacing and a rotation about all three axes."""
    ax, ay, az = np.deg2rad(angles_deg)
    rot_x = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rot_y = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rot_z = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot_z @ rot_y @ rot_x @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def rotation_affine(spacing, angle_deg: float, origin) -> np.ndarray:
    """A 4x4 voxel-to-RAS affine: voxel ``spacing``, then a rotation by ``angle_deg`` about z."""
    angle = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(np.asarray(spacing, dtype=np.float64))
    affine[:3, 3] = origin
    return affine


def blob_pair(shape, affine, seed: int):
    """A smooth image of a few Gaussian blobs and its 0..3 label map on the grid ``(shape, affine)``.

    The blobs sit in normalised grid coordinates (each axis spans [0, 1]), so a seed gives the
    same picture on any grid; different seeds move and resize them a little (moving vs fixed).
    Returns ``(image, labels)`` volumes; ``shape`` may be 2D (``affine`` stays 4x4).
    """
    from warpseg.io import Volume

    generator = np.random.default_rng(seed)
    axes = np.meshgrid(*[np.linspace(0.0, 1.0, size) for size in shape], indexing="ij")
    image = np.zeros(shape, dtype=np.float64)
    for _ in range(4):
        centre = 0.5 + generator.uniform(-0.15, 0.15, len(shape))
        width = generator.uniform(0.12, 0.2)
        squared = sum((axis - c) ** 2 for axis, c in zip(axes, centre))
        image += generator.uniform(0.6, 1.0) * np.exp(-squared / (2 * width**2))
    labels = np.digitize(image, [0.2, 0.5, 0.9]).astype(np.uint8)
    return Volume(image.astype(np.float32), affine), Volume(labels, affine, is_labels=True)


def textured_image(shape, seed: int = 3) -> np.ndarray:
    """Smooth blobs of varied size and brightness in [0, 1], enough texture to register."""
    rng = np.random.default_rng(seed)
    axes = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    image = np.zeros(shape)
    for _ in range(40 * len(shape)):
        centre = rng.uniform(0.0, 1.0, len(shape)) * np.asarray(shape)
        width = rng.uniform(1.5, 3.5)
        image += rng.uniform(0.3, 1.0) * np.exp(-sum((a - c) ** 2 for a, c in zip(axes, centre)) / (2 * width**2))
    return (image / image.max()).astype(np.float32)


def smooth_field(shape, amplitude: float = 2.0) -> np.ndarray:
    """A smooth displacement of up to ``amplitude`` voxels: one sine bump per axis, ``(ndim, *S)``."""
    axes = np.meshgrid(*[np.linspace(0.0, np.pi, n) for n in shape], indexing="ij")
    return np.stack([amplitude * np.sin(axes[(d + 1) % len(shape)]) * np.sin(axes[d])
                     for d in range(len(shape))]).astype(np.float32)


def rename_label(layer, label: int, name: str) -> dict:
    """Name ``label`` of a napari Labels layer otherwise (as a map of another label set would); the old names."""
    from warpseg._plugin._layers import LABEL_NAMES_KEY

    names = layer.metadata[LABEL_NAMES_KEY]
    layer.metadata[LABEL_NAMES_KEY] = {**names, label: name}
    return names


def drive(job):
    """Run a method's generator to its end; return (records, output)."""
    records = []
    while True:
        try:
            records.append(next(job))
        except StopIteration as stop:
            return records, stop.value


def pytest_runtest_setup(item):
    """Skip GUI tests cleanly when Qt has no display to open (instead of aborting the run)."""
    if item.get_closest_marker("gui") is None:
        return
    headless_platform = os.environ.get("QT_QPA_PLATFORM", "") in ("offscreen", "minimal")
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or headless_platform):
        pytest.skip("needs a display: run under xvfb-run -a (or set QT_QPA_PLATFORM=offscreen)")


@pytest.fixture(autouse=True)
def widget_settings(tmp_path, monkeypatch) -> Path:
    """Each test keeps its widget settings in a folder of its own (never the user's ~/.config)."""
    folder = tmp_path / "config"
    monkeypatch.setenv("WARPSEG_CONFIG", str(folder))
    return folder


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder (``$WARPSEG_DATA``, default ``../shared/data``); skips if absent."""
    folder = Path(os.environ.get("WARPSEG_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not folder.is_dir():
        pytest.skip(f"shared data not found at {folder}; set WARPSEG_DATA")
    return folder


@pytest.fixture(scope="session")
def sample_cache(tmp_path_factory) -> Path:
    """Point ``WARPSEG_CACHE`` at a per-session folder so sample pairs are built once per run."""
    folder = tmp_path_factory.mktemp("warpseg-cache")
    previous = os.environ.get("WARPSEG_CACHE")
    os.environ["WARPSEG_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("WARPSEG_CACHE", None)
    else:
        os.environ["WARPSEG_CACHE"] = previous


def write_dicom_series(folder: Path, array: np.ndarray, spacing, origin_lps, direction_lps) -> None:
    """Write ``array`` (NIfTI index order ``(x, y, z)``, int16) as one DICOM file per slice.

    Each slice carries the series/study UIDs, its ImagePositionPatient and the shared
    ImageOrientationPatient, which is how scanners encode an oblique 3D grid.
    """
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin_lps])
    image.SetDirection([float(d) for d in np.asarray(direction_lps).ravel()])
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    cosines = np.asarray(direction_lps)
    orientation = "\\".join(f"{v:.9f}" for v in list(cosines[:, 0]) + list(cosines[:, 1]))
    shared_tags = {
        "0008|0060": "MR", "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
        "0020|000d": "1.2.826.0.1.3680043.2.1125.1.1", "0020|000e": "1.2.826.0.1.3680043.2.1125.1.2",
        "0020|0037": orientation, "0018|0050": f"{spacing[2]:.6f}", "0008|103e": "warpseg test series",
    }
    for index in range(image.GetDepth()):
        plane = image[:, :, index]
        for tag, value in shared_tags.items():
            plane.SetMetaData(tag, value)
        position = image.TransformIndexToPhysicalPoint((0, 0, index))
        plane.SetMetaData("0020|0032", "\\".join(f"{p:.6f}" for p in position))
        plane.SetMetaData("0020|0013", str(index + 1))
        plane.SetMetaData("0008|0018", f"1.2.826.0.1.3680043.2.1125.1.3.{index + 1}")
        writer.SetFileName(str(folder / f"slice_{index:03d}.dcm"))
        writer.Execute(plane)


@pytest.fixture
def errors(monkeypatch):
    """Messages the widgets send to napari's error notifications."""
    import napari.utils.notifications

    shown = []
    monkeypatch.setattr(napari.utils.notifications, "show_error", shown.append)
    return shown


def free_port() -> int:
    """A loopback TCP port nothing listens on now (for a test's process group)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
