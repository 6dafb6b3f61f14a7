"""Building an Atlas-ISTN atlas: train ITN + STN epoch by epoch and move the atlas towards the warped mean.

``z^a_0`` is the mean of the training set (images and label one-hots, i.e. label probabilities).
An epoch is ``steps_per_epoch`` augmented training draws (half of them, by default, from label-only
subjects with synthesised images; the set is small, so a pass over it would be a handful of steps in
3D). After every epoch each training image and label map is warped into atlas space by its STN
(``z_i ∘ Φ_i``, no augmentation) and the atlas moves towards their mean at rate η:
``z^a_t = (1 − η) z^a_{t−1} + η mean_i(z_i ∘ Φ_i)`` (:func:`update_atlas`). Synthesised images
(SynthSeg label maps) shape the label atlas but stay out of the image atlas.

:func:`build_atlas` is a job: a generator that yields :class:`~warpseg.methods.base.Progress`
(loss, ETA) and, once per epoch, an :class:`AtlasProgress` carrying the current atlas image and
label map; it writes its outputs at the very end, all or nothing (closing it leaves no trace).
Sending :data:`~warpseg.methods.base.FINISH` stops training early: the epoch under way ends there,
the atlas takes its update, and the outputs are written (its history record says ``finished_early``).

Under ``torchrun`` (``distributed=True``) every rank trains a DistributedDataParallel copy on its own
draws and warps its share of the training set for the update; the sums are added up over the ranks,
so the atlas is the single-process one and the same on every rank. Rank 0 alone validates and writes.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from warpseg.errors import InputError
from warpseg.learning.atlas_data import AtlasTrainingData
from warpseg.learning.atlas_istn_loss import AtlasIstnLoss, omega_at
from warpseg.learning.losses import one_hot
from warpseg.methods.base import FINISH, Progress
from warpseg.spatial import warp_image

OUTPUT_FILES = ("atlas_image.nii.gz", "atlas_labels.nii.gz", "atlas_labels.labels.json", "model.pt",
                "atlas_history.json")
MODEL_DEFAULTS = {2: {}, 3: {"itn_channels": [8, 16, 32, 64], "stn_downsize": 2}}
"""Network options per dimensionality unless the run sets them (3D: thinner ITN, STN at half resolution)."""


@dataclass
class AtlasConfig:
    """Everything that decides an atlas build; stored in the checkpoint."""

    data: str
    ndim: int = 2
    labels: str = "seg4"
    epochs: int = 50
    steps_per_epoch: int = 100  # training draws between two atlas updates
    learning_rate: float = 1e-3
    atlas_rate: float = 0.01  # η
    smoothness: float = 500.0  # λ
    omega: float = 1.0  # ω (with omega_ramp_epoch > 0: the ramp's plateau)
    omega_ramp_epoch: int = 0  # 0: constant ω; else the paper's sigmoid ramp centred on this epoch
    dice_weight: float = 0.0  # adds dice_weight · (1 − soft Dice) to L_s (not the paper's; seg35 uses it)
    cross_entropy_weight: float = 0.0  # adds this times class-weighted cross-entropy to L_s (not the paper's; 3D)
    seed: int = 0
    validation_subjects: tuple[str, ...] = ()  # empty: vxm for seg4, subjY for seg35
    label_maps: int = 15
    synthetic_share: float = 0.2  # share of training draws with images synthesised from label maps
    spacing: float | None = None  # 3D training grid spacing in mm (None: 2 mm)
    slab: int = 2  # 2D: slices BENCHMARK_SLICE ± slab of each subject
    snapshot_every: int = 0  # also write the atlas of every N-th epoch as atlas_*_epochNNN.nii.gz (0: none)
    device: str = "cpu"
    model_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = {"--epochs": self.epochs >= 1, "--steps-per-epoch": self.steps_per_epoch >= 1,
                  "--lr": self.learning_rate > 0, "--atlas-rate": 0 < self.atlas_rate <= 1,
                  "--dice-weight": self.dice_weight >= 0, "--cross-entropy-weight": self.cross_entropy_weight >= 0}
        wrong = [name for name, holds in checks.items() if not holds]
        if wrong:
            raise InputError(f"{', '.join(wrong)} out of range: epochs and steps are at least 1, the learning rate "
                             "is above 0, the atlas rate in (0, 1], the loss weights 0 or more")


@dataclass
class AtlasProgress(Progress):
    """The atlas after an epoch: ``preview`` is the image, ``labels`` the arg-max label map, both ``S``,
    on the grid ``affine``; ``record`` holds the epoch's sharpness, losses and validation scores."""

    labels: np.ndarray | None = field(default=None, repr=False)
    affine: np.ndarray | None = field(default=None, repr=False)
    record: dict = field(default_factory=dict)


def update_atlas(previous: torch.Tensor, warped_mean: torch.Tensor, rate: float) -> torch.Tensor:
    """``(1 − rate) * previous + rate * warped_mean`` (the paper's η update), any shape."""
    return (1.0 - rate) * previous + rate * warped_mean


def atlas_sharpness(image: torch.Tensor, probabilities: torch.Tensor) -> dict[str, float]:
    """Mean gradient magnitude of the atlas image and mean label entropy (nats) of its label map.

    Shapes
    ------
    image ``(1, 1, *S)``; probabilities ``(1, L, *S)``.
    """
    spatial = tuple(range(2, image.dim()))
    gradients = torch.gradient(image.double(), dim=spatial)
    magnitude = torch.sqrt(sum(g.square() for g in gradients)).mean()
    p = probabilities.double().clamp(min=0)
    entropy = -(p * torch.log(p.clamp(min=1e-12))).sum(dim=1).mean()
    return {"gradient_magnitude": float(magnitude), "label_entropy": float(entropy)}


def example_loss_terms(model, loss_function: AtlasIstnLoss, example: dict, device: str) -> dict[str, torch.Tensor]:
    """The Atlas-ISTN terms of one labelled training example against the model's current atlas.

    ``model`` may be wrapped in DistributedDataParallel: its forward pass is the wrapper's.
    """
    from warpseg.learning.distributed import unwrap_model

    network = unwrap_model(model)
    image, labels = example["image"].to(device), example["labels"].to(device)
    atlas = network.atlas_probabilities()
    return loss_function(model(image, atlas), one_hot(labels, network.num_labels), atlas)


def warped_training_mean(model, data: AtlasTrainingData, device: str, context=None
                         ) -> Generator[Progress, None, tuple[torch.Tensor, torch.Tensor]]:
    """``mean_i(z_i ∘ Φ_i)``: the training images (real ones) and label one-hots warped into atlas space.

    With a :class:`~warpseg.learning.distributed.DistributedContext` each rank warps its share of the
    items and the sums and counts are added up over the ranks (a collective): every rank gets the
    mean over the whole training set. ``model`` is the bare network, never a DDP wrapper.

    Shapes
    ------
    returns image ``(1, 1, *S)`` and label probabilities ``(1, L, *S)`` on the model's device.
    """
    from warpseg.learning.distributed import share_of_items, sum_over_ranks

    items = share_of_items(data.items, context)
    image_sum, label_sum, counts = yield from warped_training_sums(model, data, items, device)
    if context is not None:
        sum_over_ranks(image_sum, label_sum, counts)
    return image_sum / counts[0], label_sum / counts[1]


def warped_training_sums(model, data: AtlasTrainingData, items: list, device: str
                         ) -> Generator[Progress, None, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The sums of ``z_i ∘ Φ_i`` over ``items`` and their counts ``[images, label maps]``.

    Images count from items with a real image only, unless the whole training set has none.

    Shapes
    ------
    returns image sum ``(1, 1, *S)``, label sum ``(1, L, *S)`` and counts ``(2,)``, on ``device``.
    """
    model.eval()
    image_sum = torch.zeros((1, 1) + tuple(data.shape), device=device)
    label_sum = torch.zeros((1, model.num_labels) + tuple(data.shape), device=device)
    counts = torch.zeros(2, device=device)
    every_image = not any(data.is_real(item) for item in data.items)
    for count, item in enumerate(items):
        if count % 10 == 0:
            yield Progress("atlas update", count, len(items), "warping the training set into atlas space")
        example = data.example(item)
        with torch.no_grad():
            image = example["image"].to(device)
            field = model(image)["atlas_to_image"]
            label_sum += warp_image(one_hot(example["labels"].to(device), model.num_labels), field, padding="border")
            counts[1] += 1
            if every_image or data.is_real(item):
                image_sum += warp_image(image, field)
                counts[0] += 1
    return image_sum, label_sum, counts


def validate(model, data: AtlasTrainingData, device: str) -> dict[str, float]:
    """seg4 Dice on the held-out subjects of the atlas warped in one pass (``dice``) and of the ITN."""
    from warpseg.learning.segmentation_training import mean_dice

    model.eval()
    atlas_scores, itn_scores = [], []
    with torch.no_grad():
        for _, image, reference in data.validation_examples():
            outputs = model(image.to(device))
            reference = reference[0, 0].numpy()
            atlas = outputs["warped_atlas"].argmax(1, keepdim=True).cpu()
            itn = outputs["segmentation"].argmax(1, keepdim=True).cpu()
            atlas_scores.append(mean_dice(data.to_seg4(atlas), reference))
            itn_scores.append(mean_dice(data.to_seg4(itn), reference))
    if not atlas_scores:
        return {}
    return {"dice": float(np.mean(atlas_scores)), "itn_dice": float(np.mean(itn_scores)), "subjects": len(atlas_scores)}


def build_atlas(config: AtlasConfig, out: str | Path, *, resume: bool = False,
                data: AtlasTrainingData | None = None, distributed: bool = False
                ) -> Generator[Progress, None, list[Path]]:
    """Train Atlas-ISTN and build its atlas; write ``out`` (see :data:`OUTPUT_FILES`), all or nothing.

    ``data`` defaults to :meth:`AtlasTrainingData.from_shared_data` of ``config``. With ``resume``
    and a finished build in ``out``, training continues from its model, atlas and history up to
    ``config.epochs`` (the optimiser restarts). Returns the written paths.

    With ``distributed=True`` (under ``torchrun``) every rank trains a DistributedDataParallel copy
    on its own draws (its own sampling seed), gradients are averaged, and each atlas update takes
    the warped mean over the whole training set (split over the ranks, sums added up), so every rank
    holds the same atlas. Rank 0 alone validates and writes ``out``; the other ranks return ``[]``.
    """
    from warpseg.learning.distributed import run_in_process_group

    return (yield from run_in_process_group(lambda context: _build_on_rank(config, Path(out), resume, data, context),
                                            config.device, distributed, command="atlas build"))


def _build_on_rank(config: AtlasConfig, out: Path, resume: bool, data, context) -> Generator[Progress, None, list]:
    """:func:`_build` with a staging folder beside ``out`` (removed at the end); without one on ranks other than 0."""
    if context is not None and not context.is_main:
        return (yield from _build(config, out, None, resume, data, context))
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building.", dir=out.parent))
    try:
        return (yield from _build(config, out, staging, resume, data, context))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _build(config: AtlasConfig, out: Path, staging: Path | None, resume: bool, data,
           context) -> Generator[Progress, None, list]:
    """The epochs of :func:`build_atlas`; outputs go to ``staging``, then ``out``, unless ``staging`` is None."""
    from warpseg.engine.outputs import write_atomically
    from warpseg.learning.distributed import rank_seed, wrap_model

    device, rank = (context.device, context.rank) if context else (config.device, 0)
    yield Progress("train", 0, None, "loading training data")
    data = data or AtlasTrainingData.from_shared_data(
        config.data, config.ndim, config.labels, config.validation_subjects or None, config.label_maps,
        config.spacing, config.slab, config.synthetic_share)
    model, image, labels, history = _model_and_atlas(config, out, resume, data, device)
    validates = staging is not None  # rank 0, or a single process
    if not history:
        scores = validate(model, data, device) if validates else {}
        history.append({"epoch": 0, **atlas_sharpness(image, labels), **scores})
    yield _atlas_progress(history[-1], image, labels, data, config.epochs)
    first_epoch = history[-1]["epoch"] + 1
    generator = torch.Generator().manual_seed(rank_seed(config.seed + first_epoch - 1, rank))
    stepping_model = wrap_model(model, context, broadcast_buffers=False) if context else model
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    loss_function = AtlasIstnLoss(config.smoothness, config.omega, config.dice_weight, config.cross_entropy_weight)
    clock = _Clock(max(0, config.epochs - first_epoch + 1) * config.steps_per_epoch)
    for epoch in range(first_epoch, config.epochs + 1):
        loss_function.omega = omega_at(epoch, config.omega_ramp_epoch, config.omega)
        losses = yield from _train_epoch(stepping_model, optimiser, loss_function, data, generator, config, epoch,
                                         clock, context)
        finished_early = len(losses) < config.steps_per_epoch
        warped_image, warped_labels = yield from warped_training_mean(model, data, device, context)
        image = update_atlas(image, warped_image, config.atlas_rate)
        labels = update_atlas(labels, warped_labels, config.atlas_rate)
        model.set_atlas(image, labels)
        record = {"epoch": epoch, "omega": loss_function.omega, **atlas_sharpness(image, labels),
                  **{f"loss_{k}": float(np.mean([t[k] for t in losses])) for k in losses[0]},
                  **(validate(model, data, device) if validates else {}), "seconds": round(clock.seconds, 1)}
        history.append(record)
        if validates and config.snapshot_every and epoch % config.snapshot_every == 0:
            _write_atlas(staging, image, labels, data, f"_epoch{epoch:03d}")
        if finished_early:  # FINISH was sent: this shortened epoch is the last
            record["finished_early"] = True
            break
        yield _atlas_progress(record, image, labels, data, config.epochs)
    if staging is None:
        return []
    _write_outputs(staging, model, image, labels, data, config, history, clock.seconds,
                   context.world_size if context else 1)
    return write_atomically(lambda folder: [os.replace(path, folder / path.name) for path in staging.iterdir()], out)


def _model_and_atlas(config: AtlasConfig, out: Path, resume: bool, data: AtlasTrainingData, device: str
                     ) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, list]:
    """A new seeded model holding the initial atlas, or the finished build's in ``out`` with ``resume``; its history."""
    from warpseg.learning.registry import new_model

    torch.manual_seed(config.seed)
    options = {**MODEL_DEFAULTS[config.ndim], **config.model_options}
    model = new_model("atlas-istn", config.ndim, num_labels=data.num_labels, atlas_shape=data.shape,
                      **options).to(device)
    image, labels = (tensor.to(device) for tensor in data.initial_atlas())
    history = []
    if resume and (out / "model.pt").is_file():
        image, labels, history = _resume(out / "model.pt", model, device)
    model.set_atlas(image, labels)
    return model, image, labels, history


class _Clock:
    """Training steps done out of ``total``, and the ETA of the rest."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.started = total, 0, time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def eta(self) -> str:
        from warpseg.learning.train import _clock

        return _clock(self.seconds / max(1, self.done) * (self.total - self.done))


def _train_epoch(model, optimiser, loss_function, data: AtlasTrainingData, generator: torch.Generator,
                 config: AtlasConfig, epoch: int, clock: _Clock, context=None) -> Generator[Progress, None, list[dict]]:
    """``config.steps_per_epoch`` training steps on augmented draws; returns their loss terms."""
    from warpseg.learning.train import training_step

    device = context.device if context else config.device
    model.train()
    losses = []
    for _ in range(config.steps_per_epoch):
        example = data.example(data.draw(generator), generator)
        losses.append(training_step(model, optimiser, loss_function, example, device, example_loss_terms))
        clock.done += 1
        if clock.done % 10 == 0:
            sent = yield Progress("train", clock.done, clock.total, f"epoch {epoch}/{config.epochs}, ETA {clock.eta()}",
                                  loss=losses[-1]["total"])
            if _finish_requested(sent, context):
                break
    return losses


def _finish_requested(sent, context) -> bool:
    """Whether :data:`FINISH` was sent here or, distributed, to any rank (a collective): all ranks stop together."""
    if context is None:
        return sent is FINISH
    from warpseg.learning.distributed import gather_from_ranks

    return any(gather_from_ranks(sent is FINISH))


def _resume(path: Path, model, device: str) -> tuple[torch.Tensor, torch.Tensor, list]:
    from warpseg.learning.checkpoint import read_checkpoint

    checkpoint = read_checkpoint(path)
    if checkpoint["method"] != "atlas-istn" or checkpoint["model"]["config"] != model.config:
        raise InputError(f"{path} holds another model than this build would train; use a new --out or the "
                         "same options as the finished build")
    model.load_state_dict(checkpoint["state_dict"])
    history = list(checkpoint["training"]["history"])
    return model.atlas_image.float().to(device), model.atlas_probabilities().to(device), history


def _atlas_progress(record: dict, image: torch.Tensor, labels: torch.Tensor, data, epochs: int) -> AtlasProgress:
    scores = f"; held-out Dice atlas {record['dice']:.3f}, ITN {record['itn_dice']:.3f}" if "dice" in record else ""
    message = (f"epoch {record['epoch']}/{epochs}: atlas gradient {record['gradient_magnitude']:.4f}, "
               f"label entropy {record['label_entropy']:.4f}{scores}")
    return AtlasProgress("atlas", record["epoch"], epochs, message, loss=record.get("loss_total"),
                         preview=image[0, 0].float().cpu().numpy(), labels=_label_map(labels),
                         affine=data.affine, record=dict(record))


def _label_map(labels: torch.Tensor) -> np.ndarray:
    return labels[0].argmax(0).cpu().numpy().astype(np.uint8 if labels.shape[1] <= 256 else np.int16)


def _write_atlas(folder: Path, image: torch.Tensor, labels: torch.Tensor, data, suffix: str = "") -> None:
    from warpseg.io import Volume, write_volume

    write_volume(Volume(image[0, 0].float().cpu().numpy(), data.affine), folder / f"atlas_image{suffix}.nii.gz")
    write_volume(Volume(_label_map(labels), data.affine, is_labels=True, label_names=data.label_names),
                 folder / f"atlas_labels{suffix}.nii.gz")


def _write_outputs(folder: Path, model, image, labels, data: AtlasTrainingData, config: AtlasConfig,
                   history: list, seconds: float, world_size: int = 1) -> None:
    from warpseg.learning.checkpoint import save_checkpoint
    from warpseg.learning.preprocess import Preprocessing

    _write_atlas(folder, image, labels, data)
    argv = sys.argv[1:]
    scores = [record for record in history if "dice" in record]
    training = {
        "command": "warpseg " + " ".join(shlex.quote(a) for a in argv) if argv else None,
        "config": {**asdict(config), "validation_subjects": [s.name for s in data.validation]},
        "data": {"training_subjects": data.sources, "validation_subjects": [s.name for s in data.validation],
                 "label_set": data.label_set, "items": len(data.items)},
        "validation": scores[-1] if scores else None, "history": history, "seconds": round(seconds, 1),
        "world_size": world_size, "torch": str(torch.__version__),
    }
    extra = {"segmentation": {"label_set": data.label_set, "label_names": dict(data.label_names),
                              "num_labels": data.num_labels},
             "atlas": {"affine": data.affine.tolist(), "epochs": history[-1]["epoch"]}}
    preprocessing = Preprocessing(target_spacing=data.spacing, size_multiple=model.size_multiple)
    save_checkpoint(folder / "model.pt", method="atlas-istn", model=model, preprocessing=preprocessing.as_dict(),
                    training=training, extra=extra)
    (folder / "atlas_history.json").write_text(json.dumps(history, indent=1) + "\n")
