"""napari-warpseg: registration and segmentation of medical images, headless and in napari.

Importing this package never imports napari or Qt.
"""
from warpseg.errors import WarpsegError
from warpseg.io import Volume, read_volume, write_volume

__version__ = "0.1.0"
__all__ = ["Volume", "read_volume", "write_volume", "WarpsegError", "__version__"]
