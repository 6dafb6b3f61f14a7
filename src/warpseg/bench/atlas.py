"""How an atlas evolved while it was built: a per-epoch table and a figure of the snapshots.

Reads what ``warpseg atlas build`` wrote (``atlas_history.json`` and, with ``--snapshot-every``,
``atlas_image_epochNNN.nii.gz`` / ``atlas_labels_epochNNN.nii.gz``) and writes a section of
BENCHMARKS.md (``atlas-evolution`` unless told another, one per build) with its figure beside it.
"""
from __future__ import annotations

import json
from pathlib import Path

from warpseg.bench.report import replace_section
from warpseg.errors import InputError

TABLE_EVERY = 5  # epochs between two table rows (the first and last are always shown)


def report_atlas_evolution(build: Path, output: Path = Path("BENCHMARKS.md"), figure: Path | None = None,
                           section: str = "atlas-evolution") -> Path:
    """Write ``section`` and its figure (default ``docs/<section>.png``, dashes as underscores, beside ``output``)."""
    build = Path(build)
    history_file = build / "atlas_history.json"
    if not history_file.is_file():
        raise InputError(f"{build}: no atlas_history.json; give a folder written by `warpseg atlas build`")
    history = json.loads(history_file.read_text())
    figure = figure or Path(output).parent / "docs" / f"{section.replace('-', '_')}.png"
    snapshots = sorted(build.glob("atlas_image_epoch*.nii.gz"))
    if snapshots:
        draw_snapshots(snapshots, figure)
    replace_section(Path(output), section, render(build, history, figure if snapshots else None, output))
    return figure


def draw_snapshots(images: list[Path], figure: Path) -> None:
    """One column per snapshot: the atlas image above, its label map over it below (2D atlases)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from warpseg.io import read_volume

    columns = len(images)
    fig, axes = plt.subplots(2, columns, figsize=(2.2 * columns, 5.0), squeeze=False)
    for column, image_path in enumerate(images):
        epoch = image_path.name.split("epoch")[1].split(".")[0]
        image = np.asarray(read_volume(image_path, labels=False).array, dtype=float)
        labels_path = image_path.with_name(image_path.name.replace("atlas_image", "atlas_labels"))
        labels = np.asarray(read_volume(labels_path, labels=True).array)
        if image.ndim == 3:  # a 3D atlas: its middle axial slice
            middle = image.shape[2] // 2
            image, labels = image[..., middle], labels[..., middle]
        for row in (0, 1):
            axis = axes[row, column]
            axis.imshow(np.rot90(image), cmap="gray")
            if row == 1:  # seg4 in tab10's distinct colours; more labels (seg35) on a continuous map
                top = max(9, int(labels.max()))
                axis.imshow(np.rot90(np.ma.masked_equal(labels, 0)), cmap="tab10" if top == 9 else "nipy_spectral",
                            alpha=0.5, vmin=0, vmax=top, interpolation="nearest")
            axis.set_axis_off()
        axes[0, column].set_title(f"epoch {int(epoch)}")
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=80)
    plt.close(fig)


def render(build: Path, history: list[dict], figure: Path | None, output: Path) -> str:
    """The Markdown section: sharpness and held-out Dice per epoch, and the figure."""
    last = history[-1]["epoch"]
    rows = [record for record in history if record["epoch"] % TABLE_EVERY == 0 or record["epoch"] in (1, last)]
    lines = [
        f"## Atlas evolution (Atlas-ISTN, `{build.name}`)",
        "",
        "Written by `warpseg bench --atlas-build DIR` from the build's `atlas_history.json`. Sharpness: mean gradient "
        "magnitude of the atlas image (higher: sharper) and mean voxel entropy of the atlas label probabilities (lower: "
        "crisper label boundaries). Held-out Dice on the validation subject: the atlas labels warped into it in one "
        "pass (no refinement), and the ITN's own segmentation.",
        "",
        "| epoch | image gradient | label entropy | Dice, atlas one pass | Dice, ITN |",
        "|---|---|---|---|---|",
    ]
    for record in rows:
        lines.append(f"| {record['epoch']} | {record['gradient_magnitude']:.4f} | {record['label_entropy']:.4f} | "
                     f"{record.get('dice', float('nan')):.3f} | {record.get('itn_dice', float('nan')):.3f} |")
    if figure is not None:
        relative = Path(figure).resolve().relative_to(Path(output).resolve().parent)
        lines += ["", f"![atlas image and labels every few epochs]({relative.as_posix()})"]
    return "\n".join(lines) + "\n"
