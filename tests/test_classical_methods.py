"""The classical methods (SimpleITK affine, B-spline, demons; ANTs SyN): conventions, accuracy on a
known translation, progress, cancellation and error propagation, all on small synthetic images."""
from __future__ import annotations

import multiprocessing as mp
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import drive
from warpseg.methods import Progress, RegistrationInput, get_method
from warpseg.methods.sitk_runner import (from_sitk, resolve_options, run_cancellable, to_sitk,
                                         transform_to_displacement)
from warpseg.spatial import warp_image

SHIFT = {2: (2.0, -3.0), 3: (2.0, -2.0, 3.0)}
SHAPE = {2: (64, 72), 3: (40, 44, 48)}
FAST = {
    "sitk-affine": {"iterations": 40, "samples": 5000},
    "sitk-bspline": {"affine_iterations": 40, "affine_samples": 5000, "iterations": 8, "samples": 5000,
                     "shrink_factors": (2, 1), "smoothing_sigmas": (1.0, 0.0), "mesh_scale_factors": (1, 2),
                     "grid_spacing": 12.0},
    "sitk-demons": {"affine_iterations": 40, "affine_samples": 5000, "iterations": (20, 10, 5)},
    "ants-syn": {"reg_iterations": (20, 10, 0), "aff_iterations": (60, 30, 10),
                 "aff_shrink_factors": (4, 2, 1), "aff_smoothing_sigmas": (2, 1, 0)},
}


def blob_image(shape, shift) -> np.ndarray:
    """A smooth, textured picture (a broad blob and small blobs of varied brightness) translated by
    ``shift`` voxels, in [0, 1]. The texture makes the similarity metrics sensitive to scaling."""
    rng = np.random.default_rng(7)
    axes = np.meshgrid(*[np.arange(size, dtype=np.float64) for size in shape], indexing="ij")
    size = np.asarray(shape, dtype=np.float64)
    blobs = [(np.full(len(shape), 0.5), 0.22 * size.min(), 0.5)]
    blobs += [(rng.uniform(0.2, 0.8, len(shape)), rng.uniform(2.0, 4.0), rng.uniform(0.3, 1.0))
              for _ in range(12 * len(shape))]
    image = np.zeros(shape)
    for centre, width, weight in blobs:
        middle = centre * size + np.asarray(shift)
        squared = sum((axis - c) ** 2 for axis, c in zip(axes, middle))
        image += weight * np.exp(-squared / (2 * width**2))
    return (image / image.max()).astype(np.float32)


def shifted_pair(ndim: int, spacing=None) -> RegistrationInput:
    """``moving(x + SHIFT) == fixed(x)``: the ideal displacement is the constant ``SHIFT``."""
    shape = SHAPE[ndim]
    spacing = spacing or (1.0,) * ndim
    return RegistrationInput(moving=blob_image(shape, SHIFT[ndim]), fixed=blob_image(shape, (0.0,) * ndim),
                             spacing=tuple(spacing))


def check_recovers_shift(name: str, ndim: int, spacing=None) -> list[Progress]:
    """Run ``name`` fast on a shifted pair: the central displacement must be the shift (in voxels,
    whatever the spacing) and warping must bring moving close to fixed."""
    pair = shifted_pair(ndim, spacing)
    records, output = drive(get_method(name)(**FAST[name]).run(pair))
    displacement = output.displacement
    assert displacement.shape == (ndim, *pair.fixed.shape) and displacement.dtype == np.float32
    middle = tuple(slice(s // 3, s - s // 3) for s in pair.fixed.shape)
    for axis, expected in enumerate(SHIFT[ndim]):
        error = np.abs(displacement[axis][middle] - expected)
        assert np.median(error) < 0.5 and error.mean() < 0.75, (name, axis, error.mean())
    warped = warp_image(torch.as_tensor(pair.moving)[None, None], torch.as_tensor(displacement)[None])
    before = np.abs(pair.moving - pair.fixed)[middle].mean()
    after = np.abs(warped[0, 0].numpy() - pair.fixed)[middle].mean()
    assert after < 0.25 * before, (name, before, after)
    assert records and all(isinstance(record, Progress) for record in records)
    return records


def test_local_frame_and_voxel_units():
    array = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    image = to_sitk(array, (1.0, 2.0, 0.5))
    assert image.GetSize() == (5, 6, 7) and image.GetSpacing() == (1.0, 2.0, 0.5)
    assert image.GetOrigin() == (0.0, 0.0, 0.0) and image[1, 2, 3] == pytest.approx(array[1, 2, 3])
    np.testing.assert_array_equal(from_sitk(image), array)
    _, displacement = drive(transform_to_displacement(sitk.TranslationTransform(3, (1.0, 4.0, -1.0)), image))
    assert displacement.shape == (3, 5, 6, 7)
    np.testing.assert_allclose(displacement[:, 2, 3, 4], [1.0, 2.0, -2.0], atol=1e-6)


@pytest.mark.parametrize("ndim, spacing", [(2, None), (3, None), (2, (0.8, 1.5))])
@pytest.mark.parametrize("name", ["sitk-affine", "sitk-bspline", "sitk-demons"])
def test_sitk_methods_recover_a_translation(name, ndim, spacing):
    records = check_recovers_shift(name, ndim, spacing)
    assert any(record.loss is not None for record in records)
    assert any(record.total and record.step > 0 for record in records)


def test_worker_errors_reach_the_caller():
    demons = sitk.DiffeomorphicDemonsRegistrationFilter()
    two, three = to_sitk(np.zeros((8, 8)), (1, 1)), to_sitk(np.zeros((8, 8, 8)), (1, 1, 1))
    with pytest.raises(RuntimeError):
        drive(run_cancellable(lambda: demons.Execute(two, three), demons, stage="demons"))


def test_unknown_and_cast_options():
    from warpseg.errors import InputError

    defaults = {"iterations": 10, "shrink_factors": (4, 2, 1), "rate": 1.0}
    resolved = resolve_options(defaults, {"iterations": "5", "shrink_factors": "2,1"}, "m")
    assert resolved == {"iterations": 5, "shrink_factors": (2, 1), "rate": 1.0}
    with pytest.raises(InputError, match="no option"):
        resolve_options(defaults, {"iteration": 5}, "m")
    assert resolve_options(defaults, {"iterations": 7.0}, "m")["iterations"] == 7
    assert resolve_options(defaults, {"iterations": str(2**60 + 1)}, "m")["iterations"] == 2**60 + 1
    with pytest.raises(InputError, match=r"iterations=2.5 is not a valid int: give a whole number"):
        resolve_options(defaults, {"iterations": 2.5}, "m")
    flags = {"fixed_is_atlas": False}
    assert resolve_options(flags, {"fixed_is_atlas": "Yes"}, "m") == {"fixed_is_atlas": True}
    assert resolve_options(flags, {"fixed_is_atlas": 0}, "m") == {"fixed_is_atlas": False}
    with pytest.raises(InputError, match="fixed_is_atlas='maybe' is not a valid bool: give true or false"):
        resolve_options(flags, {"fixed_is_atlas": "maybe"}, "m")


def sitk_workers() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("warpseg-sitk")]


@pytest.mark.parametrize("name, stage, options", [
    ("sitk-affine", "affine", {"iterations": 100000, "samples": 10**7, "shrink_factors": (1,),
                               "smoothing_sigmas": (0.0,), "learning_rate": 0.05}),
    ("sitk-bspline", "bspline", {"affine": False, "iterations": 100000, "samples": 10**7}),
    ("sitk-demons", "demons", {"affine": False, "iterations": (100000, 100000, 100000)}),
])
def test_closing_stops_the_work_promptly(name, stage, options):
    rng = np.random.default_rng(1)
    noise = [rng.random((64, 64, 64)).astype(np.float32) for _ in range(2)]
    job = get_method(name)(**options).run(RegistrationInput(noise[0], noise[1], (1.0, 1.0, 1.0)))
    started = time.monotonic()
    for record in job:
        if record.stage == stage and record.step >= 1:
            break
        assert time.monotonic() - started < 30, "the iterative stage never started"
    else:
        pytest.fail("the job ended before it could be cancelled")
    closing = time.monotonic()
    job.close()
    assert time.monotonic() - closing < 2.0
    assert not sitk_workers()


# ANTs: skipped cleanly when antspyx is not installed.

@pytest.mark.parametrize("ndim, spacing", [(3, None), (2, (0.8, 1.5))])
def test_ants_syn_recovers_a_translation(ndim, spacing):
    pytest.importorskip("ants")
    records = check_recovers_shift("ants-syn", ndim, spacing)
    assert all(record.stage == "syn" for record in records)


@pytest.mark.parametrize("ndim, spacing", [(2, (1.0, 1.3)), (3, (1.2, 1.0, 0.8))])
def test_ants_transforms_compose_as_apply_transforms(tmp_path, ndim, spacing):
    """Our one displacement of ANTs' [warp, affine] warps exactly as ``ants.apply_transforms``."""
    ants = pytest.importorskip("ants")
    from warpseg.methods.ants_syn import ants_transforms_to_displacement

    shape = SHAPE[ndim]
    fixed = blob_image(shape, (0.0,) * ndim)
    axes = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    moving = (blob_image(shape, SHIFT[ndim]) * (1 + 0.3 * axes[0])).astype(np.float32)  # not only a shift
    image = {name: ants.from_numpy(array, origin=(0.0,) * ndim, spacing=spacing)
             for name, array in (("fixed", fixed), ("moving", moving))}
    result = ants.registration(image["fixed"], image["moving"], "SyN", outprefix=str(tmp_path / "t_"),
                               reg_iterations=(20, 10, 0), aff_iterations=(60, 30, 10),
                               aff_shrink_factors=(4, 2, 1), aff_smoothing_sigmas=(2, 1, 0))
    transforms = result["fwdtransforms"]
    assert transforms[0].endswith(".nii.gz") and transforms[1].endswith(".mat")
    expected = ants.apply_transforms(image["fixed"], image["moving"], transforms,
                                     interpolator="linear").numpy()

    def warped(order):
        displacement = ants_transforms_to_displacement(order, shape, spacing)
        field = torch.as_tensor(displacement)[None]
        return warp_image(torch.as_tensor(moving)[None, None], field)[0, 0].numpy()

    inner = tuple(slice(4, -4) for _ in shape)
    assert np.abs(warped(transforms) - expected)[inner].max() < 1e-3
    assert np.abs(warped(transforms[::-1]) - expected)[inner].max() > 1e-2  # the order matters here


def ants_folders() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("warpseg-ants-*"))


def test_closing_ants_syn_terminates_its_child_and_cleans_up():
    pytest.importorskip("ants")
    folders = ants_folders()
    pair = RegistrationInput(*(np.random.default_rng(2).random((2, 48, 48, 48)).astype(np.float32)),
                             spacing=(1.0, 1.0, 1.0))
    job = get_method("ants-syn")(reg_iterations=(1000, 1000, 1000)).run(pair)
    for record in job:
        assert record.stage == "syn" and record.total is None
        if record.step >= 5:  # past the child's start-up: ANTs itself is running
            break
    closing = time.monotonic()
    job.close()
    assert time.monotonic() - closing < 3.0
    assert not [child for child in mp.active_children() if child.name == "warpseg-ants"]
    assert ants_folders() == folders


def test_ants_errors_reach_the_caller():
    pytest.importorskip("ants")
    pair = shifted_pair(2)
    with pytest.raises(RuntimeError, match="ANTs registration failed"):
        drive(get_method("ants-syn")(type_of_transform="NoSuchTransform").run(pair))


@pytest.mark.parametrize("ndim", [2, 3])
def test_bspline_streams_a_preview_of_the_warp_after_each_level(ndim):
    """The last preview is the final warp, sampled on a coarse grid over the fixed image's extent."""
    from warpseg.methods.base import preview_shape

    pair = shifted_pair(ndim, (0.8, 1.5, 1.0)[:ndim])
    records, output = drive(get_method("sitk-bspline")(**FAST["sitk-bspline"]).run(pair))
    previews = [record.preview for record in records if record.preview is not None]
    assert len(previews) == len(FAST["sitk-bspline"]["shrink_factors"])
    assert all(p.shape == preview_shape(pair.fixed.shape) for p in previews)  # the viewer's live layer grid
    warped = warp_image(torch.as_tensor(pair.moving)[None, None], torch.as_tensor(output.displacement)[None])
    coarse = torch.nn.functional.interpolate(warped, size=previews[-1].shape, mode="area")[0, 0].numpy()
    moving = torch.nn.functional.interpolate(torch.as_tensor(pair.moving)[None, None], size=previews[-1].shape,
                                             mode="area")[0, 0].numpy()
    assert np.abs(previews[-1] - coarse).mean() < 0.5 * np.abs(moving - coarse).mean()


@pytest.mark.parametrize("name", ["sitk-affine", "sitk-bspline"])
def test_the_same_input_gives_the_same_result(name):
    """Random metric sampling is seeded (ITK would read seed 0 as 'use the clock')."""
    pair = shifted_pair(2)
    first = drive(get_method(name)(**FAST[name], threads=1).run(pair))[1].displacement
    second = drive(get_method(name)(**FAST[name], threads=1).run(pair))[1].displacement
    np.testing.assert_array_equal(first, second)
