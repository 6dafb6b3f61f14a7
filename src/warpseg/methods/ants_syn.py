"""ANTs SyN (antspyx): affine then symmetric normalisation, run in a child process so it can be cancelled.

ANTs blocks inside C++ and cannot be stopped in-process, so the registration runs in a spawned
child process that the parent terminates on cancel. The child turns ANTs' forward transforms (a
warp field ``.nii.gz`` and an affine ``.mat``) into one displacement on the fixed grid and hands
it back through a ``.npy`` file in a temporary folder that the parent always deletes.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import tempfile
import time
import traceback
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import SimpleITK as sitk

from warpseg.methods.base import MethodOutput, Progress, RegistrationInput, RegistrationMethod
from warpseg.methods.sitk_runner import (available_cores, configure_threads, displacement_field_filter,
                                         field_to_displacement, resolve_options, to_sitk)

ANTS_DEFAULTS: dict[str, Any] = {
    "type_of_transform": "SyN",        # any ants.registration type (SyN, SyNOnly, ElasticSyN, ...)
    "reg_iterations": (40, 20, 0),     # SyN iterations per level (coarse to fine)
    "aff_iterations": (2100, 1200, 1200, 10),  # affine iterations per level
    "aff_shrink_factors": (6, 4, 2, 1),        # affine pyramid (one entry per affine level)
    "aff_smoothing_sigmas": (3, 2, 1, 0),      # affine smoothing per level, voxels
    "syn_metric": "mattes",            # mattes | CC | meansquares | demons
    "grad_step": 0.2,
    "flow_sigma": 3.0,
    "total_sigma": 0.0,
    "seed": 0,                         # ANTs random seed: same input, same result
    "threads": 2,                      # ITK threads of the child process (at most the cores)
}
HEARTBEAT_SECONDS = 0.5


def ants_transforms_to_displacement(transforms: Sequence[str], shape: Sequence[int],
                                    spacing: Sequence[float]) -> np.ndarray:
    """ANTs forward transforms (as ``ants.apply_transforms`` takes them) as one voxel displacement.

    ANTs lists ``[warp, affine]``: the moving image is resampled through the affine, then the
    warp, so a fixed point maps as ``x -> affine(x + warp(x))`` (checked against
    ``ants.apply_transforms``). A SimpleITK composite applies its *last* transform to the point
    first, so it takes the list reversed. Images are in the local frame (origin 0, identity
    direction, ``spacing``).

    Shapes
    ------
    returns ``(ndim, *shape)`` float32 in fixed voxel units.
    """
    chain = []
    for path in transforms:
        if str(path).endswith((".nii", ".nii.gz")):
            field = sitk.ReadImage(str(path), sitk.sitkVectorFloat64)
            chain.append(sitk.DisplacementFieldTransform(field))
        else:
            chain.append(sitk.ReadTransform(str(path)))
    reference = to_sitk(np.zeros(tuple(shape), dtype=np.float32), spacing)
    field = displacement_field_filter(reference).Execute(sitk.CompositeTransform(chain[::-1]))
    return field_to_displacement(field)


def ants_registration(moving: np.ndarray, fixed: np.ndarray, spacing: Sequence[float],
                      settings: dict[str, Any], workdir: str) -> np.ndarray:
    """Run ``ants.registration`` in this process; ANTs' files go to ``workdir``. Returns the displacement."""
    import ants

    def image(array: np.ndarray):
        return ants.from_numpy(np.asarray(array, dtype=np.float32), origin=(0.0,) * array.ndim,
                               spacing=tuple(float(s) for s in spacing))

    config = getattr(ants, "config", None)
    if config is not None and hasattr(config, "_random_seed"):
        # what ants.set_ants_deterministic sets, without its forcing of one thread
        config._random_seed = int(settings["seed"])
    result = ants.registration(
        image(fixed), image(moving), type_of_transform=settings["type_of_transform"],
        outprefix=str(Path(workdir) / "ants_"), reg_iterations=tuple(settings["reg_iterations"]),
        aff_iterations=tuple(settings["aff_iterations"]),
        aff_shrink_factors=tuple(settings["aff_shrink_factors"]),
        aff_smoothing_sigmas=tuple(settings["aff_smoothing_sigmas"]), syn_metric=settings["syn_metric"],
        grad_step=float(settings["grad_step"]), flow_sigma=float(settings["flow_sigma"]),
        total_sigma=float(settings["total_sigma"]))
    return ants_transforms_to_displacement(result["fwdtransforms"], fixed.shape, spacing)


def _child(spacing: Sequence[float], settings: dict[str, Any], workdir: str, messages: Any) -> None:
    """Entry point of the child process: register the pair saved in ``workdir``, save
    ``displacement.npy`` there and report ``("ok", path)`` or ``("error", traceback)``."""
    try:
        # read by ITK (inside ANTs) when it first starts threads, so set before importing ants
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(settings["threads"])
        configure_threads(int(settings["threads"]))  # SimpleITK, for the final conversion
        moving, fixed = (np.load(Path(workdir) / f"{name}.npy") for name in ("moving", "fixed"))
        displacement = ants_registration(moving, fixed, spacing, settings, workdir)
        target = Path(workdir) / "displacement.npy"
        np.save(target, displacement.astype(np.float32))
        messages.put(("ok", str(target)))
    except BaseException:  # noqa: BLE001 - reported to the parent
        messages.put(("error", traceback.format_exc()))


def run_in_child(pair: RegistrationInput, settings: dict[str, Any], workdir: str
                 ) -> Generator[Progress, None, np.ndarray]:
    """Run the registration in a spawned child, yielding heartbeats; terminate it on close."""
    settings = {**settings, "threads": max(1, min(int(settings["threads"]), available_cores()))}
    for name, array in (("moving", pair.moving), ("fixed", pair.fixed)):
        np.save(Path(workdir) / f"{name}.npy", np.asarray(array, dtype=np.float32))
    context = mp.get_context("spawn")
    messages = context.Queue()
    child = context.Process(target=_child, name="warpseg-ants", daemon=True,
                            args=(tuple(pair.spacing), settings, workdir, messages))
    started = time.monotonic()
    try:
        child.start()
        while child.is_alive():
            elapsed = time.monotonic() - started
            yield Progress("syn", int(elapsed), None,
                           f"ANTs {settings['type_of_transform']} running, {elapsed:.0f} s")
            child.join(HEARTBEAT_SECONDS)
        status, payload = messages.get(timeout=5.0)
    except queue.Empty:
        raise RuntimeError(f"ANTs child process ended without a result "
                           f"(exit code {child.exitcode})") from None
    except BaseException:  # closing the generator (cancel) included
        _end(child)
        raise
    finally:
        messages.close()
    if status != "ok":
        raise RuntimeError(f"ANTs registration failed in its child process:\n{payload}")
    return np.load(payload)


def _end(child: mp.process.BaseProcess) -> None:
    """Terminate ``child`` (then kill it if it lingers) and reap it."""
    if child.is_alive():
        child.terminate()
        child.join(2.0)
    if child.is_alive():
        child.kill()
        child.join()


class AntsSyn(RegistrationMethod):
    """ANTs SyN through antspyx (affine initialisation included), cancellable via a child process."""

    name: ClassVar[str] = "ants-syn"
    description: ClassVar[str] = "ANTs SyN symmetric diffeomorphic registration (affine first), via antspyx."
    iterative: ClassVar[bool] = True
    requires: ClassVar[tuple[str, ...]] = ("ants",)

    def run(self, pair: RegistrationInput) -> Generator[Progress, None, MethodOutput]:
        settings = resolve_options(ANTS_DEFAULTS, self.options, self.name)
        with tempfile.TemporaryDirectory(prefix="warpseg-ants-") as workdir:
            displacement = yield from run_in_child(pair, settings, workdir)
        details = {"type_of_transform": settings["type_of_transform"],
                   "reg_iterations": list(settings["reg_iterations"])}
        return MethodOutput(displacement.astype(np.float32), details=details)
