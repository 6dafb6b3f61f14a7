"""Generating labelled images with a trained BRBS (space-style sampling), as a job.

Every generated image mixes the atlas's appearance with the targets' (pulled into atlas space by
the inverse fields) and warps it by an interpolation of the learned atlas-to-target velocities;
its labels are the atlas labels warped by the same field (:func:`~warpseg.models.brbs.space_style_sample`,
one uniform draw of weights per image).

Inputs: by default the checkpoint's atlas and its unlabelled training images (the training grid;
in 2D each image takes a random slice of the aligned 41-slice stacks), or a given atlas, its labels
and target images (resampled onto the atlas grid by their world geometry).

Outputs in ``out_dir``: ``generated_000_image.nii.gz`` and ``generated_000_labels.nii.gz`` (label
names in ``.labels.json``) per image, and ``generation.json`` (weights file, seed, draws). Files are
made in a work folder and moved in at the end: an error or a cancel leaves ``out_dir`` as it was.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from warpseg.errors import InputError
from warpseg.io.volume import Volume
from warpseg.methods.base import Progress


@dataclass
class GenerationSource:
    """Atlas, labels and targets on the model grid, and the output grid they map back to.

    Shapes
    ------
    atlas ``(N, 1, *P)``; labels ``(N, 1, *P)`` integer; targets ``(N, T, *P)``: N slices of aligned
    2D stacks (N = 1 otherwise), T target images, ``P`` the padded model grid of ``grid``.
    """

    atlas: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor
    grid: object  # GridMap between the output grid and the model grid
    affine: np.ndarray
    description: str

    def volumes(self, image: torch.Tensor, soft_labels: torch.Tensor, names) -> tuple[Volume, Volume]:
        """An image ``(1, 1, *P)`` and soft labels ``(1, L, *P)`` as volumes on the output grid."""
        from warpseg.learning.preprocess import labels_on_native_grid, probabilities_to_native_grid

        array = probabilities_to_native_grid(image, self.grid)[0, 0].cpu().numpy().astype(np.float32)
        labels = labels_on_native_grid(soft_labels, self.grid).cpu().numpy()
        labels = labels.astype(np.uint8 if soft_labels.shape[1] <= 256 else np.int16)
        return Volume(array, self.affine), Volume(labels, self.affine, is_labels=True, label_names=names)


def generate_labelled_images(weights: str | Path, count: int, out_dir: str | Path, *,
                             atlas: tuple[Volume, Volume] | None = None, images: Sequence[Volume] | None = None,
                             seed: int = 0, device: str = "auto") -> Generator[Progress, None, list[Path]]:
    """Write ``count`` generated (image, labels) pairs into ``out_dir``; yields :class:`Progress`.

    Returns the written paths. ``atlas`` (image, labels) and ``images`` (targets) go together;
    without them the checkpoint's own atlas and targets are used. Closing the generator cancels
    the job and writes nothing.
    """
    from warpseg.engine.outputs import write_atomically
    from warpseg.engine.register import resolve_device
    from warpseg.io.write import write_volume
    from warpseg.learning.checkpoint import load_checkpoint
    from warpseg.methods.learned_inference import checkpoint_label_names

    if count < 1:
        raise InputError(f"--n must be at least 1, got {count}")
    if (atlas is None) != (not images):
        raise InputError("give --atlas, --atlas-labels and --images together, or none of them (the checkpoint's)")
    device = resolve_device(device)
    model, checkpoint = load_checkpoint(weights, device)
    if checkpoint["model"]["class"] != "Brbs":
        raise InputError(f"{weights} holds a {checkpoint['method']} model; generating needs BRBS weights "
                         "(`warpseg train brbs ...`)")
    yield Progress("generate", 0, count, "preparing the atlas and the target images")
    source = source_from_volumes(atlas, images, checkpoint) if atlas else source_from_checkpoint(checkpoint, model)
    names, generator = checkpoint_label_names(checkpoint), torch.Generator().manual_seed(seed)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.work.", dir=out_dir.parent) as work:
        draws = []
        for index in range(count):
            image, soft_labels, draw = generate_one(model, source, generator, device)
            image_volume, label_volume = source.volumes(image, soft_labels, names)
            write_volume(image_volume, Path(work) / f"generated_{index:03d}_image.nii.gz")
            write_volume(label_volume, Path(work) / f"generated_{index:03d}_labels.nii.gz")
            draws.append(draw)
            yield Progress("generate", index + 1, count, f"generated image {index + 1} of {count}")
        record = {"weights": str(weights), "seed": seed, "count": count, "source": source.description, "draws": draws}
        (Path(work) / "generation.json").write_text(json.dumps(record, indent=2) + "\n")
        return write_atomically(lambda folder: _move_all(Path(work), folder), out_dir)


def generate_one(model, source: GenerationSource, generator: torch.Generator, device: str):
    """One space-style sample: image ``(1, 1, *P)``, soft labels ``(1, L, *P)`` and its draw."""
    from warpseg.models.brbs import SpaceStyleSampling, space_style_sample

    index = int(torch.randint(len(source.atlas), (1,), generator=generator))
    targets = source.targets[index][:, None].to(device)
    sampling = SpaceStyleSampling.draw(generator, 1, len(targets), mix=False)
    atlas, labels = source.atlas[index: index + 1].to(device), source.labels[index: index + 1].to(device)
    onehot = torch.movedim(torch.nn.functional.one_hot(labels[:, 0].long(), model.num_labels), -1, 1).float()
    with torch.inference_mode():
        velocities = model.register(atlas, targets)["velocity"]
        image, soft_labels = space_style_sample(atlas, onehot, targets, velocities, model.integrate, sampling)
    draw = {"slice": index, "space_weights": sampling.space_weights[0].tolist(),
            "style_weights": sampling.style_weights[0].tolist()}
    return image, soft_labels, draw


def source_from_checkpoint(checkpoint: dict, model) -> GenerationSource:
    """The checkpoint's atlas and unlabelled training images on the training grid (padded)."""
    from warpseg.learning.preprocess import Preprocessing, image_to_model_grid, plan_grid

    stored = checkpoint.get("segmentation", {}).get("atlas")
    targets = checkpoint.get("generation", {}).get("targets")
    if stored is None or not targets:
        raise InputError("this checkpoint keeps no atlas or target images; pass --atlas, --atlas-labels and --images")
    atlas = stored["image"].float()
    shape, ndim = tuple(atlas.shape[2:]), atlas.dim() - 2
    slices = min([len(atlas)] + [len(t["image"]) for t in targets])
    spacing = float(checkpoint["preprocessing"].get("target_spacing") or 1.0)
    grid = plan_grid(shape, (spacing,) * ndim, Preprocessing(target_spacing=None, size_multiple=model.size_multiple))
    stacked = torch.cat([t["image"][:slices].float() for t in targets], dim=1)
    return GenerationSource(
        atlas=image_to_model_grid(atlas[:slices], grid),
        labels=image_to_model_grid(stored["labels"][:slices].long(), grid, mode="nearest"),
        targets=image_to_model_grid(stacked, grid), grid=grid,
        affine=np.diag([spacing] * 3 + [1.0]),
        description=f"checkpoint atlas {stored['subject']}; targets {', '.join(t['subject'] for t in targets)}")


def source_from_volumes(atlas: tuple[Volume, Volume], images: Sequence[Volume], checkpoint: dict) -> GenerationSource:
    """A given atlas and labels, and target images resampled onto the atlas grid, on the model grid."""
    from warpseg.engine.register import normalise_intensity, on_fixed_grid
    from warpseg.engine.segment import check_atlas
    from warpseg.learning.preprocess import image_to_model_grid
    from warpseg.methods.learned_inference import model_grid, to_model_grid

    from warpseg.engine.validate import check_image

    atlas_image, atlas_labels = atlas
    check_atlas(atlas, atlas_image)
    for number, image in enumerate(images, start=1):
        check_image(image, f"target {number}")
        if image.ndim != atlas_image.ndim:
            raise InputError(f"target image {number} is {image.ndim}D but the atlas is {atlas_image.ndim}D")
    weights_ndim = checkpoint["model"]["config"]["ndim"]
    if atlas_image.ndim != weights_ndim:
        raise InputError(f"the atlas is {atlas_image.ndim}D but the weights are {weights_ndim}D; give {weights_ndim}D images")
    grid = model_grid(atlas_image.shape, atlas_image.spacing, checkpoint)
    targets = [to_model_grid(normalise_intensity(on_fixed_grid(image, atlas_image).array), grid, "cpu")
               for image in images]
    labels = torch.as_tensor(np.asarray(atlas_labels.array, dtype=np.int64))[None, None]
    return GenerationSource(
        atlas=to_model_grid(normalise_intensity(atlas_image.array), grid, "cpu"),
        labels=image_to_model_grid(labels, grid, mode="nearest"), targets=torch.cat(targets, dim=1), grid=grid,
        affine=atlas_image.affine, description=f"given atlas; {len(targets)} given target images")


def _move_all(source: Path, destination: Path) -> None:
    for path in sorted(source.iterdir()):
        os.replace(path, destination / path.name)
