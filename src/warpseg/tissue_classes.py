"""The three brain tissue classes, the common ground of label sets that name their IDs differently.

A seg4 segmentation (cortex, subcortical grey matter, white matter, CSF) and a reference in CSF /
grey matter / white matter (FSL FAST, SPM, the sample pair) cannot be compared ID by ID, but both
merge into the tissue classes by name. Only label maps whose every named structure is known here
are merged; anything else stays unmerged (and its Dice is flagged as comparing different structures).
"""
from __future__ import annotations

import numpy as np

TISSUE_NAMES = {1: "CSF", 2: "grey matter", 3: "white matter"}

_TISSUE_OF_NAME = {
    "background": 0, "unknown": 0,
    "csf": 1, "cerebrospinalfluid": 1,
    "greymatter": 2, "graymatter": 2, "gm": 2, "cortex": 2, "cerebralcortex": 2,
    "subcorticalgraymatter": 2, "subcorticalgreymatter": 2, "deepgreymatter": 2, "deepgraymatter": 2,
    "whitematter": 3, "wm": 3, "cerebralwhitematter": 3,
}


def name_key(name: str) -> str:
    """A label name compared without case, spaces or punctuation."""
    return "".join(character for character in name.lower() if character.isalnum())


def tissue_lookup(names: dict[int, str] | None) -> np.ndarray | None:
    """``tissue = lookup[labels]`` for a label map named ``{id: name}``; None unless every name is known."""
    if not names or any(name_key(name) not in _TISSUE_OF_NAME for name in names.values()):
        return None
    lookup = np.zeros(max(int(label) for label in names) + 1, dtype=np.uint8)
    for label, name in names.items():
        lookup[int(label)] = _TISSUE_OF_NAME[name_key(name)]
    return lookup


def as_tissue_classes(labels: np.ndarray, lookup: np.ndarray) -> np.ndarray:
    """Merge a label map into tissue classes (IDs beyond the named ones become background)."""
    labels = np.asarray(labels)
    inside = (labels >= 0) & (labels < len(lookup))
    return np.where(inside, lookup[np.clip(labels, 0, len(lookup) - 1)], 0).astype(np.uint8)
