"""Training pairs from the shared dev data: real subjects, and images synthesised from real label maps.

2D uses the coronal slice stacks (41 slices around the benchmark slice) at 1 mm; 3D uses the
volumes at a reduced resolution (``TARGET_SPACING`` unless a run picks another ``spacing``). Pairs are always drawn across subjects.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from warpseg.errors import InputError
from warpseg.learning.augment import augment_pair_member, synthesise_image
from warpseg.learning.label_maps import aseg_to_seg4_lookup
from warpseg.learning.preprocess import Preprocessing, image_to_model_grid, plan_grid

REAL_SUBJECTS = ("subjX", "subjY", "vxm")
TARGET_SPACING = {2: 1.0, 3: 2.0}
CROP_3D = (160, 192, 224)
BENCHMARK_SLICE = 19  # index of z=109 in the z090-130 stacks
NUM_SEG4 = 5


@dataclass
class Subject:
    """One subject: images (None for label-only maps) and seg4 labels, one item per slice (2D)."""

    name: str
    images: torch.Tensor | None
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]


class RegistrationData:
    """Draws augmented training pairs and gives fixed validation pairs on held-out subjects."""

    def __init__(self, data_dir: str | Path, ndim: int, validation_subjects=("vxm",),
                 label_maps: int = 15, synthetic_share: float = 0.5, spacing: float | None = None) -> None:
        self.data_dir, self.ndim = Path(data_dir), ndim
        self.spacing = float(spacing or TARGET_SPACING[ndim])
        if ndim == 2 and self.spacing != TARGET_SPACING[2]:
            raise InputError(f"2D training uses the stacks' {TARGET_SPACING[2]} mm spacing; drop --spacing")
        unknown = set(validation_subjects) - set(REAL_SUBJECTS)
        if unknown:
            raise InputError(f"unknown validation subjects {sorted(unknown)}; choose from {REAL_SUBJECTS}")
        real = [load_real_subject(self.data_dir, name, ndim, self.spacing) for name in REAL_SUBJECTS]
        self.validation = [s for s in real if s.name in validation_subjects]
        self.training = [s for s in real if s.name not in validation_subjects]
        self.label_only = load_label_maps(self.data_dir, ndim, label_maps, self.spacing)
        self.synthetic_share = synthetic_share if self.label_only else 0.0
        self.sources = [s.name for s in self.training + self.label_only]

    def sample(self, generator: torch.Generator) -> dict:
        """An augmented pair across two different subjects: tensors ``(1, 1, *S)`` and their names."""
        synthetic = torch.rand(1, generator=generator).item() < self.synthetic_share
        pool = self.label_only + self.training if synthetic else self.training
        if len(pool) < 2:
            pool = self.training + self.label_only
        first, second = torch.randperm(len(pool), generator=generator)[:2].tolist()
        index = int(torch.randint(len(pool[first]), (1,), generator=generator))
        pair = {"subjects": (pool[first].name, pool[second].name)}
        for role, subject in (("moving", pool[first]), ("fixed", pool[second])):
            item = min(len(subject) - 1, max(0, index + int(torch.randint(-2, 3, (1,), generator=generator))))
            labels = subject.labels[item: item + 1]
            if subject.images is None or synthetic:
                image = synthesise_image(labels, generator, NUM_SEG4)
            else:
                image = subject.images[item: item + 1]
            pair[role], pair[f"{role}_labels"] = augment_pair_member(image, labels, generator, spacing=self.spacing)
        return pair

    def validation_pairs(self) -> list[tuple[str, dict[str, torch.Tensor]]]:
        """Each held-out subject against each training subject, both ways (benchmark slice in 2D)."""
        pairs = []
        for held_out in self.validation:
            for other in self.training:
                for moving, fixed in ((held_out, other), (other, held_out)):
                    index = BENCHMARK_SLICE if self.ndim == 2 else 0
                    pairs.append((f"{moving.name}->{fixed.name}", {
                        "moving": moving.images[index: index + 1], "fixed": fixed.images[index: index + 1],
                        "moving_labels": moving.labels[index: index + 1],
                        "fixed_labels": fixed.labels[index: index + 1]}))
        return pairs


def load_real_subject(data_dir: Path, name: str, ndim: int, spacing: float = TARGET_SPACING[3]) -> Subject:
    """A real subject's normalised image(s) and seg4 labels on the training grid."""
    from warpseg.engine.register import normalise_intensity

    if ndim == 2:
        image_file, label_file = f"oasis2d/{name}_stack_z090-130_norm.nii.gz", f"oasis2d/{name}_stack_z090-130_seg4.nii.gz"
    else:
        image_file, label_file = f"oasis3d/{name}_aligned_norm.nii.gz", f"oasis3d/{name}_aligned_seg4.nii.gz"
    image, labels = (_load(data_dir / f) for f in (image_file, label_file))
    if ndim == 2:  # slices along the last axis
        images = np.stack([normalise_intensity(image[..., k]) for k in range(image.shape[-1])])
        return Subject(name, torch.from_numpy(images)[:, None], torch.from_numpy(np.moveaxis(labels, -1, 0)[:, None].astype(np.int64)))
    return Subject(name, downsample(torch.from_numpy(normalise_intensity(image))[None, None], spacing),
                   downsample(torch.from_numpy(labels.astype(np.int64))[None, None], spacing, labels=True))


def load_label_maps(data_dir: Path, ndim: int, count: int, spacing: float = TARGET_SPACING[3],
                    convert=None) -> list[Subject]:
    """SynthSeg's whole-head label maps as seg4 subjects, cropped around the brain like the OASIS grid.

    ``convert(aseg) -> labels`` maps the FreeSurfer IDs to another label set instead of seg4.
    """
    folder = data_dir / "synthseg"
    files = sorted(folder.glob("training_seg_*.nii.gz"))[:count] if folder.is_dir() else []
    if not files:
        return []
    lookup = aseg_to_seg4_lookup(data_dir)
    subjects = []
    for path in files:
        aseg = np.rint(_load(path)).astype(np.int64)
        labels = convert(aseg) if convert is not None else lookup[aseg.clip(0, len(lookup) - 1)]
        cropped = crop_around_brain(torch.from_numpy(labels.astype(np.int64)), CROP_3D)
        if ndim == 2:
            centre = CROP_3D[2] // 2 - 3
            slices = cropped[..., centre - 20: centre + 21]
            subjects.append(Subject(path.stem.split(".")[0], None, torch.movedim(slices, -1, 0)[:, None]))
        else:
            subjects.append(Subject(path.stem.split(".")[0], None, downsample(cropped[None, None], spacing, labels=True)))
    return subjects


def crop_around_brain(labels: torch.Tensor, size) -> torch.Tensor:
    """A window of ``size`` centred on the labelled voxels (zero-padded where it leaves the map)."""
    inside = torch.nonzero(labels > 0)
    centre = ((inside.min(0).values + inside.max(0).values) // 2).tolist()
    starts = [c - s // 2 for c, s in zip(centre, size)]
    padding = []
    for start, extent, length in zip(starts, size, labels.shape):
        padding = [max(0, -start), max(0, start + extent - length)] + padding
    padded = F.pad(labels, padding)
    index = tuple(slice(max(0, s), max(0, s) + e) for s, e in zip(starts, size))
    return padded[index]


def downsample(volume: torch.Tensor, spacing: float, labels: bool = False) -> torch.Tensor:
    """A 1 mm volume ``(1, 1, *S)`` on the model grid of ``spacing`` mm, as inference will see it."""
    grid = plan_grid(volume.shape[2:], (1.0,) * (volume.dim() - 2), Preprocessing(target_spacing=spacing))
    return image_to_model_grid(volume, grid, mode="nearest" if labels else "linear")


def _load(path: Path) -> np.ndarray:
    if not path.exists():
        raise InputError(f"{path}: training data not found; pass --data ../shared/data")
    return np.asarray(nib.load(str(path)).dataobj)
