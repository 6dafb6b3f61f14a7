"""Labelled training subjects for building an Atlas-ISTN atlas, and held-out subjects to validate on.

Every training subject is labelled in the chosen label set (the paper's setting: the atlas is the
mean of the training label maps):

* ``seg4``: the real subjects ``subjX`` and ``subjY`` and the SynthSeg label maps (images
  synthesised from their labels, SynthMorph-style, every time they are drawn); ``vxm`` is held out.
* ``seg35``: ``vxm`` (the only real subject with seg35 labels) and the SynthSeg maps relabelled by
  ``labels/aseg_to_seg35.tsv`` (:func:`aseg_to_seg35`); ``subjY`` is held out and scored in seg4 (the
  prediction merged by ``labels/seg35_to_seg4.tsv``), as in few-shot training.

In 2D a subject contributes the slices ``BENCHMARK_SLICE ± slab`` of its 41-slice stack (one atlas
slice cannot stand for 41 mm of anatomy); in 3D its volume on the training grid.
"""
from __future__ import annotations

import csv
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch

from warpseg.errors import InputError
from warpseg.learning.augment import augment_pair_member, synthesise_image
from warpseg.learning.data import (
    BENCHMARK_SLICE, REAL_SUBJECTS, TARGET_SPACING, Subject, load_label_maps, load_real_subject,
)
from warpseg.learning.label_maps import label_set_names, to_seg4_lookup
from warpseg.learning.losses import one_hot

NEAREST_MARGIN = 10
"""Voxels around the ambiguous region searched for the nearest candidate label (aseg_to_seg35)."""


class AtlasTrainingData:
    """Training items (subject, slice) drawn with augmentation, the initial atlas, and validation images.

    Parameters
    ----------
    training : subjects with labels ``(N, 1, *S)`` in the label set; ``images`` None for label-only maps.
    validation : held-out subjects with images and seg4 labels on the same grid.
    label_names : ``{id: name}`` of the label set, background included.
    affine : 4x4 voxel-to-world matrix of the atlas grid (the training images' geometry).
    spacing : training grid spacing in mm (scales the augmentation).
    slab : 2D: the slices ``BENCHMARK_SLICE ± slab`` of every subject are items.
    seg4_lookup : label set -> seg4 (identity for seg4).
    synthetic_share : share of training draws from label-only subjects (their images are synthesised);
        the atlas itself is the mean of every item. Synthesised images slow the ITN down on real ones
        (held-out 2D Dice after 600 steps: 0.73 at 0 (400 steps), 0.35 at 0.2, 0.32 at 0.5), so 0.2.
    """

    def __init__(self, training: Sequence[Subject], validation: Sequence[Subject], label_names: dict[int, str],
                 affine: np.ndarray, *, ndim: int, spacing: float = 1.0, slab: int = 2, label_set: str = "seg4",
                 seg4_lookup: np.ndarray | None = None, synthetic_share: float = 0.2) -> None:
        self.training, self.validation, self.ndim = list(training), list(validation), ndim
        self.label_names, self.label_set = dict(label_names), label_set
        self.num_labels = max(self.label_names) + 1
        self.affine, self.spacing, self.slab = np.asarray(affine, dtype=np.float64), float(spacing), int(slab)
        self.synthetic_share = float(synthetic_share)
        lookup = np.arange(self.num_labels) if seg4_lookup is None else seg4_lookup
        self.seg4_lookup = torch.as_tensor(lookup, dtype=torch.int64)
        if not self.training:
            raise InputError("no labelled training subjects to build an atlas from")
        shapes = {tuple(s.labels.shape[2:]) for s in self.training + self.validation}
        if len(shapes) != 1:
            raise InputError(f"training and validation subjects lie on different grids {sorted(shapes)}")
        self.shape = shapes.pop()
        self.items = [(index, item) for index, subject in enumerate(self.training) for item in self._slices(subject)]

    def _slices(self, subject: Subject) -> list[int]:
        if self.ndim == 3 or len(subject) == 1:
            return [0]
        centre = min(BENCHMARK_SLICE, len(subject) - 1)
        return list(range(max(0, centre - self.slab), min(len(subject), centre + self.slab + 1)))

    @property
    def sources(self) -> list[str]:
        return [subject.name for subject in self.training]

    def draw(self, generator: torch.Generator) -> tuple[int, int]:
        """A random item: one with a synthesised image with probability ``synthetic_share`` (when both kinds
        exist), else one with a real image; uniform within each kind."""
        real = [item for item in self.items if self.is_real(item)]
        synthetic = [item for item in self.items if not self.is_real(item)]
        use_synthetic = torch.rand(1, generator=generator).item() < self.synthetic_share
        pool = (synthetic if use_synthetic else real) or real or synthetic
        return pool[int(torch.randint(len(pool), (1,), generator=generator))]

    def example(self, item: tuple[int, int], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The image and labels of an item: augmented with ``generator``, as stored without it.

        Label-only subjects get a synthesised image (from a seed fixed per item when not augmenting).

        Shapes
        ------
        image ``(1, 1, *S)`` float in [0, 1]; labels ``(1, 1, *S)`` int64.
        """
        index, slice_index = item
        subject = self.training[index]
        labels = subject.labels[slice_index: slice_index + 1].long()
        if subject.images is not None:
            image = subject.images[slice_index: slice_index + 1].float()
        else:
            seed = generator or torch.Generator().manual_seed(1000 * index + slice_index)
            image = synthesise_image(labels, seed, self.num_labels)
        if generator is None:
            return {"image": image, "labels": labels}
        image, labels = augment_pair_member(image, labels, generator, spacing=self.spacing)
        return {"image": image, "labels": labels}

    def is_real(self, item: tuple[int, int]) -> bool:
        """True when the item has a real image (synthesised images stay out of the atlas image)."""
        return self.training[item[0]].images is not None

    def initial_atlas(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``z^a_0``: the mean image (real images; all when there are none) and mean label one-hots.

        Shapes
        ------
        returns image ``(1, 1, *S)`` and label probabilities ``(1, L, *S)``.
        """
        real = [item for item in self.items if self.is_real(item)] or self.items
        image = torch.stack([self.example(item)["image"] for item in real]).mean(0)
        labels = torch.stack([one_hot(self.example(item)["labels"], self.num_labels) for item in self.items]).mean(0)
        return image, labels

    def validation_examples(self) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """``(name, image (1, 1, *S), seg4 labels (1, 1, *S))`` per held-out subject (benchmark slice in 2D)."""
        examples = []
        for subject in self.validation:
            index = min(BENCHMARK_SLICE, len(subject) - 1) if self.ndim == 2 else 0
            examples.append((subject.name, subject.images[index: index + 1], subject.labels[index: index + 1]))
        return examples

    def to_seg4(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels of the label set merged to seg4 (unchanged for seg4)."""
        return self.seg4_lookup.to(labels.device)[labels.long()]

    @classmethod
    def from_shared_data(cls, data_dir: str | Path, ndim: int, label_set: str = "seg4",
                         validation_subjects: Sequence[str] | None = None, label_maps: int = 15,
                         spacing: float | None = None, slab: int = 2, synthetic_share: float = 0.2
                         ) -> "AtlasTrainingData":
        """The training and validation subjects of ``label_set`` from the shared data (module docstring)."""
        from warpseg.learning.few_shot import default_validation_subjects, load_seg35

        data_dir = Path(data_dir)
        names = label_set_names(data_dir, label_set)
        spacing = float(spacing or TARGET_SPACING[ndim])
        if ndim == 2 and spacing != TARGET_SPACING[2]:
            raise InputError(f"2D atlases use the stacks' {TARGET_SPACING[2]} mm spacing; drop --spacing")
        held_out = tuple(validation_subjects or default_validation_subjects(label_set))
        if set(held_out) - set(REAL_SUBJECTS):
            raise InputError(f"unknown validation subjects {sorted(set(held_out) - set(REAL_SUBJECTS))}; "
                             f"choose from {REAL_SUBJECTS}")
        real = {name: load_real_subject(data_dir, name, ndim, spacing) for name in REAL_SUBJECTS}
        if label_set == "seg35":
            if "vxm" in held_out:
                raise InputError("vxm is the only real seg35 subject and cannot be held out; validate on subjY")
            training = [Subject("vxm", real["vxm"].images, load_seg35(data_dir, "vxm", ndim, spacing))]
            convert = partial(aseg_to_seg35, data_dir=data_dir)
        else:
            training = [subject for name, subject in real.items() if name not in held_out]
            convert = None
        training += load_label_maps(data_dir, ndim, label_maps, spacing, convert=convert)
        affine = atlas_affine(data_dir, ndim, spacing, training[0].name)
        return cls(training, [real[name] for name in held_out], names, affine, ndim=ndim, spacing=spacing,
                   slab=slab, label_set=label_set, seg4_lookup=to_seg4_lookup(data_dir, label_set),
                   synthetic_share=synthetic_share)


def atlas_affine(data_dir: Path, ndim: int, spacing: float, subject: str) -> np.ndarray:
    """The voxel-to-world matrix of the training grid: in 2D the subject's stack at the benchmark slice,
    in 3D its volume resampled to ``spacing`` mm and padded as :func:`~warpseg.learning.data.downsample` does."""
    import nibabel as nib

    from warpseg.learning.preprocess import Preprocessing, plan_grid

    if ndim == 2:
        affine = nib.load(str(data_dir / f"oasis2d/{subject}_stack_z090-130_norm.nii.gz")).affine.copy()
        affine[:3, 3] += affine[:3, 2] * BENCHMARK_SLICE
        return affine
    image = nib.load(str(data_dir / f"oasis3d/{subject}_aligned_norm.nii.gz"))
    grid = plan_grid(image.shape, image.header.get_zooms()[:3], Preprocessing(target_spacing=spacing))
    return model_grid_affine(image.affine, grid)


def model_grid_affine(affine: np.ndarray, grid) -> np.ndarray:
    """The voxel-to-world matrix of a model grid (:class:`~warpseg.learning.preprocess.GridMap`) whose
    native grid has ``affine``: resized with aligned corners, then padded by ``grid.pad_before``."""
    result = np.asarray(affine, dtype=np.float64).copy()
    for axis, (native, resized, before) in enumerate(zip(grid.native_shape, grid.resized_shape, grid.pad_before)):
        step = (native - 1) / (resized - 1) if resized > 1 else 1.0
        result[:3, axis] = affine[:3, axis] * step
        result[:3, 3] -= result[:3, axis] * before
    return result


def aseg_to_seg35(aseg: np.ndarray, data_dir: Path) -> np.ndarray:
    """FreeSurfer aseg IDs to seg35 by ``labels/aseg_to_seg35.tsv``.

    ``direct`` rows map by lookup; ``nearest_of`` rows take the label of the nearest voxel holding one
    of their candidates (``*``: any non-zero seg35 label); IDs not in the table become 0.
    """
    from scipy.ndimage import distance_transform_edt

    with (Path(data_dir) / "labels" / "aseg_to_seg35.tsv").open() as stream:
        rows = list(csv.DictReader(stream, delimiter="\t"))
    lookup, pending = np.zeros(1024, dtype=np.int64), {}
    for row in rows:
        if row["rule"] == "direct":
            lookup[int(row["aseg_id"])] = int(row["seg35_id"])
        else:
            pending.setdefault(row["seg35_id"], []).append(int(row["aseg_id"]))
    ids = np.asarray(aseg, dtype=np.int64).clip(0, len(lookup) - 1)
    seg35 = lookup[ids]
    for candidates, aseg_ids in pending.items():
        where = np.isin(ids, aseg_ids)
        if not where.any():
            continue
        allowed = seg35 > 0 if candidates == "*" else np.isin(seg35, [int(c) for c in candidates.split("|")])
        corners = np.argwhere(where)
        box = tuple(slice(max(0, low - NEAREST_MARGIN), high + NEAREST_MARGIN + 1)
                    for low, high in zip(corners.min(0), corners.max(0)))
        if not allowed[box].any():
            continue
        _, nearest = distance_transform_edt(~allowed[box], return_indices=True)
        region = seg35[box]
        region[where[box]] = region[tuple(nearest)][where[box]]
    return seg35
