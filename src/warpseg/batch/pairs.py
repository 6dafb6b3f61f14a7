"""The pairs CSV of a batch: one registration per row, each with an id that names its output folder."""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warpseg.errors import InputError

REQUIRED_COLUMNS = ("moving", "fixed")
OPTIONAL_COLUMNS = ("moving_labels", "fixed_labels", "id")
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
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such pairs file; give a CSV with columns moving,fixed")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [name.strip() for name in reader.fieldnames or []]
        check_columns(path, columns)
        rows = [row_from_record(path.parent, {k.strip(): (v or "").strip() for k, v in record.items() if k})
                for record in reader if any((value or "").strip() for value in record.values())]
    if not rows:
        raise InputError(f"{path}: no pairs listed; add one row per registration under the header moving,fixed")
    check_unique_ids(path, rows)
    return rows


def check_columns(path: Path, columns: list[str]) -> None:
    """An error naming the missing or unknown columns of the header."""
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    unknown = [name for name in columns if name not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if missing or unknown:
        raise InputError(f"{path}: header must be moving,fixed[,moving_labels,fixed_labels,id]; "
                         f"missing {missing or 'nothing'}, unknown {unknown or 'nothing'}")


def row_from_record(folder: Path, record: dict[str, str]) -> PairRow:
    """A :class:`PairRow` from one CSV record, its paths made absolute."""
    def resolve(name: str) -> str | None:
        value = record.get(name, "")
        return str((folder / value).resolve()) if value else None

    if not record.get("moving") or not record.get("fixed"):
        raise InputError(f"a row of the pairs file lacks moving or fixed: {record}")
    moving, fixed = resolve("moving"), resolve("fixed")
    name = record.get("id") or f"{file_stem(moving)}_to_{file_stem(fixed)}"
    return PairRow(safe_id(name), moving, fixed, resolve("moving_labels"), resolve("fixed_labels"))


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


def check_unique_ids(path: Path, rows: list[PairRow]) -> None:
    """An error listing the ids used by more than one row."""
    seen, repeated = set(), []
    for row in rows:
        if row.id in seen:
            repeated.append(row.id)
        seen.add(row.id)
    if repeated:
        raise InputError(f"{path}: ids used by more than one row: {', '.join(sorted(set(repeated)))}; "
                         "add an id column with one unique name per row")
