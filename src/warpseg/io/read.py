"""Read medical images into :class:`Volume` objects: NIfTI, MHA/MHD, NRRD and DICOM series."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from warpseg.errors import InputError
from warpseg.io.label_names import read_label_names
from warpseg.io.volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
SUPPORTED_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
LABEL_NAME_HINT = re.compile(r"(seg|label|aseg|mask|parc|atlas_lab)", re.IGNORECASE)
MAX_LABELS_WITHOUT_HINT = 64
DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"


def is_supported_path(path: str | Path) -> bool:
    """True for files with a supported suffix and for folders that hold DICOM files.

    Decided from the name alone (and, for folders, the 4-byte DICOM marker of a few files), so
    callers such as napari can ask cheaply; a corrupt file is reported when it is read.
    """
    path = Path(path)
    if path.is_dir():
        return holds_dicom(path)
    return path.name.lower().endswith(SUPPORTED_SUFFIXES)


def holds_dicom(folder: Path, max_files: int = 20) -> bool:
    """True when one of the first few files in ``folder`` carries the DICOM 'DICM' marker."""
    files = [entry for entry in sorted(folder.iterdir()) if entry.is_file() and not entry.name.startswith(".")]
    for entry in files[:max_files]:
        try:
            with entry.open("rb") as stream:
                stream.seek(DICOM_MAGIC_OFFSET)
                if stream.read(len(DICOM_MAGIC)) == DICOM_MAGIC:
                    return True
        except OSError:
            continue
    return False


def read_volume(path: str | Path, *, labels: bool | None = None) -> Volume:
    """Read an image or label map with its world geometry.

    Parameters
    ----------
    path
        A NIfTI, MHA/MHD or NRRD file, or a folder holding one DICOM series.
    labels
        Force (True) or forbid (False) label-map handling; ``None`` guesses from the data
        (integer values and a name like ``*seg*``/``*label*``, or few distinct integers).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; check the path")
    if path.is_dir():
        array, affine = _read_dicom_series(path)
    elif path.name.lower().endswith(NIFTI_SUFFIXES):
        array, affine = _read_nifti(path)
    elif path.name.lower().endswith(ITK_SUFFIXES):
        array, affine = _read_itk(path)
    else:
        raise InputError(
            f"{path}: unsupported format; use NIfTI (.nii, .nii.gz), MHA/MHD, NRRD or a DICOM series folder"
        )
    array, affine = _squeeze_single_slice(array, affine, path)
    _check_finite_and_varied(array, path)
    label_names = read_label_names(path)
    is_labels = (label_names is not None or _looks_like_labels(array, path)) if labels is None else labels
    if is_labels:
        array = _as_label_array(array, path)
    else:
        array = array.astype(np.float32, copy=False)
    return Volume(array, affine, is_labels=is_labels, label_names=label_names if is_labels else None)


def _read_nifti(path: Path):
    import nibabel as nib

    try:
        image = nib.load(str(path))
        array = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel raises many types for corrupt files
        raise InputError(f"{path}: cannot be read as NIfTI ({error}); check the file is complete") from None
    if array.ndim > 3:
        extra = array.shape[3:]
        if int(np.prod(extra)) != 1:
            raise InputError(
                f"{path}: has shape {array.shape}, a 4D or multi-channel image; "
                "give one 3D volume (split the channels or time points first)"
            )
        array = array.reshape(array.shape[:3])
    if array.ndim < 2:
        raise InputError(f"{path}: has shape {array.shape}; an image must be 2D or 3D")
    affine = image.affine if image.affine is not None else np.eye(4)
    return array, np.asarray(affine, dtype=np.float64)


def _read_itk(path: Path):
    import SimpleITK as sitk

    from warpseg.io.sitk_bridge import affine_from_sitk, sitk_to_array

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown error"
        raise InputError(f"{path}: cannot be read ({first_line}); check the file is complete") from None
    return _from_sitk(image, path, affine_from_sitk, sitk_to_array)


def _read_dicom_series(folder: Path):
    import SimpleITK as sitk

    from warpseg.io.sitk_bridge import affine_from_sitk, sitk_to_array

    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"{folder}: holds no DICOM series; point to a folder of .dcm slices")
    if len(series) > 1:
        raise InputError(
            f"{folder}: holds {len(series)} DICOM series ({', '.join(series[:3])}...); "
            "put each series in its own folder"
        )
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series[0]))
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise InputError(f"{folder}: the DICOM series cannot be read ({str(error).strip()[:200]})") from None
    return _from_sitk(image, folder, affine_from_sitk, sitk_to_array)


def _from_sitk(image, path: Path, affine_from_sitk, sitk_to_array):
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel (a vector or colour "
            "image); give a single-channel image"
        )
    if image.GetDimension() not in (2, 3):
        raise InputError(f"{path}: is {image.GetDimension()}D; give one 2D or 3D volume")
    return sitk_to_array(image), affine_from_sitk(image)


def _squeeze_single_slice(array: np.ndarray, affine: np.ndarray, path: Path):
    """A 3D array with exactly one singleton axis is a 2D image; that axis's column moves last."""
    if array.ndim != 3:
        return array, affine
    singletons = [axis for axis, size in enumerate(array.shape) if size == 1]
    if len(singletons) == 0:
        return array, affine
    if len(singletons) > 1:
        raise InputError(f"{path}: has shape {array.shape}; an image needs at least 2 voxels along 2 axes")
    axis = singletons[0]
    kept = [a for a in range(3) if a != axis]
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, kept + [axis]]
    return np.take(array, 0, axis=axis), new_affine


def _check_finite_and_varied(array: np.ndarray, path: Path) -> None:
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise InputError(f"{path}: has {bad} NaN or infinite voxels; replace them (e.g. with 0) and retry")
    if array.size == 0 or array.min() == array.max():
        raise InputError(f"{path}: is empty or constant (every voxel is {array.flat[0] if array.size else 'missing'}); "
                         "check you picked the right file")


def _looks_like_labels(array: np.ndarray, path: Path) -> bool:
    integral = np.issubdtype(array.dtype, np.integer) or bool(np.all(np.mod(array, 1) == 0))
    if not integral:
        return False
    if LABEL_NAME_HINT.search(path.name):
        return True
    return np.issubdtype(array.dtype, np.integer) and len(np.unique(array)) <= MAX_LABELS_WITHOUT_HINT


def _as_label_array(array: np.ndarray, path: Path) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.mod(array, 1) == 0):
            raise InputError(f"{path}: a label map must hold whole numbers; this one has fractional values")
    if array.min() < 0:
        raise InputError(f"{path}: a label map must not hold negative labels")
    top = int(array.max())
    dtype = np.uint8 if top < 256 else (np.uint16 if top < 65536 else np.int32)
    return array.astype(dtype)
