"""npe2 writers: Image and Labels layers to NIfTI, MHA or NRRD with their world geometry."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from warpseg.io import write_volume

WRITER_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")
DEFAULT_SUFFIX = ".nii.gz"


def write_image(path: str, data: Any, attributes: dict) -> list[str]:
    """Write one Image layer; returns the written path (``.nii.gz`` added if none given)."""
    return _write(path, data, attributes, "image")


def write_labels(path: str, data: Any, attributes: dict) -> list[str]:
    """Write one Labels layer as an integer label map; returns the written path."""
    return _write(path, data, attributes, "labels")


def _write(path: str, data: Any, attributes: dict, layer_type: str) -> list[str]:
    from warpseg._plugin._layers import layer_data_to_volume

    volume = layer_data_to_volume(data, attributes, layer_type)
    target = Path(path)
    if not target.name.lower().endswith(WRITER_SUFFIXES):
        target = target.with_name(target.name + DEFAULT_SUFFIX)
    return [str(write_volume(volume, target))]
