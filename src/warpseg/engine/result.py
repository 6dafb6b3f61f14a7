"""The result every registration method produces, whatever it is."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from warpseg.io.displacement import displacement_in_world
from warpseg.io.volume import Volume


@dataclass
class RegistrationResult:
    """Warped image and labels, the displacement, its Jacobian, metrics, timings and provenance.

    Every array lives on the fixed image's grid and every :class:`Volume` carries its affine.

    Shapes
    ------
    displacement: ``(ndim, *S)`` in fixed voxel units; ``moving(x + u(x))`` is the warp.
    """

    method: str
    fixed: Volume
    warped: Volume
    displacement: np.ndarray
    jacobian: Volume
    metrics: dict[str, Any]
    seconds_registration: float
    seconds_total: float
    device: str = "cpu"
    weights: str | None = None
    warped_labels: Volume | None = None
    partial: bool = False
    details: dict[str, Any] = field(default_factory=dict)
    segmentations: dict[str, Volume] = field(default_factory=dict)
    """Label maps a method predicts besides the warp (NICE-Transeg: ``moving_segmentation`` on the
    moving image's grid, ``fixed_segmentation`` on the fixed grid), written as ``<name>.nii.gz``;
    ``metrics["segmentations"]`` scores each against its image's labels when those were given."""

    def displacement_mm(self) -> np.ndarray:
        """World (RAS) displacement vectors in mm, shape ``(*S, 3)``."""
        return displacement_in_world(self.displacement, self.fixed)

    def summary(self) -> dict[str, Any]:
        """What ``result.json`` holds: method, weights, device, timings and metrics."""
        return {
            "method": self.method,
            "weights": self.weights,
            "device": self.device,
            "partial": self.partial,
            "seconds_registration": round(self.seconds_registration, 4),
            "seconds_total": round(self.seconds_total, 4),
            **self.metrics,
            "details": self.details,
        }
