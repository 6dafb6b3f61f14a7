"""Label schemes of the shared data and conversions between them."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

SEG4_NAMES = {1: "Cortex", 2: "Subcortical-Gray-Matter", 3: "White-Matter", 4: "CSF"}
UNRESOLVED_ASEG_SEG4 = 3  # '*' rules (hypointensities) lie in white matter


def aseg_to_seg4_lookup(data_dir: Path) -> np.ndarray:
    """A lookup array ``seg4 = lookup[aseg]`` built from the shared tables (unknown IDs -> 0).

    ``nearest_of`` rules whose candidates share one seg4 class take it; '*' rules take white matter.
    """
    tables = Path(data_dir) / "labels"
    seg35_to_seg4 = {int(row["seg35_id"]): int(row["seg4_id"]) for row in _rows(tables / "seg35_to_seg4.tsv")}
    lookup = np.zeros(1024, dtype=np.uint8)
    for row in _rows(tables / "aseg_to_seg35.tsv"):
        candidates = row["seg35_id"].split("|")
        classes = {seg35_to_seg4[int(c)] for c in candidates if c != "*"}
        lookup[int(row["aseg_id"])] = classes.pop() if len(classes) == 1 else UNRESOLVED_ASEG_SEG4
    return lookup


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as stream:
        return list(csv.DictReader(stream, delimiter="\t"))


LABEL_SETS = ("seg4", "seg35")
"""Label sets a segmentation network can be trained on (``labels/<set>_labels.txt`` in the shared data)."""


def label_set_names(data_dir: Path, label_set: str) -> dict[int, str]:
    """``{id: name}`` of a label set, background (0) included, from ``labels/<set>_labels.txt``."""
    from warpseg.errors import InputError

    if label_set not in LABEL_SETS:
        raise InputError(f"unknown label set {label_set!r}; choose one of: {', '.join(LABEL_SETS)}")
    path = Path(data_dir) / "labels" / f"{label_set}_labels.txt"
    if not path.is_file():
        raise InputError(f"{path}: label names not found; pass --data ../shared/data")
    names = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and not parts[0].startswith("#"):
            names[int(parts[0])] = parts[1]
    return names


def to_seg4_lookup(data_dir: Path, label_set: str) -> np.ndarray:
    """A lookup ``seg4 = lookup[labels]`` from a label set to the 4 tissue classes (identity for seg4)."""
    if label_set == "seg4":
        return np.arange(5, dtype=np.int64)
    table = {int(row["seg35_id"]): int(row["seg4_id"]) for row in _rows(Path(data_dir) / "labels" / "seg35_to_seg4.tsv")}
    lookup = np.zeros(max(table) + 1, dtype=np.int64)
    for seg35, seg4 in table.items():
        lookup[seg35] = seg4
    return lookup
