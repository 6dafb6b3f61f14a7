"""NIR: registration by fitting a neural field to one pair (Sun et al., "Medical Image Registration
via Neural Fields").

A small MLP maps a fixed-image coordinate in [-1, 1] (Fourier-encoded, sine activations) to a
displacement (``mode="displacement"``) or to a stationary velocity that is integrated by scaling
and squaring on a grid (``mode="diffeomorphic"``). Adam fits it to ``-LNCC`` plus a penalty on
regions that fold (``det J`` below a small margin), on coordinates drawn by a sampler:

* ``downsize``: a coarse grid of the whole fixed image against a smoothed, downsampled moving image;
* ``patch``: random patches at full resolution;
* ``hybrid``: a first field fitted with ``downsize`` for ``hybrid_iterations``, then frozen; a
  second field fitted on top of it with patches.

The same machinery refines any starting field (:class:`FieldFit` with ``initial``), which is how
learned methods run ``refine``: the moving image is warped by the start, the field models the
residual ``r``, and the result is the composition ``x -> x + r(x) + initial(x + r(x))``.

Cancelling: closing the generator stops at the next iteration. The method keeps its
:class:`FieldFit`, so a caller that closed the run can still ask
:meth:`NeuralFieldRegistration.best_output` for the best field so far; ``max_seconds`` ends the
run by itself with that field, marked partial.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from warpseg.methods.base import (FINISH, MethodOutput, Progress, RegistrationInput, RegistrationMethod,
                                  preview_shape)
from warpseg.methods.sitk_runner import resolve_options
from warpseg.spatial import (compose_displacements, folding_percent, gaussian_blur, integrate_velocity,
                             jacobian_determinant, sample_at, warp_image)

NIR_DEFAULTS: dict[str, Any] = {
    "mode": "diffeomorphic",     # "displacement" or "diffeomorphic" (stationary velocity)
    "sampler": "downsize",       # "downsize", "patch" or "hybrid"
    "iterations": 0,             # Adam steps in all (0: 150 in 2D, 30 in 3D; see DIMENSION_DEFAULTS)
    "learning_rate": 1.5e-3,
    "regularisation": 10.0,      # weight of the folding penalty mean(relu(margin - det J))
    "window": 9,                 # LNCC window, voxels of the sampled grid
    "downsize": 0,               # coarse-grid factor of the downsize sampler (0: 2 in 2D, 4 in 3D)
    "final_downsize": 0,         # the result is evaluated this much coarser, then upsampled (0: 1 in 2D,
                                 # `downsize` in 3D, where a full-grid MLP pass costs far more than the fit)
    "patch_size": 32,            # patch side of the patch sampler, voxels
    "patches": 4,                # patches per step
    "hybrid_iterations": 200,    # downsize steps of the hybrid sampler before its patch steps
    "hidden": 64,                # MLP width
    "layers": 3,                 # sine layers
    "frequencies": 4,            # octaves of the Fourier coordinate encoding
    "omega": 5.0,                # frequency of the first sine layer
    "hidden_omega": 30.0,        # frequency factor of the other sine layers
    "integration_steps": 7,      # scaling-and-squaring steps (diffeomorphic mode)
    "seed": 0,
    "threads": 1,                # torch CPU threads (0: leave torch's setting); 1 is fastest for
                                 # this small MLP on a busy CPU (10x faster than 2 in our bench)
    "preview_every": 10,         # iterations between progress records with a preview
    "max_seconds": None,         # stop after this long and return the best field, marked partial
}
DIMENSION_DEFAULTS = {  # chosen on the dev pairs (BENCHMARKS.md): 3D trades iterations for time
    "iterations": {2: 150, 3: 30},
    "downsize": {2: 2, 3: 4},
}
FOLD_MARGIN = 0.05           # det J below this is penalised
CHUNK_POINTS = 1 << 18       # points per MLP call when evaluating a whole grid


# --- the neural field ------------------------------------------------------------------------

def uniform(shape: tuple[int, ...], bound: float, generator: torch.Generator) -> torch.Tensor:
    """Values uniform in ``[-bound, bound]`` drawn from ``generator`` (CPU)."""
    return (torch.rand(shape, generator=generator) * 2.0 - 1.0) * bound


class SineLayer(torch.nn.Module):
    """``sin(omega * (W x + b))`` with SIREN initialisation (Sitzmann et al. 2020)."""

    def __init__(self, inputs: int, outputs: int, omega: float, first: bool, generator: torch.Generator):
        super().__init__()
        self.omega = omega
        self.linear = torch.nn.Linear(inputs, outputs)
        bound = 1.0 / inputs if first else math.sqrt(6.0 / inputs) / omega
        with torch.no_grad():
            self.linear.weight.copy_(uniform((outputs, inputs), bound, generator))
            self.linear.bias.copy_(uniform((outputs,), 1.0 / math.sqrt(inputs), generator))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.omega * self.linear(points))


class NeuralField(torch.nn.Module):
    """An MLP from normalised coordinates to a vector in normalised units, zero-ish at the start.

    Shapes
    ------
    forward: points ``(N, ndim)`` in [-1, 1]; returns ``(N, ndim)``.
    """

    def __init__(self, ndim: int, hidden: int, layers: int, frequencies: int, omega: float, seed: int,
                 hidden_omega: float = 30.0):
        super().__init__()
        generator = torch.Generator().manual_seed(int(seed))
        self.register_buffer("octaves", math.pi * 2.0 ** torch.arange(frequencies, dtype=torch.float32))
        inputs = ndim * (1 + 2 * frequencies)
        sizes = [inputs] + [hidden] * layers
        self.body = torch.nn.Sequential(*[
            SineLayer(sizes[i], sizes[i + 1], omega if i == 0 else hidden_omega, i == 0, generator)
            for i in range(layers)])
        self.head = torch.nn.Linear(hidden, ndim)
        with torch.no_grad():  # near zero: the fit starts at the identity
            self.head.weight.copy_(uniform((ndim, hidden), 1e-4, generator))
            self.head.bias.zero_()

    def encode(self, points: torch.Tensor) -> torch.Tensor:
        """Points and their sines and cosines at each octave: ``(N, ndim * (1 + 2 F))``."""
        angles = (points[:, :, None] * self.octaves).flatten(1)
        return torch.cat([points, torch.sin(angles), torch.cos(angles)], dim=1)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.encode(points)))


# --- grids, images and samples ---------------------------------------------------------------

def normalised_grid(shape: tuple[int, ...], device) -> torch.Tensor:
    """Coordinates of a lattice spanning [-1, 1] on every axis: ``(ndim, *shape)``."""
    axes = [torch.linspace(-1.0, 1.0, n, device=device) if n > 1 else torch.zeros(1, device=device)
            for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def voxels_per_unit(shape: tuple[int, ...], device) -> torch.Tensor:
    """Voxels of a lattice per normalised unit on each axis, ``(n - 1) / 2``: ``(1, ndim, 1, ...)``."""
    scale = torch.tensor([max(n - 1, 1) / 2.0 for n in shape], device=device)
    return scale.view(1, len(shape), *([1] * len(shape)))


def smoothed(image: torch.Tensor, factor: float) -> torch.Tensor:
    """``image`` smoothed for sampling on a lattice ``factor`` times coarser (no-op at 1)."""
    return gaussian_blur(image, 0.5 * (factor - 1.0))


@dataclass
class Sample:
    """Points of one step and what they are compared with.

    The field is computed on the points' lattice, in that lattice's voxels (``scale`` of them
    per normalised unit); ``to_moving`` turns those voxels into ``moving``'s voxels.

    Shapes
    ------
    points: ``(B, ndim, *s)`` normalised; origin: ``(B, ndim, *s)`` voxel coordinates of the
    points in ``moving``; scale, to_moving: ``(1, ndim, 1, ...)``; moving: ``(1, 1, *S)``;
    fixed: ``(B, 1, *s)``.
    """

    points: torch.Tensor
    origin: torch.Tensor
    scale: torch.Tensor
    moving: torch.Tensor
    fixed: torch.Tensor
    to_moving: torch.Tensor | float = 1.0


def coarse_sample(moving: torch.Tensor, fixed: torch.Tensor, factor: float,
                  jitter: torch.Tensor | None = None) -> Sample:
    """The whole image on a lattice ``factor`` times coarser (the downsize sampler).

    ``moving`` and ``fixed`` are full-resolution images already smoothed for ``factor``;
    ``jitter`` ``(ndim,)`` shifts the lattice by that share of its spacing, so that over many
    steps the loss (and the folding penalty) sees the field between the lattice's points too.
    """
    full_shape = tuple(fixed.shape[2:])
    shape = tuple(max(2, int(round((n - 1) / factor)) + 1) for n in full_shape)
    points = normalised_grid(shape, fixed.device)[None]
    scale = voxels_per_unit(shape, fixed.device)
    if jitter is not None:
        points = points + jitter.to(fixed.device).view(scale.shape) / scale
    full_scale = voxels_per_unit(full_shape, fixed.device)
    origin = (points + 1.0) * full_scale
    return Sample(points, origin, scale, moving, sample_at(fixed, origin), full_scale / scale)


def preview_sample(moving: torch.Tensor, fixed: torch.Tensor) -> Sample:
    """The whole image on its preview grid (:func:`preview_shape`: cell centres of a coarser grid
    spanning the image's extent), from ``moving`` and ``fixed`` at full resolution."""
    full_shape = tuple(fixed.shape[2:])
    shape = preview_shape(full_shape)
    steps = [n / m for n, m in zip(full_shape, shape)]  # voxels per preview voxel
    centres = [(torch.arange(m, device=fixed.device) + 0.5) * step - 0.5 for m, step in zip(shape, steps)]
    normalised = [c / ((n - 1) / 2.0) - 1.0 if n > 1 else torch.zeros_like(c) for c, n in zip(centres, full_shape)]
    origin = torch.stack(torch.meshgrid(*centres, indexing="ij"))[None]
    points = torch.stack(torch.meshgrid(*normalised, indexing="ij"))[None]
    to_moving = torch.tensor(steps, device=fixed.device).view(1, len(steps), *([1] * len(steps)))
    factor = max(steps)
    return Sample(points, origin, voxels_per_unit(full_shape, fixed.device) / to_moving, smoothed(moving, factor),
                  sample_at(smoothed(fixed, factor), origin), to_moving)


def patch_sample(moving: torch.Tensor, fixed: torch.Tensor, size: int, count: int,
                 generator: torch.Generator) -> Sample:
    """``count`` random full-resolution patches of side ``size`` (the patch sampler)."""
    shape = fixed.shape[2:]
    sides = [min(size, n) for n in shape]
    grid = normalised_grid(tuple(shape), fixed.device)
    points, values = [], []
    for _ in range(count):
        corner = [int(torch.randint(0, n - s + 1, (1,), generator=generator)) for n, s in zip(shape, sides)]
        window = tuple(slice(c, c + s) for c, s in zip(corner, sides))
        points.append(grid[(slice(None), *window)])
        values.append(fixed[(0, slice(None), *window)])
    points = torch.stack(points)
    scale = voxels_per_unit(tuple(shape), fixed.device)
    return Sample(points, (points + 1.0) * scale, scale, moving, torch.stack(values))


# --- losses and fields -----------------------------------------------------------------------

def local_ncc(first: torch.Tensor, second: torch.Tensor, window: int, eps: float = 1e-5) -> torch.Tensor:
    """Mean squared local normalised cross-correlation in a box ``window`` (as MONAI's LNCC).

    Shapes
    ------
    first, second: ``(B, 1, *S)``; returns a scalar in [0, 1] (1: identical up to local gain).
    """
    pool = F.avg_pool2d if first.dim() == 4 else F.avg_pool3d
    window = max(1, min(int(window) | 1, *first.shape[2:]) | 1)

    def mean(image: torch.Tensor) -> torch.Tensor:
        return pool(image, window, stride=1, padding=window // 2, count_include_pad=False)

    mean_first, mean_second = mean(first), mean(second)
    variance_first = (mean(first * first) - mean_first**2).clamp(min=0)
    variance_second = (mean(second * second) - mean_second**2).clamp(min=0)
    covariance = mean(first * second) - mean_first * mean_second
    return (covariance**2 / (variance_first * variance_second + eps)).mean()


def folding_penalty(determinant: torch.Tensor) -> torch.Tensor:
    """Mean of ``relu(margin - det J)``: zero where the map keeps its orientation with room to spare."""
    return F.relu(FOLD_MARGIN - determinant).mean()


def field_on_lattice(network: torch.nn.Module, points: torch.Tensor, scale: torch.Tensor,
                     settings: dict[str, Any]) -> torch.Tensor:
    """The network's displacement on a lattice, in that lattice's voxel units.

    Shapes
    ------
    points: ``(B, ndim, *s)`` normalised; scale: ``(1, ndim, 1, ...)``; returns ``(B, ndim, *s)``.
    """
    ndim = points.shape[1]
    flat = torch.movedim(points, 1, -1).reshape(-1, ndim)
    vectors = torch.cat([network(chunk) for chunk in flat.split(CHUNK_POINTS)])
    field = torch.movedim(vectors.reshape(points.shape[0], *points.shape[2:], ndim), -1, 1) * scale
    if settings["mode"] == "diffeomorphic":
        field = integrate_velocity(field, int(settings["integration_steps"]))
    return field


def sample_loss(network: torch.nn.Module, sample: Sample, settings: dict[str, Any]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``-LNCC + regularisation * folding`` on one sample, and the Jacobian determinants."""
    displacement = field_on_lattice(network, sample.points, sample.scale, settings)
    moving = sample.moving.expand(displacement.shape[0], *sample.moving.shape[1:])
    warped = sample_at(moving, sample.origin + displacement * sample.to_moving)
    determinant = jacobian_determinant(displacement)
    loss = -local_ncc(warped, sample.fixed, int(settings["window"]))
    return loss + float(settings["regularisation"]) * folding_penalty(determinant), determinant


def composed(residual: torch.Tensor, initial: torch.Tensor | None) -> torch.Tensor:
    """``x + r(x) + initial(x + r(x))``: the residual first, then the start field."""
    if initial is None:
        return residual
    return compose_displacements(initial, residual)


# --- the optimisation ------------------------------------------------------------------------

def check_settings(settings: dict[str, Any], method: str, prefix: str = "") -> dict[str, Any]:
    """``settings`` with ``max_seconds`` as a float (or None); an error for unknown modes or samplers.

    ``prefix`` is what the user's option names put before the NIR keys (``refine_`` for a learned method).
    """
    from warpseg.errors import InputError

    choices = {"mode": ("displacement", "diffeomorphic"), "sampler": ("downsize", "patch", "hybrid")}
    for key, allowed in choices.items():
        if settings[key] not in allowed:
            raise InputError(f"{method} option {prefix}{key}={settings[key]!r} is not one of: {', '.join(allowed)}")
    limit = settings["max_seconds"]
    try:
        settings["max_seconds"] = None if limit in (None, "", "none", "None") else float(limit)
    except (TypeError, ValueError):
        raise InputError(f"{method} option {prefix}max_seconds={limit!r} is not a number of seconds") from None
    return settings


class FieldFit:
    """Neural fields fitted to one pair, step by step, remembering the best state seen.

    The best state is the one with the lowest loss on the downsize sampler's fixed grid; with
    random patches the losses of different steps are not comparable, so the latest state counts.

    Shapes
    ------
    pair images: ``S``; initial: ``(ndim, *S)`` in fixed voxel units, or None for the identity.
    """

    def __init__(self, pair: RegistrationInput, settings: dict[str, Any],
                 initial: np.ndarray | None = None) -> None:
        self.settings = {**settings, **{key: by_ndim[pair.ndim] for key, by_ndim in DIMENSION_DEFAULTS.items()
                                        if not settings[key]}}
        if not settings["downsize"] and pair.ndim == 3:  # small volumes: the lattice keeps an LNCC window
            fitting = min(pair.fixed.shape) / (int(settings["window"]) + 1.0)
            self.settings["downsize"] = max(1.0, min(float(self.settings["downsize"]), fitting))
        self.device = torch.device(pair.device)
        self.moving, self.fixed = (torch.as_tensor(np.asarray(image, np.float32), device=self.device)[None, None]
                                   for image in (pair.moving, pair.fixed))
        self.start = None if initial is None else torch.as_tensor(
            np.asarray(initial, np.float32), device=self.device)[None]
        self.generator = torch.Generator().manual_seed(int(settings["seed"]))
        self.network: NeuralField | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_loss, self.last_loss, self.iterations_done = math.inf, math.nan, 0

    def stages(self) -> list[tuple[str, int]]:
        """``(sampler, iterations)`` of each field fitted in turn."""
        total, sampler = int(self.settings["iterations"]), self.settings["sampler"]
        if sampler != "hybrid":
            return [(sampler, total)]
        first = min(total, int(self.settings["hybrid_iterations"]))
        return [("downsize", first), ("patch", total - first)]

    def new_network(self, index: int) -> None:
        """A fresh field (near the identity) on top of the current start."""
        settings = self.settings
        self.network = NeuralField(self.fixed.dim() - 2, int(settings["hidden"]), int(settings["layers"]),
                                   int(settings["frequencies"]), float(settings["omega"]),
                                   int(settings["seed"]) + index, float(settings["hidden_omega"])).to(self.device)
        self.optimiser = torch.optim.Adam(self.network.parameters(), lr=float(settings["learning_rate"]))
        self.best_state, self.best_loss = None, math.inf
        self.moving_start = self.moving if self.start is None else warp_image(self.moving, self.start)
        factor = float(settings["downsize"])
        self.smooth_images = smoothed(self.moving_start, factor), smoothed(self.fixed, factor)
        self.preview_sample = preview_sample(self.moving_start, self.fixed)

    def sample(self, sampler: str) -> Sample:
        """The points of the next step."""
        if sampler == "downsize":
            jitter = torch.rand(self.fixed.dim() - 2, generator=self.generator) - 0.5
            return coarse_sample(*self.smooth_images, float(self.settings["downsize"]), jitter)
        return patch_sample(self.moving_start, self.fixed, int(self.settings["patch_size"]),
                            int(self.settings["patches"]), self.generator)

    def step(self, sampler: str) -> float:
        """One Adam step; returns the share of folded sampled points (%)."""
        loss, determinant = sample_loss(self.network, self.sample(sampler), self.settings)
        self.last_loss = float(loss.detach())
        if sampler == "downsize" and self.last_loss < self.best_loss:  # the state that gave it
            self.best_loss = self.last_loss
            self.best_state = {k: v.detach().clone() for k, v in self.network.state_dict().items()}
        elif sampler != "downsize":
            self.best_state, self.best_loss = None, self.last_loss
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        return folding_percent(determinant.detach())

    def best_network(self) -> torch.nn.Module:
        """The current field with its best state (itself when the latest state is the best)."""
        if self.best_state is None:
            return self.network
        network = copy.deepcopy(self.network)
        network.load_state_dict(self.best_state)
        return network

    @torch.no_grad()
    def best_displacement(self) -> torch.Tensor:
        """The best field so far on the whole fixed grid, composed on the start: ``(1, ndim, *S)``."""
        if self.network is None:
            return self.start if self.start is not None else torch.zeros(
                (1, self.fixed.dim() - 2, *self.fixed.shape[2:]), device=self.device)
        shape = tuple(self.fixed.shape[2:])
        factor = float(self.settings["final_downsize"]) or (
            float(self.settings["downsize"]) if len(shape) == 3 else 1.0)
        lattice = tuple(max(2, math.ceil(n / factor)) for n in shape) if factor > 1 else shape
        residual = field_on_lattice(self.best_network(), normalised_grid(lattice, self.device)[None],
                                    voxels_per_unit(lattice, self.device), self.settings)
        if lattice != shape:  # lattice voxels -> full-grid voxels, then resample
            residual = residual * (voxels_per_unit(shape, self.device) / voxels_per_unit(lattice, self.device))
            residual = F.interpolate(residual, size=shape, mode="bilinear" if len(shape) == 2 else "trilinear",
                                     align_corners=True)
        return composed(residual, self.start)

    @torch.no_grad()
    def preview(self) -> np.ndarray:
        """The moving image warped by the current field, on the fixed image's preview grid."""
        sample = self.preview_sample
        displacement = field_on_lattice(self.network, sample.points, sample.scale, self.settings)
        return sample_at(sample.moving, sample.origin + displacement * sample.to_moving)[0, 0].float().cpu().numpy()

    def best_output(self, partial: bool = False) -> MethodOutput:
        """The best field so far as a method's output."""
        displacement = self.best_displacement()[0].float().cpu().numpy().astype(np.float32)
        loss = self.best_loss if math.isfinite(self.best_loss) else self.last_loss
        details = {"iterations": self.iterations_done, "final_loss": loss,
                   "mode": self.settings["mode"], "sampler": self.settings["sampler"]}
        return MethodOutput(displacement, details=details, partial=partial)

    def run(self, stage: str = "optimise") -> Generator[Progress, None, MethodOutput]:
        """Fit the fields, yielding a progress record with a preview every ``preview_every`` steps.

        Returns the best field; when ``max_seconds`` runs out or :data:`FINISH` is sent, the best
        so far, partial.
        """
        settings, started = self.settings, time.perf_counter()
        total, every = int(settings["iterations"]), max(1, int(settings["preview_every"]))
        threads = torch.get_num_threads()
        if int(settings["threads"]) > 0:
            torch.set_num_threads(int(settings["threads"]))
        try:
            for index, (sampler, count) in enumerate(self.stages()):
                if count <= 0:
                    continue
                if self.network is not None:  # freeze the previous field: it becomes the start
                    self.start = self.best_displacement()
                self.new_network(index)
                for _ in range(count):
                    with torch.enable_grad():
                        folded = self.step(sampler)
                    self.iterations_done += 1
                    if (settings["max_seconds"] is not None
                            and time.perf_counter() - started > settings["max_seconds"]):
                        return self.best_output(partial=True)
                    if self.iterations_done % every == 0 or self.iterations_done == total:
                        request = yield Progress(stage, self.iterations_done, total,
                                                 f"{sampler}: fold {folded:.2f}%", loss=self.last_loss,
                                                 preview=self.preview())
                        if request == FINISH:
                            return self.best_output(partial=True)
            return self.best_output()
        finally:
            torch.set_num_threads(threads)


class NeuralFieldRegistration(RegistrationMethod):
    """NIR: a neural field fitted to the pair by gradient descent (no training set, no weights).

    After a run or a cancel, :meth:`best_output` gives the best field found so far.
    """

    name: ClassVar[str] = "nir"
    description: ClassVar[str] = ("Neural-field registration (NIR): a sine MLP over coordinates, "
                                  "optimised for this pair; diffeomorphic by default.")
    iterative: ClassVar[bool] = True
    can_finish_early: ClassVar[bool] = True
    streams_preview: ClassVar[bool] = True
    needs_weights: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = NIR_DEFAULTS

    def __init__(self, weights: str | None = None, **options: Any) -> None:
        super().__init__(weights, **options)
        self.fit: FieldFit | None = None

    def run(self, pair: RegistrationInput) -> Generator[Progress, None, MethodOutput]:
        settings = check_settings(resolve_options(NIR_DEFAULTS, self.options, self.name), self.name)
        self.fit = FieldFit(pair, settings)
        return (yield from self.fit.run())

    def best_output(self) -> MethodOutput | None:
        """The best field of the last run so far, marked partial (None before any run)."""
        return None if self.fit is None else self.fit.best_output(partial=True)
