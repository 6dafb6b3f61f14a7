"""Reading and writing volumes with their world geometry."""
from warpseg.io.read import SUPPORTED_SUFFIXES, is_supported_path, read_volume
from warpseg.io.volume import Volume
from warpseg.io.write import write_volume

__all__ = ["Volume", "read_volume", "write_volume", "is_supported_path", "SUPPORTED_SUFFIXES"]
