"""Write the napari-warpseg demo pairs (2D and 3D) as NIfTI files.

Usage: ``python sample_data/make_sample_data.py OUT_FOLDER [--seed N]``; writes
``OUT_FOLDER/pair2d/`` and ``OUT_FOLDER/pair3d/``, each with ``moving.nii.gz``,
``moving_labels.nii.gz``, ``fixed.nii.gz`` and ``fixed_labels.nii.gz``. The recipe is in
``README.md`` beside this script and in ``warpseg.samples``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from warpseg.samples import write_sample_pair


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where to write pair2d/ and pair3d/")
    parser.add_argument("--seed", type=int, default=0, help="selects the two subjects (default 0)")
    options = parser.parse_args(argv)
    for ndim in (2, 3):
        paths = write_sample_pair(ndim, options.folder / f"pair{ndim}d", seed=options.seed)
        for path in paths.values():
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
