"""Segmentation benchmark: few-shot networks against atlas propagation, on held-out dev subjects.

Protocol, per label set (the one the few-shot networks are trained with, see ``learning/few_shot.py``):

* ``seg4``: atlas ``subjX`` (the first of the K = 5 labelled atlases), target ``vxm`` (held out).
* ``seg35``: atlas ``vxm`` (the only seg35 subject: 1-shot), target ``subjY`` (held out). ``subjY``
  has no seg35 truth, so every seg35 prediction is merged to seg4 (``labels/seg35_to_seg4.tsv``)
  and scored against its seg4 labels.

Atlas-based methods get the atlas image and labels; learned methods their shipped weights for the
label set (option ``labels``). With ``corrupt = N`` every target is also segmented as N corrupted
copies (Gaussian noise and a smooth multiplicative bias field, seeds 0..N-1), scored as their mean;
with more than one copy, each method's further segmentations (the ITN's, the network's) are compared
with its main one copy by copy. Topology: connected components per label of the prediction, beside
the atlas's count.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from warpseg.bench.pairs import default_data_dir
from warpseg.bench.report import machine_description, replace_section

PROTOCOL = {"seg4": ("subjX", ("vxm",)), "seg35": ("vxm", ("subjY",))}
"""``label set: (atlas subject, held-out target subjects)``."""
ATLAS_PROPAGATION_ROWS = ("atlas-propagation[registration=ants-syn]", "atlas-propagation[registration=sitk-demons]")
NOISE_STD, BIAS_AMPLITUDE = 0.05, 0.3
"""Corruption: noise std (image normalised to [0, 1]); bias field exp(+-amplitude), smooth over the image."""
STACK_SLICE = 19  # the 2D slice z=109 inside the 41-slice stacks


@dataclass(frozen=True)
class Target:
    """An image to segment with its seg4 truth; ``name`` says which subject and corruption (the table's
    column), ``seed`` which corrupted copy (None: the image itself)."""

    name: str
    image: object
    seg4: object
    seed: int | None = None


def default_segmentation_methods(ndim: int, label_set: str) -> list[str]:
    """The few-shot networks with shipped weights for ``label_set``, and atlas propagation."""
    from warpseg.methods import SEGMENTATION_METHODS

    learned = [name for name, method in SEGMENTATION_METHODS.items()
               if label_set in getattr(method, "label_sets", ()) and method(labels=label_set).has_weights_for(ndim)]
    return learned + list(ATLAS_PROPAGATION_ROWS)


def run_segmentation_benchmark(data_dir: Path | None, *, methods: list[str] | None = None, ndims=(2,),
                               label_sets=("seg4", "seg35"), corrupt: int = 0,
                               output: Path = Path("BENCHMARKS.md")) -> dict:
    """Segment the held-out targets (and ``corrupt`` corrupted copies of each) with each method; return the
    rows and write one section per table."""
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    tables = {}
    for ndim in ndims:
        for label_set in label_sets:
            atlas_name, target_names = PROTOCOL[label_set]
            atlas = load_atlas(data_dir, atlas_name, ndim, label_set)
            targets = [target for name in target_names for target in load_targets(data_dir, name, ndim, corrupt)]
            lookup = _seg4_lookup(data_dir, label_set)
            rows = {}
            for spec in methods or default_segmentation_methods(ndim, label_set):
                rows.update(_measure_method(spec, label_set, atlas, targets, lookup))
            tables[(ndim, label_set)] = rows
            spacings = {row["model_spacing"] for measured in rows.values() for row in measured} - {None}
            coarser = sorted(spacing for spacing in spacings if not np.allclose(targets[0].image.spacing, spacing))
            ceilings = {spacing: grid_ceiling(targets[0].seg4, spacing) for spacing in coarser}
            body = render_segmentation_table(ndim, label_set, atlas_name, atlas, rows, machine_description(), ceilings)
            replace_section(output, f"segment-{label_set}-{ndim}d", body)
    return tables


def _measure_method(spec: str, label_set: str, atlas, targets: list[Target], lookup: np.ndarray
                    ) -> dict[str, list[dict]]:
    """The rows of ``spec``, and of every further segmentation it reports (``"spec: name"``, e.g. the ITN's)."""
    from warpseg.bench.run import parse_variant
    from warpseg.methods import get_segmenter

    name, options = parse_variant(spec)
    method = get_segmenter(name)
    if label_set in getattr(method, "label_sets", ()):
        options.setdefault("labels", label_set)
    if not method.needs_atlas:  # warm-up: load the model once, not timed (and without a long test-time refinement)
        warm_up = {**options, "refine": 0} if "refine" in getattr(method, "defaults", {}) else options
        _segment(name, warm_up, targets[0], atlas, lookup, spec)
    rows: dict[str, list[dict]] = {}
    for target in targets:
        for label, row in _segment(name, options, target, atlas, lookup, spec).items():
            rows.setdefault(label, []).append(row)
    return rows


def _segment(name: str, options: dict, target: Target, atlas, lookup: np.ndarray, spec: str) -> dict[str, dict]:
    """``{row label: row}`` for the method's segmentation and every further one it returns."""
    from warpseg.engine import run_to_end, segment

    method_atlas = atlas if _needs_atlas(name) else None
    result = run_to_end(segment(target.image, name, atlas=method_atlas, device="auto", options=options))
    volumes = {spec: result.segmentation, **{f"{spec}: {key}": v for key, v in result.segmentations.items()}}
    rows = {}
    for label, volume in volumes.items():
        rows[label] = _score(volume, target, lookup, result)
        copy = "" if target.seed is None else f" #{target.seed}"
        print(f"[bench segment] {label:44s} {target.name + copy:21s} Dice {rows[label]['dice_mean']:.3f}  "
              f"{rows[label]['components']:.1f} components/label  {result.seconds:.2f}s", file=sys.stderr)
    return rows


def _score(volume, target: Target, lookup: np.ndarray, result) -> dict:
    from warpseg.metrics import label_metrics

    labels = np.asarray(volume.array)
    metrics = label_metrics(lookup[labels.astype(np.int64)], np.asarray(target.seg4.array),
                            tuple(float(s) for s in target.image.spacing))
    return {"target": target.name, "seed": target.seed, "seconds": result.seconds, "device": result.device,
            "dice_mean": metrics["dice_mean"], "hd95_mean": metrics["hd95_mean"],
            "components": components_per_label(labels), "model_spacing": result.details.get("model_spacing")}


def grid_ceiling(truth, spacing: float) -> float:
    """Dice of the truth itself after a round trip through a model grid of ``spacing`` mm.

    The one-hot labels are resized onto that grid linearly and brought back as a network's
    probabilities are (:func:`~warpseg.methods.learned_inference.labels_to_native_grid`): no model
    that labels on that grid can be expected to score higher.
    """
    import torch
    import torch.nn.functional as F

    from warpseg.learning.preprocess import Preprocessing, image_to_model_grid, plan_grid
    from warpseg.methods.learned_inference import labels_to_native_grid
    from warpseg.metrics import dice_per_label

    labels = np.asarray(truth.array, dtype=np.int64)
    grid = plan_grid(labels.shape, tuple(float(s) for s in truth.spacing), Preprocessing(target_spacing=spacing))
    one_hot = F.one_hot(torch.as_tensor(labels)).movedim(-1, 0)[None].float()
    back = labels_to_native_grid(torch.log(image_to_model_grid(one_hot, grid).clamp_min(1e-6)), grid)
    return float(np.mean(list(dice_per_label(back, labels).values())))


def _needs_atlas(name: str) -> bool:
    from warpseg.methods import get_segmenter

    return get_segmenter(name).needs_atlas


def components_per_label(labels: np.ndarray) -> float:
    """Mean number of connected components (full connectivity) over the foreground labels present."""
    from scipy import ndimage

    present = [value for value in np.unique(labels) if value != 0]
    if not present:
        return float("nan")
    structure = np.ones((3,) * labels.ndim, dtype=bool)
    return float(np.mean([ndimage.label(labels == value, structure)[1] for value in present]))


def load_atlas(data_dir: Path, subject: str, ndim: int, label_set: str):
    """The atlas ``(image, labels)`` volumes of ``subject`` in ``label_set``."""
    from warpseg.io import Volume, read_volume

    image = read_volume(data_dir / _image_file(subject, ndim), labels=False)
    if label_set == "seg4":
        return image, read_volume(data_dir / _seg4_file(subject, ndim), labels=True)
    from warpseg.learning.label_maps import label_set_names

    if ndim == 3:
        labels = read_volume(data_dir / f"oasis3d/{subject}_aligned_seg35.nii.gz", labels=True)
    else:
        stack = read_volume(data_dir / f"oasis2d/{subject}_stack_z090-130_seg35.nii.gz", labels=True)
        labels = Volume(np.asarray(stack.array)[..., STACK_SLICE], image.affine, is_labels=True)
    names = {key: value for key, value in label_set_names(data_dir, label_set).items() if key}
    return image, Volume(labels.array, labels.affine, is_labels=True, label_names=names)


def load_targets(data_dir: Path, subject: str, ndim: int, corrupt: int) -> list[Target]:
    """The subject's image with its seg4 truth, and ``corrupt`` corrupted copies of it (seeds 0, 1, ...)."""
    from warpseg.io import read_volume

    image = read_volume(data_dir / _image_file(subject, ndim), labels=False)
    seg4 = read_volume(data_dir / _seg4_file(subject, ndim), labels=True)
    targets = [Target(subject, image, seg4)]
    return targets + [Target(f"{subject}+noise+bias", corrupted(image, seed), seg4, seed) for seed in range(corrupt)]


def corrupted(image, seed: int = 0):
    """A copy of ``image`` with a smooth multiplicative bias field and Gaussian noise (module constants).

    The bias is ``exp(a * b(x))`` with ``b`` a 4-knots-per-axis random field, cubic-interpolated over
    the image and scaled to [-1, 1]; the noise std is relative to the image's intensity range.
    """
    from scipy import ndimage

    from warpseg.io import Volume

    rng = np.random.default_rng(seed)
    array = np.asarray(image.array, dtype=np.float32)
    knots = rng.standard_normal((4,) * array.ndim)
    field = ndimage.zoom(knots, [size / 4 for size in array.shape], order=3)[tuple(slice(0, s) for s in array.shape)]
    field = field / (np.abs(field).max() + 1e-8)
    span = float(array.max() - array.min()) or 1.0
    noisy = array * np.exp(BIAS_AMPLITUDE * field) + rng.normal(0.0, NOISE_STD * span, array.shape)
    return Volume(noisy.astype(np.float32), image.affine, is_labels=False)


def _image_file(subject: str, ndim: int) -> str:
    return f"oasis2d/{subject}_slice_norm.nii.gz" if ndim == 2 else f"oasis3d/{subject}_aligned_norm.nii.gz"


def _seg4_file(subject: str, ndim: int) -> str:
    return f"oasis2d/{subject}_slice_seg4.nii.gz" if ndim == 2 else f"oasis3d/{subject}_aligned_seg4.nii.gz"


def _seg4_lookup(data_dir: Path, label_set: str) -> np.ndarray:
    from warpseg.learning.label_maps import to_seg4_lookup

    return to_seg4_lookup(data_dir, label_set)


def render_segmentation_table(ndim: int, label_set: str, atlas_name: str, atlas, rows: dict[str, list[dict]],
                              machine: str, ceilings: dict[float, float] | None = None) -> str:
    """A Markdown section: Dice (seg4 scale) per target kind, topology and time per method; ``ceilings``
    (:func:`grid_ceiling` of the first target by model grid spacing) as a sentence; with several corrupted
    copies, their mean ± sd and each method's main segmentation against its further ones, copy by copy."""
    import datetime

    kinds = sorted({row["target"] for measured in rows.values() for row in measured}, key=len)
    copies = max(sum(row["seed"] is not None for row in measured) for measured in rows.values()) if rows else 0
    atlas_components = components_per_label(np.asarray(atlas[1].array))
    merged = " merged to seg4" if label_set != "seg4" else ""
    several = (f" Corrupted: mean ± sd over {copies} copies (noise and bias field drawn with seeds 0 to "
               f"{copies - 1})." if copies > 1 else "")
    lines = [
        f"## Segmentation, {ndim}D, {label_set} (atlas {atlas_name}, held-out target{'s' if len(kinds) > 1 else ''} "
        f"{', '.join(kinds)})",
        "",
        f"Run {datetime.date.today().isoformat()} on {machine}. Dice: mean over the seg4 classes of the target's "
        f"truth (predictions{merged or ' in seg4'}); components: connected components per predicted label "
        f"(the atlas: {atlas_components:.1f}); time: the whole segmentation job per image (atlas propagation "
        "includes its registration)." + several + ceiling_sentence(ceilings or {}),
        "",
        "| method | " + " | ".join(f"Dice {kind}" for kind in kinds) + " | components / label | s / image |",
        "|---|" + "---|" * len(kinds) + "---|---|",
    ]
    for spec, measured in rows.items():
        dice = " | ".join(_dice_cell([row["dice_mean"] for row in measured if row["target"] == kind]) for kind in kinds)
        components = np.mean([row["components"] for row in measured])
        seconds = np.mean([row["seconds"] for row in measured])
        lines.append(f"| {spec} | {dice} | {components:.1f} | {seconds:.3f} |")
    if copies > 1:
        lines += ["", copy_by_copy_sentence(rows)]
    return "\n".join(lines) + "\n"


def _dice_cell(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{values[0]:.3f}" if len(values) == 1 else f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def copy_by_copy_sentence(rows: dict[str, list[dict]]) -> str:
    """Each method's segmentation minus each of its further ones (``"spec: name"`` rows) on the corrupted
    copies: mean ± sd of the difference, and on how many copies the main one scores at least as high."""
    comparisons = []
    for label, measured in rows.items():
        spec, _, further = label.partition(": ")
        if not further or spec not in rows:
            continue
        main = {row["seed"]: row["dice_mean"] for row in rows[spec] if row["seed"] is not None}
        other = {row["seed"]: row["dice_mean"] for row in measured if row["seed"] is not None}
        difference = np.array([main[seed] - other[seed] for seed in sorted(main.keys() & other.keys())])
        if difference.size:
            comparisons.append(f"{spec} − {further}: {difference.mean():+.3f} ± {difference.std():.3f}, at least as "
                               f"high on {int((difference >= 0).sum())} of {difference.size}")
    if not comparisons:
        return ""
    return ("Main segmentation against the method's other one on the same corrupted copies: "
            + "; ".join(comparisons) + ".")


def ceiling_sentence(ceilings: dict[float, float]) -> str:
    """`` Grid ceiling: ...`` for the coarse model grids of the learned rows (empty without any)."""
    if not ceilings:
        return ""
    each = "; ".join(f"{spacing:g} mm grid {dice:.3f}" for spacing, dice in ceilings.items())
    return (f" Grid ceiling (the truth itself resized to the learned models' grid and back, the most a model "
            f"labelling on that grid can score): {each}.")
