"""NIR (neural-field registration) and the test-time refinement of learned methods: a known smooth
deformation is recovered, diffeomorphic fields do not fold, progress carries previews, cancel and
``max_seconds`` stop promptly with the best field so far, and the register contract holds."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from conftest import blob_pair, drive, rotation_affine, smooth_field, textured_image
from warpseg.engine import register, run_to_end
from warpseg.errors import InputError
from warpseg.methods import MethodOutput, Progress, RegistrationInput, get_method
from warpseg.methods.base import preview_shape
from warpseg.methods.nir import local_ncc
from warpseg.metrics import normalized_cross_correlation
from warpseg.spatial import folding_percent, jacobian_determinant, warp_image

FAST = {"threads": 1, "downsize": 1, "iterations": 150, "preview_every": 25, "learning_rate": 3e-3}


def deformed_pair(shape) -> tuple[RegistrationInput, np.ndarray]:
    """``fixed = moving(x + u(x))`` for a known smooth ``u``: the ideal displacement is ``u``."""
    moving, field = textured_image(shape), smooth_field(shape)
    fixed = warp_image(torch.as_tensor(moving)[None, None], torch.as_tensor(field)[None])[0, 0].numpy()
    return RegistrationInput(moving, fixed, (1.0,) * len(shape)), field


def warped(pair: RegistrationInput, displacement: np.ndarray) -> np.ndarray:
    return warp_image(torch.as_tensor(pair.moving)[None, None], torch.as_tensor(displacement)[None])[0, 0].numpy()


@pytest.mark.parametrize("mode", ["displacement", "diffeomorphic"])
def test_recovers_a_known_smooth_deformation(mode):
    pair, truth = deformed_pair((40, 36))
    records, output = drive(get_method("nir")(mode=mode, **FAST).run(pair))
    assert output.displacement.shape == truth.shape and output.displacement.dtype == np.float32
    assert not output.partial and output.details["iterations"] == FAST["iterations"]
    middle = (slice(None), slice(8, -8), slice(8, -8))
    error = np.abs(output.displacement - truth)[middle].mean()
    assert error < 0.3 * np.abs(truth)[middle].mean(), error
    before = normalized_cross_correlation(pair.moving, pair.fixed)
    after = normalized_cross_correlation(warped(pair, output.displacement), pair.fixed)
    assert after > 0.98 and after - before > 0.5 * (1.0 - before), (before, after)
    folded = folding_percent(jacobian_determinant(torch.as_tensor(output.displacement)[None]))
    if mode == "diffeomorphic":
        assert folded == 0.0


@pytest.mark.parametrize("sampler", ["patch", "hybrid"])
def test_patch_and_hybrid_samplers_improve_the_match(sampler):
    pair, _ = deformed_pair((40, 36))
    options = {**FAST, "sampler": sampler, "patch_size": 16, "hybrid_iterations": 60, "learning_rate": 1e-3}
    _, output = drive(get_method("nir")(**options).run(pair))
    before = normalized_cross_correlation(pair.moving, pair.fixed)
    after = normalized_cross_correlation(warped(pair, output.displacement), pair.fixed)
    assert after - before > 0.5 * (1.0 - before), (sampler, before, after)


def test_progress_records_carry_small_previews():
    pair = RegistrationInput(textured_image((100, 80)), textured_image((100, 80), seed=4), (1.0, 1.0))
    records, _ = drive(get_method("nir")(threads=1, iterations=20, preview_every=5).run(pair))
    assert [record.step for record in records] == [5, 10, 15, 20]
    for record in records:
        assert isinstance(record, Progress) and record.total == 20 and "fold" in record.message
        assert np.isfinite(record.loss)
        assert isinstance(record.preview, np.ndarray) and record.preview.dtype == np.float32
        assert record.preview.shape == preview_shape((100, 80))  # the grid the viewer's live layer has


def test_the_preview_samples_the_cell_centres_of_the_preview_grid():
    """Before the field moves, a ramp's preview holds each preview cell's centre (in voxels)."""
    ramp = np.broadcast_to(np.arange(100, dtype=np.float32)[:, None], (100, 80)).copy()
    pair = RegistrationInput(ramp, textured_image((100, 80), seed=4), (1.0, 1.0))
    records, _ = drive(get_method("nir")(threads=1, iterations=1, preview_every=1, learning_rate=1e-12).run(pair))
    rows = preview_shape((100, 80))[0]
    centres = (np.arange(rows) + 0.5) * 100 / rows - 0.5
    inner = slice(3, rows - 3)  # away from the border, where smoothing pads
    assert np.abs(records[0].preview[inner, 26] - centres[inner]).max() < 0.05


def test_closing_stops_promptly_and_keeps_the_best_field():
    pair, _ = deformed_pair((40, 36))
    method = get_method("nir")(threads=1, iterations=10**6, preview_every=5)
    job = method.run(pair)
    for _, record in zip(range(3), job):
        assert record.step > 0
    closing = time.monotonic()
    job.close()
    assert time.monotonic() - closing < 1.0
    best = method.best_output()
    assert isinstance(best, MethodOutput) and best.partial and best.displacement.shape == (2, 40, 36)
    assert 15 <= best.details["iterations"] < 100


def test_max_seconds_returns_the_best_field_as_partial():
    pair, _ = deformed_pair((40, 36))
    started = time.monotonic()
    _, output = drive(get_method("nir")(threads=1, iterations=10**6, max_seconds=0.5).run(pair))
    assert time.monotonic() - started < 5.0
    assert output.partial and output.details["iterations"] < 10**6
    assert output.displacement.shape == (2, 40, 36) and np.isfinite(output.displacement).all()


def test_unknown_options_and_choices_are_clear_errors():
    pair, _ = deformed_pair((16, 16))
    with pytest.raises(InputError, match="no option"):
        drive(get_method("nir")(iteration=5).run(pair))
    with pytest.raises(InputError, match="mode"):
        drive(get_method("nir")(mode="elastic").run(pair))
    with pytest.raises(InputError, match="no option"):
        drive(get_method("vxm")(refine_iteration=5).run(pair))
    with pytest.raises(InputError, match="refine=-1: give a number of refinement steps"):
        drive(get_method("vxm")(refine=-1).run(pair))
    with pytest.raises(InputError, match="option refine_mode='elastic' is not one of"):
        drive(get_method("vxm")(refine=5, refine_mode="elastic").run(pair))


def test_register_contract_in_3d():
    moving, moving_labels = blob_pair((20, 22, 18), rotation_affine((2.0, 2.0, 2.2), 5.0, (-20, -22, -20)), 1)
    fixed, fixed_labels = blob_pair((24, 24, 20), rotation_affine((1.8, 1.8, 2.0), -3.0, (-21, -21, -20)), 2)
    job = register(moving, fixed, "nir", moving_labels=moving_labels, fixed_labels=fixed_labels, device="cpu",
                   options={"threads": 1, "iterations": 60, "preview_every": 20})
    records = []
    result = run_to_end(job, records.append)
    assert any(record.preview is not None and record.preview.ndim == 3 for record in records)
    assert result.warped.shape == fixed.shape and np.allclose(result.warped.affine, fixed.affine)
    assert result.displacement.shape == (3, *fixed.shape) and not result.partial
    assert result.metrics["dice_mean"] > result.metrics["dice_before"]
    assert result.metrics["folding_percent"] == 0.0 and result.details["iterations"] == 60


def test_refine_improves_a_learned_method(shared_data):
    from warpseg.engine.register import prepare_pair
    from warpseg.io import read_volume
    from warpseg.methods.learned import shipped_weights

    if not shipped_weights("vxm", 2).is_file():
        pytest.skip("no shipped 2D vxm weights")
    moving = read_volume(shared_data / "oasis2d" / "subjX_slice_norm.nii.gz", labels=False)
    fixed = read_volume(shared_data / "oasis2d" / "subjY_slice_norm.nii.gz", labels=False)
    pair = prepare_pair(moving, fixed, None, None, "cpu")
    _, plain = drive(get_method("vxm")().run(pair))
    records, refined = drive(get_method("vxm")(refine=60, refine_threads=1, refine_preview_every=20).run(pair))
    assert [record.stage for record in records[-3:]] == ["refine"] * 3
    assert "refine" in refined.details and "weights_file" in refined.details

    def similarity(displacement):
        image = torch.as_tensor(warped(pair, displacement))[None, None]
        return float(local_ncc(image, torch.as_tensor(pair.fixed)[None, None], 9))

    assert similarity(refined.displacement) > similarity(plain.displacement) + 0.02
    assert normalized_cross_correlation(warped(pair, refined.displacement), pair.fixed) > \
        normalized_cross_correlation(warped(pair, plain.displacement), pair.fixed)


def test_sending_finish_returns_the_best_field_so_far_through_the_engine():
    from warpseg.methods import FINISH

    moving, _ = blob_pair((32, 36), rotation_affine((1.0, 1.0, 1.0), 0, (0, 0, 0)), seed=1)
    fixed, _ = blob_pair((32, 36), rotation_affine((1.0, 1.0, 1.0), 0, (0, 0, 0)), seed=2)
    job = register(moving, fixed, "nir", options={"iterations": 10_000, "preview_every": 5})
    progress = next(job)
    while progress.stage != "optimise":
        progress = next(job)
    try:
        while True:
            job.send(FINISH)
    except StopIteration as stop:
        result = stop.value
    assert result.partial and result.details["iterations"] < 100
    assert result.metrics["ncc_after"] > result.metrics["ncc_before"]


def test_unset_iterations_and_downsize_follow_the_dimension():
    from warpseg.methods.nir import DIMENSION_DEFAULTS, NIR_DEFAULTS, FieldFit

    for ndim, shape in ((2, (24, 24)), (3, (48, 48, 48))):
        image = np.random.default_rng(0).random(shape).astype(np.float32)
        fit = FieldFit(RegistrationInput(image, image, (1.0,) * ndim), dict(NIR_DEFAULTS))
        assert fit.settings["iterations"] == DIMENSION_DEFAULTS["iterations"][ndim]
        assert fit.settings["downsize"] == DIMENSION_DEFAULTS["downsize"][ndim]
        assert FieldFit(RegistrationInput(image, image, (1.0,) * ndim),
                        {**NIR_DEFAULTS, "iterations": 7}).settings["iterations"] == 7
    small = np.random.default_rng(0).random((20, 24, 24)).astype(np.float32)  # lattice >= one LNCC window
    assert FieldFit(RegistrationInput(small, small, (1.0,) * 3), dict(NIR_DEFAULTS)).settings["downsize"] == 2.0
