"""The training loop shared by learned methods: seeded, resumable, validated, with ETA.

What differs between registration and (few-shot) segmentation training, namely the data, the loss
of one pair, the validation and what the checkpoint records, is a :class:`TrainingTask`;
:func:`registration_task` is defined here, the segmentation one in
:mod:`warpseg.learning.segmentation_training`.
"""
from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Generator
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from warpseg.errors import InputError
from warpseg.learning.checkpoint import save_checkpoint
from warpseg.learning.data import NUM_SEG4, RegistrationData
from warpseg.learning.losses import RegistrationLoss, one_hot
from warpseg.learning.preprocess import Preprocessing
from warpseg.methods.base import Progress


@dataclass
class TrainingConfig:
    """Everything that decides a training run; stored in the checkpoint."""

    method: str
    ndim: int
    data: str
    steps: int = 2000
    learning_rate: float = 1e-4
    smoothness: float = 1.0
    dice_weight: float = 1.0
    similarity: str = "lncc"  # image similarity: mse, lncc, mi or a weighted sum "mi:0.5,lncc:0.5"
    seed: int = 0
    validate_every: int = 250
    validation_subjects: tuple[str, ...] = ("vxm",)
    label_maps: int = 15
    spacing: float | None = None  # training grid spacing in mm (None: TARGET_SPACING for ndim)
    device: str = "cpu"
    model_options: dict = field(default_factory=dict)
    labels: str = "seg4"  # label set of segmentation methods: seg4 or seg35
    shots: int = 5  # K labelled atlases of few-shot segmentation training
    segmentation_weight: float = 1.0  # weighted cross-entropy + Dice on the labelled atlas
    consistency_weight: float = 1.0  # Dice(S_F, S_M o phi)
    self_pairs: float = 0.0  # K = 1: share of steps pairing the atlas with an augmented copy of itself
    init_from: str | None = None  # checkpoint(s), comma-separated, to warm-start from (learning/warm_start.py)
    freeze_registration: bool = False  # nice-transeg: train the segmentation branches only
    registration_lr_scale: float = 1.0  # nice-transeg: the registration part learns at this share of the rate


@dataclass
class TrainingTask:
    """What a kind of training brings to the shared loop.

    ``load_data()`` gives an object with ``sample(generator)`` (a pair dict) and ``spacing``;
    ``loss_terms(model, loss_function, pair, device)`` the differentiable terms (``"total"``);
    ``validate(model, data, device)`` a dict of scores; ``describe(scores)`` a one-line summary;
    ``data_record(data)`` the checkpoint's ``training["data"]``; ``checkpoint_extra(data)`` more
    top-level checkpoint entries; ``model_options`` constructor options the data decides.
    """

    loss_function: torch.nn.Module
    load_data: Callable
    loss_terms: Callable
    validate: Callable
    describe: Callable
    data_record: Callable
    checkpoint_extra: Callable = lambda data: {}
    model_options: dict = field(default_factory=dict)


def registration_task(config: TrainingConfig) -> TrainingTask:
    """Unsupervised registration (with the seg4 Dice term) on :class:`RegistrationData`."""
    return TrainingTask(
        loss_function=RegistrationLoss(config.ndim, smoothness=config.smoothness, dice_weight=config.dice_weight,
                                       similarity=config.similarity),
        load_data=lambda: RegistrationData(config.data, config.ndim, config.validation_subjects,
                                           config.label_maps, spacing=config.spacing),
        loss_terms=pair_loss_terms, validate=validate,
        describe=lambda scores: f"validation Dice {scores['dice']:.3f} (before {scores['dice_before']:.3f})",
        data_record=lambda data: {"training_subjects": data.sources,
                                  "validation_subjects": [s.name for s in data.validation]})


def build_task(config: TrainingConfig) -> TrainingTask:
    """The task of ``config.method``: few-shot segmentation or registration."""
    from warpseg.learning.registry import SEGMENTATION_NETWORKS

    if config.method == "pcreg-rt":
        from warpseg.learning.pcreg_rt_training import pcreg_rt_task

        return pcreg_rt_task(config)
    if config.method == "brbs":
        from warpseg.learning.brbs_training import brbs_task

        return brbs_task(config)
    if config.method in SEGMENTATION_NETWORKS:
        from warpseg.learning.segmentation_training import segmentation_task

        return segmentation_task(config)
    return registration_task(config)


def train_registration(config: TrainingConfig, out: Path, *, resume: bool = False,
                       distributed: bool = False) -> Generator[Progress, None, Path]:
    """Train ``config.method`` and write a self-describing checkpoint to ``out``.

    Yields :class:`Progress` (loss, ETA) and returns the checkpoint path. A ``.state.pt`` file
    beside ``out`` holds optimiser and random states, so ``resume=True`` continues a stopped run.
    With ``distributed=True`` (under ``torchrun``) every rank trains a DistributedDataParallel
    copy on its own pairs (its own sampling seed), gradients are averaged, and rank 0 alone
    validates and writes the checkpoint, in the single-process format.
    """
    from warpseg.learning.distributed import run_in_process_group

    return (yield from run_in_process_group(lambda context: _train(config, Path(out), resume, context),
                                            config.device, distributed))


def _train(config: TrainingConfig, out: Path, resume: bool, context) -> Generator[Progress, None, Path]:
    """The training loop of :func:`train_registration`; ``context`` is None in a single process."""
    from warpseg.learning.distributed import gather_from_ranks, rank_seed, wrap_model
    from warpseg.learning.registry import new_model

    rank, world_size, device = (context.rank, context.world_size, context.device) if context else (0, 1, config.device)
    task = build_task(config)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(rank_seed(config.seed, rank))
    model = new_model(config.method, config.ndim, **{**task.model_options, **config.model_options}).to(device)
    optimiser = torch.optim.Adam(parameter_groups(model, config), lr=config.learning_rate)
    state_file = out.with_suffix(".state.pt")
    history, step = [], 0
    if resume and state_file.exists():
        step, history = _resume(state_file, model, optimiser, generator, rank)
    elif config.init_from:
        from warpseg.learning.warm_start import initialise_from

        summaries = ["{from}: {copied} tensors copied, {widened} widened, {fresh} fresh".format(
            **initialise_from(model, path.strip())) for path in config.init_from.split(",")]
        yield Progress("train", 0, config.steps, "warm start from " + "; ".join(summaries))
    stepping_model = wrap_model(model, context) if context else model
    yield Progress("train", step, config.steps, "loading training data")
    data = task.load_data()
    started, first_step, running = time.perf_counter(), step, []
    while step < config.steps:
        model.train()
        terms = training_step(stepping_model, optimiser, task.loss_function, data.sample(generator), device,
                              task.loss_terms)
        step += 1
        running.append(terms["total"])
        if step % 10 == 0 or step == config.steps:
            rate = (time.perf_counter() - started) / (step - first_step)
            yield Progress("train", step, config.steps, f"ETA {_clock(rate * (config.steps - step))}",
                           loss=float(np.mean(running[-50:])))
        if step % config.validate_every == 0 or step == config.steps:
            generators = gather_from_ranks(generator.get_state()) if context else None
            if rank != 0:
                continue
            scores = task.validate(model, data, device)
            history.append({"step": step, **scores})
            yield Progress("validate", step, config.steps, task.describe(scores))
            torch.save({"model": model.state_dict(), "optimiser": optimiser.state_dict(), "step": step,
                        "generator": generator.get_state(), "history": history,
                        **({"generators": generators} if generators else {})}, state_file)
            _write(out, model, config, task, data, history, time.perf_counter() - started, world_size)
    return out


def parameter_groups(model, config: TrainingConfig) -> list[dict]:
    """The optimiser's parameter groups: one, or for NICE-Transeg with ``freeze_registration`` the
    segmentation branches alone, or with ``registration_lr_scale`` the branches at the learning rate
    and the rest (encoder, affine step, registration decoder) at that share of it."""
    if config.freeze_registration:
        model.freeze_registration()
    trainable = [p for p in model.parameters() if p.requires_grad]
    if config.registration_lr_scale == 1.0 or config.freeze_registration:
        return [{"params": trainable}]
    branches = {id(p) for p in model.segmentation_branch_parameters()}
    return [{"params": [p for p in trainable if id(p) in branches]},
            {"params": [p for p in trainable if id(p) not in branches],
             "lr": config.learning_rate * config.registration_lr_scale}]


def _resume(state_file: Path, model, optimiser, generator: torch.Generator, rank: int) -> tuple[int, list]:
    """Load a ``.state.pt`` into the model, optimiser and this rank's generator; return step and history.

    A distributed run saved every rank's generator; a rank the file has no generator for keeps
    its freshly seeded one.
    """
    state = torch.load(state_file, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    try:
        optimiser.load_state_dict(state["optimiser"])
    except ValueError as error:
        raise InputError(f"{state_file} was saved by a run that trained other parameters ({error}); resume with the "
                         "options it started with (--freeze-registration, --registration-lr-scale)") from error
    generators = state.get("generators") or [state["generator"]]
    if rank < len(generators):
        generator.set_state(generators[rank])
    return state["step"], state["history"]


def training_step(model, optimiser, loss_function, pair: dict, device: str,
                  loss_terms: Callable | None = None) -> dict[str, float]:
    """One optimisation step on one pair; returns the loss terms as floats.

    ``loss_terms(model, loss_function, pair, device)`` defaults to :func:`pair_loss_terms`.
    """
    terms = (loss_terms or pair_loss_terms)(model, loss_function, pair, device)
    optimiser.zero_grad(set_to_none=True)
    terms["total"].backward()
    optimiser.step()
    return {key: float(value.detach()) for key, value in terms.items()}


def pair_loss_terms(model, loss_function, pair: dict, device: str) -> dict[str, torch.Tensor]:
    """The loss terms of one pair (tensors, ``"total"`` differentiable) with the model's own penalties."""
    from warpseg.spatial import warp_image

    moving, fixed = pair["moving"].to(device), pair["fixed"].to(device)
    outputs = model(moving, fixed)
    displacement = outputs["displacement"]
    warped = warp_image(moving, displacement)
    warped_onehot = warp_image(one_hot(pair["moving_labels"].to(device), NUM_SEG4), displacement)
    regularised = outputs.get("deformable_displacement", displacement)  # lindef: not the affine part
    terms = loss_function(warped, fixed, regularised, warped_onehot, one_hot(pair["fixed_labels"].to(device), NUM_SEG4))
    for name, value in outputs.get("loss_terms", {}).items():  # the model's own penalties (lindef)
        terms[name] = value
        terms["total"] = terms["total"] + value
    if "affine_displacement" in outputs and outputs["affine_displacement"] is not displacement:
        terms["total"] = terms["total"] + loss_function.similarity(warp_image(moving, outputs["affine_displacement"]), fixed)
    return terms


def validate(model, data: RegistrationData, device: str) -> dict[str, float]:
    """Mean Dice (seg4, nearest-neighbour label warp) over the validation pairs, before and after."""
    from warpseg.metrics import dice_per_label
    from warpseg.spatial import warp_labels

    model.eval()
    before, after = [], []
    with torch.inference_mode():
        for _, pair in data.validation_pairs():
            displacement = model(pair["moving"].to(device), pair["fixed"].to(device))["displacement"]
            warped = warp_labels(pair["moving_labels"].to(device), displacement)
            fixed = pair["fixed_labels"][0, 0].numpy()
            before.append(np.mean(list(dice_per_label(pair["moving_labels"][0, 0].numpy(), fixed).values())))
            after.append(np.mean(list(dice_per_label(warped[0, 0].cpu().numpy(), fixed).values())))
    return {"dice": float(np.mean(after)), "dice_before": float(np.mean(before)), "pairs": len(after)}


def _write(out: Path, model, config: TrainingConfig, task: TrainingTask, data, history: list, seconds: float,
           world_size: int = 1) -> None:
    preprocessing = Preprocessing(target_spacing=data.spacing, size_multiple=model.size_multiple)
    training = {
        "command": "warpseg " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None,
        "config": {**asdict(config), "validation_subjects": list(config.validation_subjects)},
        "data": task.data_record(data),
        "validation": history[-1] if history else None, "history": history, "seconds": round(seconds, 1),
        "world_size": world_size, "torch": str(torch.__version__),
    }
    save_checkpoint(out, method=config.method, model=model, preprocessing=preprocessing.as_dict(), training=training,
                    extra=task.checkpoint_extra(data))


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
