"""Keep the further real labelled atlases in NICE-Transeg checkpoints trained before they were kept.

Usage: python scripts/store_atlases.py --data ../shared/data CHECKPOINT [CHECKPOINT ...]
"""
import argparse
from pathlib import Path

from warpseg.learning.segmentation_training import store_further_atlases

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data", type=Path, required=True, help="the data folder the checkpoints were trained on")
parser.add_argument("checkpoints", type=Path, nargs="+")
arguments = parser.parse_args()
for checkpoint in arguments.checkpoints:
    print(f"{checkpoint}: atlases added: {', '.join(store_further_atlases(checkpoint, arguments.data)) or 'none'}")
