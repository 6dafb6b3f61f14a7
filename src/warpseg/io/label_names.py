"""Label names travel beside a label map as ``<name>.labels.json`` (``{"1": "cortex", ...}``).

NIfTI, MHA and NRRD have no portable place for label names, so the sidecar keeps them; reading a
label map picks its sidecar up when there is one.
"""
from __future__ import annotations

import json
from pathlib import Path

from warpseg.errors import InputError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")


def sidecar_path(path: str | Path) -> Path:
    """``seg.nii.gz`` -> ``seg.labels.json`` (a folder, e.g. DICOM: ``folder.labels.json`` beside it)."""
    path = Path(path)
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(f"{name}.labels.json")


def write_label_names(label_names: dict[int, str], path: str | Path) -> Path:
    """Write the sidecar of the label map at ``path``."""
    sidecar = sidecar_path(path)
    sidecar.write_text(json.dumps({str(k): v for k, v in sorted(label_names.items())}, indent=1) + "\n")
    return sidecar


def read_label_names(path: str | Path) -> dict[int, str] | None:
    """The label names beside the label map at ``path``, or None when it has no sidecar."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return None
    try:
        return {int(key): str(value) for key, value in json.loads(sidecar.read_text()).items()}
    except (ValueError, AttributeError) as error:
        raise InputError(f"{sidecar}: not a label-name file ({error}); it should map label IDs to names, "
                         'e.g. {"1": "cortex"}') from None
