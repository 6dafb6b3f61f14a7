"""The dev pairs of the shared data: 2D slices and 3D volumes of three subjects, with seg4 labels."""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

from warpseg.errors import InputError

SUBJECTS = ("subjX", "subjY", "vxm")
FILES = {
    2: ("oasis2d/{}_slice_norm.nii.gz", "oasis2d/{}_slice_seg4.nii.gz"),
    3: ("oasis3d/{}_aligned_norm.nii.gz", "oasis3d/{}_aligned_seg4.nii.gz"),
}


@dataclass(frozen=True)
class DevPair:
    """Moving and fixed images with their seg4 label maps."""

    name: str
    moving: Path
    moving_labels: Path
    fixed: Path
    fixed_labels: Path


def default_data_dir() -> Path:
    """``$WARPSEG_DATA``, else ``../shared/data`` beside the current folder."""
    return Path(os.environ.get("WARPSEG_DATA", Path.cwd().parent / "shared" / "data"))


def dev_pairs(data_dir: Path, ndim: int, max_pairs: int | None = None) -> list[DevPair]:
    """Ordered pairs across subjects (never within one), in a fixed order.

    The first pairs cycle through the subjects (X->Y, Y->vxm, vxm->X) so that a short run still
    uses every subject as moving and as fixed once.
    """
    image_pattern, label_pattern = FILES[ndim]
    missing = [s for s in SUBJECTS if not (data_dir / image_pattern.format(s)).exists()]
    if missing:
        raise InputError(f"{data_dir}: dev data for {', '.join(missing)} not found; pass --data ../shared/data")
    cyclic = [(SUBJECTS[i], SUBJECTS[(i + 1) % len(SUBJECTS)]) for i in range(len(SUBJECTS))]
    rest = [p for p in itertools.permutations(SUBJECTS, 2) if p not in cyclic]
    pairs = [
        DevPair(f"{m}->{f}", data_dir / image_pattern.format(m), data_dir / label_pattern.format(m),
                data_dir / image_pattern.format(f), data_dir / label_pattern.format(f))
        for m, f in cyclic + rest
    ]
    return pairs[:max_pairs] if max_pairs else pairs
