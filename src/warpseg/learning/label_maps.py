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
