"""Writing a registration's outputs to a folder, all or nothing."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from warpseg.engine.result import RegistrationResult
from warpseg.io.displacement import write_itk_displacement
from warpseg.io.write import write_volume


def write_result(result: RegistrationResult, out_dir: str | Path) -> list[Path]:
    """Write the register contract's files into ``out_dir``; nothing appears there on failure.

    Files: ``warped.nii.gz``, ``warped_labels.nii.gz`` (with moving labels),
    ``displacement.nii.gz`` (ITK convention; 2D also ``displacement.mha``), ``jacobian.nii.gz``,
    ``result.json`` and, for methods that also segment, ``<name>.nii.gz`` per segmentation (e.g.
    ``moving_segmentation``, ``fixed_segmentation``, with ``.labels.json`` label names). They are written to a temporary folder beside ``out_dir`` and moved
    into place at the end; other files already in ``out_dir`` are left alone.
    """
    return write_atomically(lambda folder: _write_all(result, folder), out_dir)


def write_atomically(write_all: Callable[[Path], None], out_dir: str | Path) -> list[Path]:
    """Run ``write_all(staging)`` in a temporary folder beside ``out_dir``, then move its files in.

    A failure leaves ``out_dir`` as it was; other files already in ``out_dir`` are left alone.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        write_all(staging)
        out_dir.mkdir(exist_ok=True)
        written = []
        for path in sorted(staging.iterdir()):
            os.replace(path, out_dir / path.name)
            written.append(out_dir / path.name)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_all(result: RegistrationResult, folder: Path) -> None:
    write_volume(result.warped, folder / "warped.nii.gz")
    if result.warped_labels is not None:
        write_volume(result.warped_labels, folder / "warped_labels.nii.gz")
    write_itk_displacement(result.displacement, result.fixed, folder / "displacement.nii.gz")
    if result.fixed.ndim == 2:
        write_itk_displacement(result.displacement, result.fixed, folder / "displacement.mha")
    write_volume(result.jacobian, folder / "jacobian.nii.gz")
    for name, segmentation in result.segmentations.items():  # label names go to <name>.labels.json
        write_volume(segmentation, folder / f"{name}.nii.gz")
    (folder / "result.json").write_text(json.dumps(result.summary(), indent=2, default=json_default) + "\n")


def json_default(value):
    """JSON fallback for numpy scalars and paths."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)
