"""Write :class:`Volume` objects to NIfTI or MHA/NRRD with their geometry intact."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from warpseg.errors import InputError
from warpseg.io.label_names import write_label_names
from warpseg.io.volume import Volume


def write_volume(volume: Volume, path: str | Path) -> Path:
    """Write ``volume`` to ``path``; the suffix picks the format (.nii, .nii.gz, .mha, .mhd, .nrrd).

    Label maps keep an integer type (and their names go to a ``.labels.json`` sidecar); images
    are written as float32. A 2D volume becomes a single-slice file whose header carries the
    full 4x4 affine.
    """
    path = Path(path)
    name = path.name.lower()
    array = _output_array(volume)
    if name.endswith((".nii", ".nii.gz")):
        _write_nifti(volume, array, path)
    elif name.endswith((".mha", ".mhd", ".nrrd", ".nhdr")):
        import SimpleITK as sitk

        from warpseg.io.sitk_bridge import volume_to_sitk

        sitk.WriteImage(volume_to_sitk(volume, array), str(path), True)
    else:
        raise InputError(f"{path}: cannot write this format; use .nii.gz, .nii, .mha or .nrrd")
    if volume.is_labels and volume.label_names:
        write_label_names(volume.label_names, path)
    return path


def _output_array(volume: Volume) -> np.ndarray:
    if volume.is_labels:
        top = int(volume.array.max()) if volume.array.size else 0
        return volume.array.astype(np.uint8 if top < 256 else np.int32)
    return volume.array.astype(np.float32)


def _write_nifti(volume: Volume, array: np.ndarray, path: Path) -> None:
    import nibabel as nib

    if volume.ndim == 2:
        array = array[..., np.newaxis]
    image = nib.Nifti1Image(array, volume.affine)
    image.header.set_xyzt_units("mm")
    image.set_sform(volume.affine, code=1)
    image.set_qform(volume.affine, code=1)
    nib.save(image, str(path))
