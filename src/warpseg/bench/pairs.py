"""The dev pairs of the shared data: 2D slices and 3D volumes of three subjects, with seg4 labels.

Beside the six pairs of one axial slice (z=109) there is a larger held-out set in 2D: every slice of
the held-out subject's stack (z=90..130) with the same slice of each other subject, both directions
(:func:`held_out_slice_pairs`), for telling apart learned methods whose six-pair scores are close.
"""
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


STACK_FILES = ("oasis2d/{}_stack_z090-130_norm.nii.gz", "oasis2d/{}_stack_z090-130_seg4.nii.gz")
STACK_FIRST_Z = 90


def held_out_slice_pairs(data_dir: Path, folder: Path, held_out: str = "vxm",
                         max_pairs: int | None = None) -> list[DevPair]:
    """Pairs of the same axial slice of ``held_out`` and each other subject, both directions, every
    slice of the stacks; the slices are written as 2D NIfTI files (with their world geometry) into
    ``folder``, which the caller removes. Named like ``vxm->subjX@z101``."""
    import nibabel as nib
    import numpy as np

    missing = [s for s in SUBJECTS if not (data_dir / STACK_FILES[0].format(s)).exists()]
    if missing:
        raise InputError(f"{data_dir}: slice stacks of {', '.join(missing)} not found; pass --data ../shared/data")
    files: dict[tuple[str, str, int], Path] = {}
    for subject in SUBJECTS:
        for kind, pattern in zip(("norm", "seg4"), STACK_FILES):
            stack = nib.load(str(data_dir / pattern.format(subject)))
            data = np.asanyarray(stack.dataobj)
            for index in range(data.shape[2]):
                affine = stack.affine.copy()
                affine[:3, 3] += affine[:3, 2] * index
                files[subject, kind, index] = folder / f"{subject}_z{STACK_FIRST_Z + index:03d}_{kind}.nii.gz"
                nib.save(nib.Nifti1Image(data[:, :, index: index + 1], affine), str(files[subject, kind, index]))
    pairs, slice_count = [], data.shape[2]  # every stack holds the same slices z=90..130
    for index in range(slice_count):
        for other in (s for s in SUBJECTS if s != held_out):
            for moving, fixed in ((held_out, other), (other, held_out)):
                pairs.append(DevPair(f"{moving}->{fixed}@z{STACK_FIRST_Z + index}", files[moving, "norm", index],
                                     files[moving, "seg4", index], files[fixed, "norm", index],
                                     files[fixed, "seg4", index]))
    return pairs[:max_pairs] if max_pairs else pairs
