"""npe2 reader: NIfTI, MHA/MHD, NRRD files and DICOM-series folders as Image or Labels layers."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from warpseg.io import SUPPORTED_SUFFIXES, is_supported_path, read_volume

if TYPE_CHECKING:
    import napari.types

def get_reader(path: str | list[str]) -> napari.types.ReaderFunction | None:
    """Return :func:`read_layers` when every path is a supported file or a DICOM folder, else None.

    The choice is made from the file name alone (and, for folders, the 4-byte DICOM marker of a
    few files) so that napari can ask cheaply; a corrupt file is reported when it is read.
    """
    paths = [path] if isinstance(path, str | Path) else list(path)
    if not paths or not all(is_supported_path(p) for p in paths):
        return None
    return read_layers


def read_layers(path: str | list[str]) -> list[napari.types.FullLayerData]:
    """Read each path into a layer data tuple; label maps become Labels layers.

    Raises
    ------
    warpseg.errors.InputError
        When a file cannot be read; napari shows its message (what is wrong, what to do).
    """
    from warpseg._plugin._layers import volume_to_layer_data

    paths = [path] if isinstance(path, str | Path) else list(path)
    return [volume_to_layer_data(read_volume(p), name=layer_name(Path(p))) for p in paths]


def layer_name(path: Path) -> str:
    """The file name without its (possibly double) suffix, or the folder name."""
    name = path.name
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name
