"""Few-shot segmentation data: K labelled atlases, unlabelled images, held-out validation subjects.

Which subjects count as labelled (the K "shots"), in this fixed order, validation subjects excluded:

* ``seg4``: the real training subjects (``subjX``, ``subjY``), then the SynthSeg label maps
  (``training_seg_01`` ...), whose images are synthesised from their labels at every step. K = 1 is
  subjX alone, K = 5 is subjX, subjY and three SynthSeg maps. Validation: ``vxm`` (default).
* ``seg35``: only ``vxm`` has seg35 labels, so K = 1 and the atlas is vxm. Held-out protocol: the
  validation subject (default ``subjY``) is never used in training, not even as an unlabelled image;
  it has no seg35 truth, so its seg35 prediction is merged to seg4 by the fixed table
  ``labels/seg35_to_seg4.tsv`` and scored against its real seg4 labels.

Unlabelled (fixed) images: every training subject's image (real images, and SynthSeg-synthesised
images half of the time); their labels are never used for a loss. In 2D every subject is its stack
of 41 axial slices (a labelled atlas is one subject's labelled stack), in 3D its volume.

Self-pairs: with one atlas (K = 1), a share of the steps (``self_pair_share``, 0 by default) pairs
the atlas with itself instead: another slice, differently augmented, with its labels. Otherwise
nothing labels the fixed side when K = 1, and NICE-Transeg's registration drifts below the identity
(its fixed branch learns only through the field). PC-Reg-RT does not read the fixed labels; for it
these are the pairs whose registration-made pseudo-labels are nearly right (the same anatomy).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from warpseg.errors import InputError
from warpseg.learning.augment import augment_pair_member, synthesise_image
from warpseg.learning.data import (
    BENCHMARK_SLICE, NUM_SEG4, REAL_SUBJECTS, TARGET_SPACING, Subject, _load, downsample, load_label_maps,
    load_real_subject,
)
from warpseg.learning.label_maps import label_set_names, to_seg4_lookup

DEFAULT_VALIDATION = {"seg4": ("vxm",), "seg35": ("subjY",)}
"""Held-out subjects of each label set unless a run names others."""
SEG35_SUBJECTS = ("vxm",)
VALIDATION_ATLASES = 2
"""Validation registers at most this many atlases (the first ones) to each held-out subject."""


def default_validation_subjects(label_set: str) -> tuple[str, ...]:
    """The held-out subjects of ``label_set`` (see the module docstring)."""
    return DEFAULT_VALIDATION.get(label_set, ("vxm",))


class FewShotData:
    """Draws (labelled atlas -> unlabelled image) training pairs and fixed validation pairs.

    Parameters
    ----------
    label_set : ``"seg4"`` or ``"seg35"``.
    shots : K, the number of labelled atlases (subjects; see the module docstring).
    validation_subjects : held-out real subjects (None: :func:`default_validation_subjects`).
    label_maps : SynthSeg label maps loaded (atlases for seg4, synthesised unlabelled images).
    self_pair_share : with one atlas, the share of pairs whose fixed image is the atlas itself.
    """

    @classmethod
    def from_config(cls, config) -> FewShotData:
        """The data a few-shot training run (a ``TrainingConfig``) asks for."""
        return cls(config.data, config.ndim, config.labels, config.shots, config.validation_subjects,
                   config.label_maps, spacing=config.spacing, self_pair_share=config.self_pairs)

    def __init__(self, data_dir: str | Path, ndim: int, label_set: str = "seg4", shots: int = 5,
                 validation_subjects=None, label_maps: int = 15, synthetic_share: float = 0.5,
                 spacing: float | None = None, self_pair_share: float = 0.0) -> None:
        self.data_dir, self.ndim, self.label_set, self.shots = Path(data_dir), ndim, label_set, int(shots)
        self.self_pair_share = float(self_pair_share)
        self.label_names = label_set_names(self.data_dir, label_set)
        self.num_labels = max(self.label_names) + 1
        self.seg4_lookup = torch.from_numpy(to_seg4_lookup(self.data_dir, label_set))
        self.spacing = float(spacing or TARGET_SPACING[ndim])
        held_out = tuple(validation_subjects or default_validation_subjects(label_set))
        self._check_subjects(held_out)
        real = {name: load_real_subject(self.data_dir, name, ndim, self.spacing) for name in REAL_SUBJECTS}
        self.validation = [real[name] for name in held_out]
        training_real = [subject for name, subject in real.items() if name not in held_out]
        synthetic = load_label_maps(self.data_dir, ndim, label_maps, self.spacing)
        self.atlases = self._pick_atlases(training_real, synthetic)
        self.real_pool = training_real
        self.synthetic_pool = synthetic
        self.synthetic_share = synthetic_share if synthetic else 0.0
        self.sources = [s.name for s in training_real + synthetic]

    def _check_subjects(self, held_out: tuple[str, ...]) -> None:
        unknown = set(held_out) - set(REAL_SUBJECTS)
        if unknown:
            raise InputError(f"unknown validation subjects {sorted(unknown)}; choose from {REAL_SUBJECTS}")
        if self.label_set == "seg35":
            if self.shots != 1:
                raise InputError(f"seg35 has one labelled subject ({SEG35_SUBJECTS[0]}): use --shots 1")
            if set(held_out) & set(SEG35_SUBJECTS):
                raise InputError("vxm is the only seg35 atlas and cannot be held out; validate on subjY "
                                 "(--validation-subjects subjY)")
        if self.shots < 1:
            raise InputError(f"--shots must be at least 1, got {self.shots}")

    def _pick_atlases(self, training_real: list[Subject], synthetic: list[Subject]) -> list[Subject]:
        """The K labelled subjects, labels in the label set (module docstring for the order)."""
        if self.label_set == "seg35":
            name = SEG35_SUBJECTS[0]
            image_subject = load_real_subject(self.data_dir, name, self.ndim, self.spacing)
            return [Subject(name, image_subject.images, load_seg35(self.data_dir, name, self.ndim, self.spacing))]
        candidates = training_real + synthetic
        if self.shots > len(candidates):
            raise InputError(f"--shots {self.shots} asks for more labelled subjects than the {len(candidates)} "
                             f"available ({', '.join(s.name for s in candidates)}); raise --label-maps or lower --shots")
        return candidates[:self.shots]

    @property
    def unlabelled_names(self) -> list[str]:
        """Subjects whose images serve as unlabelled fixed images (a sole atlas never does)."""
        sole_atlas = self.atlases[0].name if len(self.atlases) == 1 else None
        return [s.name for s in self.real_pool + self.synthetic_pool if s.name != sole_atlas]

    def sample(self, generator: torch.Generator) -> dict:
        """An augmented pair: ``moving`` a labelled atlas (with ``moving_labels``), ``fixed`` an unlabelled image.

        When the fixed image is one of the K labelled atlases too (another one, or another slice),
        its labels come as ``fixed_labels`` (registration may use them; nothing else is labelled).

        Shapes
        ------
        moving, fixed ``(1, 1, *S)`` float; moving_labels, fixed_labels ``(1, 1, *S)`` integer in the label set.
        """
        atlas = self.atlases[int(torch.randint(len(self.atlases), (1,), generator=generator))]
        fixed_subject = self._pick_fixed(atlas, generator)
        index = int(torch.randint(len(atlas), (1,), generator=generator))
        pair = {"subjects": (atlas.name, fixed_subject.name)}
        moving_image = self._image(atlas, index, generator)
        pair["moving"], pair["moving_labels"] = augment_pair_member(
            moving_image, atlas.labels[index: index + 1], generator, spacing=self.spacing)
        item = min(len(fixed_subject) - 1, max(0, index + int(torch.randint(-2, 3, (1,), generator=generator))))
        labelled = fixed_subject.name in {subject.name for subject in self.atlases}
        fixed_labels = fixed_subject.labels[item: item + 1] if labelled else None
        pair["fixed"], fixed_labels = augment_pair_member(self._image(fixed_subject, item, generator), fixed_labels,
                                                          generator, spacing=self.spacing)
        if fixed_labels is not None:
            pair["fixed_labels"] = fixed_labels
        return pair

    def _pick_fixed(self, atlas: Subject, generator: torch.Generator) -> Subject:
        """The sole atlas itself (``self_pair_share`` of the time, K = 1 only) or an unlabelled subject."""
        if self.self_pair_share > 0 and len(self.atlases) == 1:  # no extra draw otherwise: seeded runs stay as they were
            if torch.rand(1, generator=generator).item() < self.self_pair_share:
                return atlas
        return self._pick_unlabelled(atlas.name, generator)

    def _pick_unlabelled(self, atlas_name: str, generator: torch.Generator) -> Subject:
        synthetic = torch.rand(1, generator=generator).item() < self.synthetic_share
        pool = [s for s in (self.synthetic_pool if synthetic else self.real_pool) if s.name != atlas_name]
        if not pool:
            pool = [s for s in self.real_pool + self.synthetic_pool if s.name != atlas_name]
        if not pool:
            raise InputError("no unlabelled training image is left besides the atlas; raise --label-maps")
        return pool[int(torch.randint(len(pool), (1,), generator=generator))]

    @staticmethod
    def _image(subject: Subject, index: int, generator: torch.Generator) -> torch.Tensor:
        """The subject's image ``(1, 1, *S)``; synthesised from its seg4 labels when it has none."""
        if subject.images is not None:
            return subject.images[index: index + 1]
        return synthesise_image(subject.labels[index: index + 1], generator, NUM_SEG4)

    def validation_pairs(self) -> list[tuple[str, dict[str, torch.Tensor]]]:
        """The first atlases against every held-out subject (benchmark slice in 2D).

        ``fixed_seg4`` is the held-out subject's seg4 truth; ``moving_seg4`` the atlas labels merged
        to seg4. Synthetic atlases get a synthesised image from a fixed seed.
        """
        index = BENCHMARK_SLICE if self.ndim == 2 else 0
        pairs = []
        for held_out in self.validation:
            for atlas in self.atlases[:VALIDATION_ATLASES]:
                labels = atlas.labels[index: index + 1]
                pairs.append((f"{atlas.name}->{held_out.name}", {
                    "moving": self._image(atlas, index, torch.Generator().manual_seed(0)),
                    "fixed": held_out.images[index: index + 1], "moving_labels": labels,
                    "moving_seg4": self.to_seg4(labels), "fixed_seg4": held_out.labels[index: index + 1]}))
        return pairs

    def to_seg4(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels of the label set merged to seg4 (unchanged for seg4)."""
        return self.seg4_lookup.to(labels.device)[labels.long()]

    def atlas_record(self, index: int = 0) -> dict:
        """Labelled atlas ``index`` (image float16, labels uint8) for segmenting a single image at inference.

        Shapes
        ------
        image, labels: ``(N, 1, *S)``: the 41 slices in 2D, ``N = 1`` in 3D, on the training grid.
        """
        atlas = self.atlases[index]
        images = atlas.images
        if images is None:
            generator = torch.Generator().manual_seed(0)
            images = torch.cat([self._image(atlas, k, generator) for k in range(len(atlas))])
        return {"subject": atlas.name, "image": images.to(torch.float16),
                "labels": atlas.labels.to(torch.uint8 if self.num_labels <= 256 else torch.int16)}

    def further_atlas_records(self) -> list[dict]:
        """The other labelled atlases that are real images (SynthSeg atlases have synthesised ones only),
        for multi-atlas segmentation; see :meth:`atlas_record`."""
        return [self.atlas_record(index) for index in range(1, len(self.atlases))
                if self.atlases[index].images is not None]


def load_seg35(data_dir: Path, name: str, ndim: int, spacing: float) -> torch.Tensor:
    """A subject's seg35 labels on the training grid: ``(41, 1, H, W)`` in 2D, ``(1, 1, *S)`` in 3D."""
    if ndim == 2:
        labels = _load(data_dir / f"oasis2d/{name}_stack_z090-130_seg35.nii.gz").astype(np.int64)
        return torch.from_numpy(np.moveaxis(labels, -1, 0)[:, None].copy())
    labels = _load(data_dir / f"oasis3d/{name}_aligned_seg35.nii.gz").astype(np.int64)
    return downsample(torch.from_numpy(labels)[None, None], spacing, labels=True)
