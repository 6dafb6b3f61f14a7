"""Deterministic demo pairs built from the MNI ICBM152 2009a template that ships with nilearn.

Each pair holds two synthetic "subjects" (``moving`` and ``fixed``) with tissue label maps
(0 background, 1 CSF, 2 grey matter, 3 white matter). A subject is the template deformed by a
seeded smooth random diffeomorphism and given a seeded contrast change (gamma), a smooth bias
field and Rician-like noise. The same ``(ndim, seed)`` always gives bitwise the same arrays.

Labels are the arg-max of four probabilities resampled with the image: the template's grey- and
white-matter maps, CSF = brain mask minus grey and white matter (the brain mask is the
skull-stripped T1 > 0), and background = outside the mask.

Built pairs are cached as NIfTI under ``~/.cache/warpseg/samples/`` (``$WARPSEG_CACHE/samples/``
when that variable is set). This module never imports napari. Recipe and licence:
``sample_data/README.md`` in the source tree.
"""
from __future__ import annotations

import functools
import os
import shutil
import tempfile
import uuid
import warnings
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np

from warpseg.errors import InputError
from warpseg.io import Volume, read_volume, write_volume

RECIPE_VERSION = 1
LABEL_NAMES = {0: "background", 1: "CSF", 2: "grey matter", 3: "white matter"}
SAMPLE_KEYS = ("moving", "moving_labels", "fixed", "fixed_labels")
TEMPLATE_FILES = {tissue: f"mni_icbm152_{tissue}_tal_nlin_sym_09a_converted.nii.gz"
                  for tissue in ("t1", "gm", "wm")}
BRAIN_CENTRE_MM = (0.0, -17.0, 5.0)  # centre of the template's brain bounding box (RAS mm)
AXIAL_SLICE_Z_MM = 12.0  # the 2D pair's plane: through the lateral ventricles and basal ganglia


@dataclass(frozen=True)
class GridSpec:
    """An output voxel grid: isotropic ``spacing`` (mm), ``shape``, centred on ``centre`` (RAS mm),
    rotated by ``angles`` (degrees about x, then y, then z)."""

    spacing: float
    shape: tuple[int, ...]
    centre: tuple[float, float, float] = BRAIN_CENTRE_MM
    angles: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class SubjectRecipe:
    """How one synthetic subject departs from the template.

    ``velocity_rms_mm`` and ``velocity_control_mm`` set the amplitude and smoothness (control-point
    spacing) of the stationary velocity field; ``bias_rms`` and ``bias_control_mm`` those of the
    log bias field; ``gamma_sd`` the spread of log(gamma); ``noise_sd`` the Rician noise level
    (intensities are in [0, 1])."""

    velocity_rms_mm: float = 2.0
    velocity_control_mm: float = 32.0
    bias_rms: float = 0.08
    bias_control_mm: float = 64.0
    gamma_sd: float = 0.12
    noise_sd: float = 0.015


GRIDS = {
    2: {"moving": GridSpec(1.5, (104, 124)), "fixed": GridSpec(1.0, (160, 192))},
    3: {"moving": GridSpec(2.0, (80, 96, 84)),
        "fixed": GridSpec(1.5, (104, 126, 112), centre=(0.0, -16.0, 5.0), angles=(-3.0, 2.0, 5.0))},
}
RECIPE = SubjectRecipe()


def sample_pair(ndim: int, seed: int = 0, *, cache: bool = True) -> dict[str, Volume]:
    """The demo pair ``{"moving", "moving_labels", "fixed", "fixed_labels"}`` as volumes.

    Parameters
    ----------
    ndim
        2 for one axial slice per subject, 3 for whole-brain volumes.
    seed
        Selects the subjects; the same seed always gives the same pair.
    cache
        Read the pair from the cache folder when it is there, and store it there after building.
    """
    if not cache:
        return build_sample_pair(ndim, seed)
    folder = sample_cache_dir() / f"v{RECIPE_VERSION}" / f"pair{ndim}d-seed{seed}"
    if _is_complete(folder):
        try:
            return _read_pair(folder)
        except InputError:  # a cached file was damaged after it was written: build it again
            shutil.rmtree(folder, ignore_errors=True)
    pair = build_sample_pair(ndim, seed)
    _store_atomically(pair, folder)
    return pair


def write_sample_pair(ndim: int, folder: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write the pair as ``moving.nii.gz``, ``moving_labels.nii.gz``, ``fixed.nii.gz`` and
    ``fixed_labels.nii.gz`` in ``folder`` (created if needed); returns the paths by key."""
    return _write_pair(sample_pair(ndim, seed), Path(folder))


def sample_cache_dir() -> Path:
    """Folder of cached samples: ``$WARPSEG_CACHE/samples`` or ``~/.cache/warpseg/samples``."""
    root = os.environ.get("WARPSEG_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "warpseg"
    return base / "samples"


def build_sample_pair(ndim: int, seed: int = 0) -> dict[str, Volume]:
    """Build the pair from the template without touching the cache (see :func:`sample_pair`)."""
    if ndim not in GRIDS:
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    channels, template = _template(ndim)
    pair: dict[str, Volume] = {}
    for index, role in enumerate(("moving", "fixed")):
        rng = np.random.default_rng([seed, ndim, index])
        grid = Volume(np.zeros(GRIDS[ndim][role].shape, np.float32),
                      _grid_affine(GRIDS[ndim][role], ndim))
        image, labels = _make_subject(channels, template, grid, rng, RECIPE)
        pair[role], pair[f"{role}_labels"] = image, labels
    return pair


def _make_subject(channels: np.ndarray, template: Volume, grid: Volume, rng: np.random.Generator,
                  recipe: SubjectRecipe) -> tuple[Volume, Volume]:
    """Deform the template ``channels`` onto ``grid``, then label and restyle the intensities.

    Shapes
    ------
    channels: ``(4, *template.shape)``; the volumes returned have ``grid.shape``.
    """
    import torch

    from warpseg.spatial import integrate_velocity, moving_voxel_coordinates, sample_at

    shape, affine = grid.shape, grid.affine
    spacing = float(grid.spacing[0])
    velocity = _smooth_field(rng, shape, spacing, recipe.velocity_control_mm, grid.ndim)
    velocity *= recipe.velocity_rms_mm / spacing / np.sqrt(np.mean(velocity**2))
    with torch.no_grad():
        displacement = integrate_velocity(torch.from_numpy(velocity)[None], steps=7)
        coordinates = moving_voxel_coordinates(template, grid, displacement)
        data = torch.from_numpy(channels)[None]
        sampled = sample_at(data, coordinates, mode="bilinear")[0].numpy()
    intensity, tissue = sampled[0], sampled[1:]
    background = 1.0 - tissue.sum(axis=0, keepdims=True)
    labels = np.argmax(np.concatenate([background, tissue]), axis=0).astype(np.uint8)
    image = _restyle(np.clip(intensity, 0.0, 1.0), rng, shape, spacing, recipe)
    return (Volume(image, affine),
            Volume(labels, affine, is_labels=True, label_names=dict(LABEL_NAMES)))


def _restyle(image: np.ndarray, rng: np.random.Generator, shape: tuple[int, ...], spacing: float,
             recipe: SubjectRecipe) -> np.ndarray:
    """Gamma, then a smooth multiplicative bias field, then Rician-like noise; float32 >= 0."""
    gamma = float(np.exp(np.clip(rng.normal(0.0, recipe.gamma_sd), -0.3, 0.3)))
    log_bias = _smooth_field(rng, shape, spacing, recipe.bias_control_mm, 1)[0]
    log_bias *= recipe.bias_rms / np.sqrt(np.mean(log_bias**2))
    image = image**gamma * np.exp(log_bias)
    real = image + rng.normal(0.0, recipe.noise_sd, shape)
    imaginary = rng.normal(0.0, recipe.noise_sd, shape)
    return np.sqrt(real**2 + imaginary**2).astype(np.float32)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], spacing: float,
                  control_mm: float, components: int) -> np.ndarray:
    """Random normal control points every ``control_mm`` blended by cubic B-splines.

    Shapes
    ------
    returns ``(components, *shape)`` float32 with zero-mean, unit-scale (not normalised) values.
    """
    weights = []
    for size in shape:
        intervals = max(2, int(np.ceil((size - 1) * spacing / control_mm)))
        position = np.linspace(0.0, intervals, size)[:, None] - (np.arange(intervals + 3) - 1)[None]
        weights.append(_cubic_bspline(position))
    field = rng.standard_normal((components, *[w.shape[1] for w in weights]))
    for axis, weight in enumerate(weights):
        field = np.moveaxis(np.tensordot(weight, field, axes=([1], [axis + 1])), 0, axis + 1)
    return np.ascontiguousarray(field, dtype=np.float32)


def _cubic_bspline(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    inner = 2.0 / 3.0 - x**2 + x**3 / 2.0
    outer = (2.0 - x) ** 3 / 6.0
    return np.where(x < 1.0, inner, np.where(x < 2.0, outer, 0.0))


def _grid_affine(spec: GridSpec, ndim: int) -> np.ndarray:
    """Voxel-to-RAS affine of a grid centred on ``spec.centre`` (on the axial plane in 2D).

    The matrix is rounded to float32 so that a NIfTI round trip returns it exactly.
    """
    ax, ay, az = np.deg2rad(spec.angles)
    rot_x = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rot_y = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rot_z = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot_z @ rot_y @ rot_x * spec.spacing
    shape = np.array(list(spec.shape) + [1] * (3 - ndim), dtype=np.float64)
    centre = np.array(spec.centre)
    if ndim == 2:
        centre[2] = AXIAL_SLICE_Z_MM
    affine[:3, 3] = centre - affine[:3, :3] @ ((shape - 1) / 2.0)
    return affine.astype(np.float32).astype(np.float64)


@functools.lru_cache(maxsize=2)
def _template(ndim: int) -> tuple[np.ndarray, Volume]:
    """Template channels (T1 in [0, 1], P(CSF), P(GM), P(WM)) and the T1 as a volume.

    2D gives the axial plane at ``AXIAL_SLICE_Z_MM``.

    Shapes
    ------
    returns channels ``(4, *S)`` float32 and a volume of shape ``S``.
    """
    import nibabel as nib

    folder = resources.files("nilearn") / "datasets" / "data"
    data = {}
    for tissue, name in TEMPLATE_FILES.items():
        with resources.as_file(folder / name) as path:
            image = nib.load(str(path))
            data[tissue] = np.asarray(image.dataobj, dtype=np.float32) / 255.0
            affine = image.affine.astype(np.float64)
    mask = (data["t1"] > 0).astype(np.float32)
    csf = np.clip(1.0 - data["gm"] - data["wm"], 0.0, 1.0) * mask
    channels = np.stack([data["t1"], csf, data["gm"] * mask, data["wm"] * mask])
    if ndim == 2:
        plane = int(round(np.linalg.solve(affine, [0, 0, AXIAL_SLICE_Z_MM, 1])[2]))
        channels = channels[..., plane]
        affine = affine.copy()
        affine[:3, 3] = affine[:3, :3] @ [0, 0, plane] + affine[:3, 3]
    channels = np.ascontiguousarray(channels)
    return channels, Volume(channels[0], affine)


def _is_complete(folder: Path) -> bool:
    return all((folder / f"{key}.nii.gz").is_file() for key in SAMPLE_KEYS)


def _write_pair(pair: dict[str, Volume], folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return {key: write_volume(pair[key], folder / f"{key}.nii.gz") for key in SAMPLE_KEYS}


def _read_pair(folder: Path) -> dict[str, Volume]:
    pair = {}
    for key in SAMPLE_KEYS:
        is_labels = key.endswith("_labels")
        volume = read_volume(folder / f"{key}.nii.gz", labels=is_labels)
        pair[key] = replace(volume, label_names=dict(LABEL_NAMES)) if is_labels else volume
    return pair


def _store_atomically(pair: dict[str, Volume], folder: Path) -> None:
    """Write into a temporary sibling folder, then rename it into place (first writer wins)."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-{uuid.uuid4().hex[:8]}-",
                                        dir=folder.parent))
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)
    except OSError as error:
        warnings.warn(f"cannot cache the sample data in {folder.parent} ({error})", stacklevel=3)
        return
    try:
        _write_pair(pair, staging)
        if folder.exists() and not _is_complete(folder):  # left by an interrupted older version
            shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
    except OSError:
        pass  # another process stored the same pair first, or the disk is read-only
    finally:
        shutil.rmtree(staging, ignore_errors=True)


__all__ = ["LABEL_NAMES", "SAMPLE_KEYS", "sample_pair", "write_sample_pair", "build_sample_pair",
           "sample_cache_dir"]
