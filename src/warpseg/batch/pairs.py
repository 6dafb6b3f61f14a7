"""The CSV of a batch: one registration (pairs) or segmentation (images) per row, each with an id
that names its output folder."""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warpseg.errors import InputError

REQUIRED_COLUMNS = ("moving", "fixed")
OPTIONAL_COLUMNS = ("moving_labels", "fixed_labels", "id")
IMAGE_REQUIRED_COLUMNS = ("image",)
IMAGE_OPTIONAL_COLUMNS = ("atlas", "atlas_labels", "labels", "id")
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")


@dataclass(frozen=True)
class PairRow:
    """One row of the pairs CSV with absolute paths; ``id`` is the name of its output folder."""

    id: str
    moving: str
    fixed: str
    moving_labels: str | None = None
    fixed_labels: str | None = None


@dataclass(frozen=True)
class ImageRow:
    """One row of an images CSV (a segmentation), absolute paths; ``labels`` is the reference to score."""

    id: str
    image: str
    atlas: str | None = None
    atlas_labels: str | None = None
    labels: str | None = None


@dataclass(frozen=True)
class BatchJob:
    """What every row of a batch runs: the method, its options, weights and device."""

    method: str
    options: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    device: str = "auto"


def read_pairs(path: str | Path) -> list[PairRow]:
    """The rows of a pairs CSV; relative paths are taken from the CSV's folder.

    Columns: ``moving,fixed`` and optionally ``moving_labels,fixed_labels,id``. Without an ``id``
    a row is named ``<moving>_to_<fixed>`` after the file names; ids must be unique.
    """
    def row(folder: Path, record: dict[str, str]) -> PairRow:
        moving, fixed = resolve(folder, record, "moving"), resolve(folder, record, "fixed")
        name = record.get("id") or f"{file_stem(moving)}_to_{file_stem(fixed)}"
        return PairRow(safe_id(name), moving, fixed, resolve(folder, record, "moving_labels"),
                       resolve(folder, record, "fixed_labels"))

    return read_rows(path, REQUIRED_COLUMNS, OPTIONAL_COLUMNS, row, "registration")


def read_images(path: str | Path) -> list[ImageRow]:
    """The rows of an images CSV (relative paths from its folder): ``image`` and optionally
    ``atlas,atlas_labels`` (atlas-based methods), ``labels`` (a reference: Dice in the summary), ``id``.
    Without an ``id`` a row is named after its image file."""
    def row(folder: Path, record: dict[str, str]) -> ImageRow:
        image = resolve(folder, record, "image")
        atlas, atlas_labels = resolve(folder, record, "atlas"), resolve(folder, record, "atlas_labels")
        if (atlas is None) != (atlas_labels is None):
            raise InputError(f"row {record}: give both atlas and atlas_labels, or neither")
        return ImageRow(safe_id(record.get("id") or file_stem(image)), image, atlas, atlas_labels,
                        resolve(folder, record, "labels"))

    return read_rows(path, IMAGE_REQUIRED_COLUMNS, IMAGE_OPTIONAL_COLUMNS, row, "segmentation")


def read_rows(path: str | Path, required: tuple[str, ...], optional: tuple[str, ...], build, task: str) -> list:
    """The rows of a batch CSV built by ``build(folder, record)``; clear errors for a bad header,
    no rows, a row without its required columns and repeated ids."""
    path = Path(path)
    header = ",".join(required)
    if not path.is_file():
        raise InputError(f"{path}: no such file; give a CSV with columns {header}")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        check_columns(path, [name.strip() for name in reader.fieldnames or []], required, optional)
        records = [{k.strip(): (v or "").strip() for k, v in record.items() if k} for record in reader
                   if any((value or "").strip() for value in record.values())]
    rows = []
    for record in records:
        if not all(record.get(name) for name in required):
            raise InputError(f"a row of {path} lacks {' or '.join(required)}: {record}")
        rows.append(build(path.parent, record))
    if not rows:
        raise InputError(f"{path}: no rows listed; add one row per {task} under the header {header}")
    check_unique_ids(path, rows)
    return rows


def resolve(folder: Path, record: dict[str, str], name: str) -> str | None:
    """The absolute path in column ``name`` of ``record`` (relative to ``folder``), None when empty."""
    value = record.get(name, "")
    return str((folder / value).resolve()) if value else None


def check_columns(path: Path, columns: list[str], required: tuple[str, ...] = REQUIRED_COLUMNS,
                  optional: tuple[str, ...] = OPTIONAL_COLUMNS) -> None:
    """An error naming the missing or unknown columns of the header."""
    missing = [name for name in required if name not in columns]
    unknown = [name for name in columns if name not in required + optional]
    if missing or unknown:
        raise InputError(f"{path}: header must be {','.join(required)}[,{','.join(optional)}]; "
                         f"missing {missing or 'nothing'}, unknown {unknown or 'nothing'}")


def file_stem(path: str) -> str:
    """``/a/subj1_norm.nii.gz`` to ``subj1_norm``."""
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def safe_id(name: str) -> str:
    """``name`` usable as one folder name: characters other than letters, digits, ``.-_`` become ``_``."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name.strip())
    if not cleaned.strip("._"):
        raise InputError(f"row id {name!r} cannot name an output folder; use letters, digits, '-', '_'")
    return cleaned


def check_unique_ids(path: Path, rows: list) -> None:
    """An error listing the ids used by more than one row."""
    seen, repeated = set(), []
    for row in rows:
        if row.id in seen:
            repeated.append(row.id)
        seen.add(row.id)
    if repeated:
        raise InputError(f"{path}: ids used by more than one row: {', '.join(sorted(set(repeated)))}; "
                         "add an id column with one unique name per row")
