"""The segmentation pipeline: one contract for every segmentation method, headless, as a generator."""
from __future__ import annotations

import json
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from warpseg.engine.outputs import json_default, write_atomically
from warpseg.engine.validate import check_image, check_labels
from warpseg.errors import GeometryError, InputError
from warpseg.io.volume import Volume
from warpseg.io.write import write_volume
from warpseg.methods import Progress, get_segmenter
from warpseg.methods.segmenter import SEGMENTATIONS_KEY


@dataclass
class SegmentationResult:
    """A label map on the image's grid (with label names), scores against a reference, timings.

    ``segmentations`` holds further label maps a method reports beside its main one (e.g. Atlas-ISTN's
    ``itn_segmentation``), on the image's grid; with a reference, ``metrics["segmentations"]`` scores them.
    """

    method: str
    image: Volume
    segmentation: Volume
    metrics: dict[str, Any]
    seconds: float
    device: str = "cpu"
    weights: str | None = None
    partial: bool = False
    details: dict[str, Any] = field(default_factory=dict)
    segmentations: dict[str, Volume] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """What ``result.json`` holds."""
        names = self.segmentation.label_names or {}
        return {"method": self.method, "weights": self.weights, "device": self.device, "partial": self.partial,
                "seconds": round(self.seconds, 4), "label_names": {str(k): v for k, v in sorted(names.items())},
                **self.metrics, "details": self.details}


SegmentationJob = Generator[Progress, None, SegmentationResult]


def segment(image: Volume, method: str, *, atlas: tuple[Volume, Volume] | None = None,
            reference: Volume | None = None, weights: str | None = None, device: str = "auto",
            options: dict[str, Any] | None = None) -> SegmentationJob:
    """Segment ``image`` with the named method; with a ``reference`` label map, score it (Dice, HD95).

    A generator: it yields :class:`Progress` records and returns a :class:`SegmentationResult` on
    the image's grid. Closing it cancels the work.
    """
    from warpseg.engine.register import resolve_device, weights_and_options

    started = time.perf_counter()
    check_image(image, "image")
    if reference is not None:
        check_labels(reference, image, "reference")
    method_class = get_segmenter(method)
    if method_class.needs_atlas:
        check_atlas(atlas, image)
    device = resolve_device(device)
    weights, options = weights_and_options(weights, options)
    output = yield from method_class(weights=weights, **options).run(image, atlas=atlas, device=device)
    labels = np.asarray(output.labels)
    if labels.shape != image.shape:
        raise RuntimeError(f"{method} returned labels of shape {labels.shape} for an image of shape {image.shape}")
    segmentation = Volume(labels, image.affine, is_labels=True, label_names=output.label_names)
    details = dict(output.details)
    others = {name: Volume(np.asarray(array), image.affine, is_labels=True, label_names=names)
              for name, (array, names) in details.pop(SEGMENTATIONS_KEY, {}).items()}
    metrics: dict[str, Any] = {}
    if reference is not None:
        metrics = score_against(segmentation, reference)
        if others:
            metrics["segmentations"] = {name: score_against(volume, reference) for name, volume in others.items()}
    return SegmentationResult(method, image, segmentation, metrics, time.perf_counter() - started, device,
                              weights, output.partial, details, others)


def score_against(segmentation: Volume, reference: Volume) -> dict[str, Any]:
    """Dice, HD95 and ASD of a label map against a reference on its grid (by tissue class too, when
    the two name their labels differently; see :func:`warpseg.metrics.segmentation_metrics`)."""
    from warpseg.metrics import segmentation_metrics

    return segmentation_metrics(segmentation.array, segmentation.label_names, reference.array,
                                reference.label_names, tuple(float(s) for s in segmentation.spacing))


def check_atlas(atlas: tuple[Volume, Volume] | None, image: Volume) -> None:
    """An atlas is an image and a label map on its grid, of the image's dimensionality."""
    if atlas is None:
        raise InputError("this method needs an atlas: an image and its label map (--atlas, --atlas-labels)")
    atlas_image, atlas_labels = atlas
    check_image(atlas_image, "atlas")
    check_labels(atlas_labels, atlas_image, "atlas")
    if atlas_image.ndim != image.ndim:
        raise GeometryError(f"the atlas is {atlas_image.ndim}D but the image is {image.ndim}D; "
                            "give an atlas of the same dimensionality")


def write_segmentation(result: SegmentationResult, out_dir: str | Path) -> list[Path]:
    """Write ``segmentation.nii.gz`` (+ ``segmentation.labels.json``), ``<name>.nii.gz`` for every further
    segmentation, and ``result.json``, all or nothing."""
    def write_all(folder: Path) -> None:
        write_volume(result.segmentation, folder / "segmentation.nii.gz")
        for name, volume in result.segmentations.items():
            write_volume(volume, folder / f"{name}.nii.gz")
        (folder / "result.json").write_text(json.dumps(result.summary(), indent=2, default=json_default) + "\n")

    return write_atomically(write_all, out_dir)
