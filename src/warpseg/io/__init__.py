"""Reading and writing volumes with their world geometry."""
from warpseg.io.initial_transform import read_initial_transform
from warpseg.io.landmarks import Landmarks, read_landmarks
from warpseg.io.read import SUPPORTED_SUFFIXES, is_supported_path, read_volume
from warpseg.io.volume import Volume
from warpseg.io.write import write_volume

__all__ = ["Landmarks", "read_initial_transform", "read_landmarks", "Volume", "read_volume", "write_volume", "is_supported_path", "SUPPORTED_SUFFIXES"]
