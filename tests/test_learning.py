"""Learned-method machinery: preprocessing, checkpoints, training steps, and the register contract."""
import numpy as np
import pytest
import torch

from conftest import blob_pair
from warpseg.engine import register, run_to_end
from warpseg.errors import InputError
from warpseg.io import Volume
from warpseg.learning.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from warpseg.learning.losses import RegistrationLoss, one_hot, soft_dice
from warpseg.learning.preprocess import (
    Preprocessing, class_argmax, field_to_native_grid, image_to_model_grid, labels_on_native_grid, plan_grid,
    probabilities_to_native_grid,
)
from warpseg.learning.registry import new_model

TINY = {"nice-trans": {"channels": (4, 8, 8, 8, 8)}, "vxm": {"encoder": (4, 8, 8, 8), "decoder": (8, 8, 8, 8, 8, 4, 4)}}


def tiny_checkpoint(tmp_path, method, ndim, spacing=None):
    model = new_model(method, ndim, **TINY[method])
    preprocessing = Preprocessing(target_spacing=spacing, size_multiple=model.size_multiple)
    return save_checkpoint(tmp_path / f"{method}_{ndim}d.pt", method=method, model=model,
                           preprocessing=preprocessing.as_dict(), training={"command": "test"})


def test_grid_plan_pads_odd_sizes_and_resizes_anisotropic_spacing():
    grid = plan_grid((37, 50, 23), (1.0, 1.0, 3.0), Preprocessing(target_spacing=2.0, size_multiple=16))
    assert grid.resized_shape == (18, 25, 34)
    assert all(size % 16 == 0 and size >= r for size, r in zip(grid.padded_shape, grid.resized_shape))
    image = torch.rand(1, 1, 37, 50, 23)
    assert image_to_model_grid(image, grid).shape[2:] == grid.padded_shape


def test_a_model_grid_translation_maps_back_in_native_voxels():
    grid = plan_grid((41, 61), (1.0, 1.0), Preprocessing(target_spacing=2.0, size_multiple=8))
    field = torch.zeros((1, 2) + grid.padded_shape)
    field[:, 0] = 1.0
    native = field_to_native_grid(field, grid)
    assert native.shape == (1, 2, 41, 61)
    native_voxels = (41 - 1) / (grid.resized_shape[0] - 1)  # align_corners resizing: ends stay ends
    assert 1.9 < native_voxels < 2.2
    assert torch.allclose(native[:, 0], torch.full_like(native[:, 0], native_voxels), atol=1e-5)
    assert torch.allclose(native[:, 1], torch.zeros_like(native[:, 1]))



@pytest.mark.parametrize("native, spacing", [((37, 30, 23), (1.0, 1.3, 2.5)), ((41, 29), (1.0, 1.0))])
def test_labels_on_the_native_grid_are_the_argmax_of_the_resized_probabilities(native, spacing):
    """The boundary-only interpolation gives the full resize's argmax wherever the top two classes differ."""
    grid = plan_grid(native, spacing, Preprocessing(target_spacing=3.0, size_multiple=8))
    assert all(r < n for r, n in zip(grid.resized_shape, native))
    torch.manual_seed(0)
    coarse = torch.randn(1, 6, *(max(2, size // 3) for size in grid.padded_shape), dtype=torch.float64)
    probabilities = torch.softmax(4 * torch.nn.functional.interpolate(
        coarse, size=grid.padded_shape, mode="bilinear" if len(native) == 2 else "trilinear"), dim=1)
    resized = probabilities_to_native_grid(probabilities, grid)[0]
    top_two = resized.topk(2, dim=0).values
    clear = (top_two[0] - top_two[1]) > 1e-9
    labels = labels_on_native_grid(probabilities, grid)
    assert labels.shape == native and len(labels.unique()) == 6
    assert clear.float().mean() > 0.999
    assert torch.equal(labels[clear], resized.argmax(0)[clear])



def test_class_argmax_is_torch_argmax_ties_included():
    scores = torch.randint(0, 3, (6, 9, 7, 5)).float()  # many ties
    assert torch.equal(class_argmax(scores), scores.argmax(0))


@pytest.mark.parametrize("method", ["nice-trans", "vxm"])
def test_checkpoint_round_trip_rebuilds_the_same_model(tmp_path, method):
    path = tiny_checkpoint(tmp_path, method, 2)
    model, description = load_checkpoint(path)
    assert description["method"] == method and "state_dict" not in description
    original = read_checkpoint(path)["state_dict"]
    assert all(torch.equal(original[key], value) for key, value in model.state_dict().items())


def test_foreign_files_are_refused_clearly(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable warpseg checkpoint"):
        read_checkpoint(junk)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="missing"):
        read_checkpoint(tmp_path / "other.pt")


def test_losses_have_their_analytic_values():
    image = torch.rand(1, 1, 20, 20)
    loss = RegistrationLoss(2, smoothness=1.0)
    terms = loss(image, image, torch.zeros(1, 2, 20, 20))
    assert terms["similarity"].item() == pytest.approx(-1.0, abs=1e-3)  # LNCC(x, x) = 1
    assert terms["smoothness"].item() == pytest.approx(0.0)
    labels = one_hot(torch.randint(0, 3, (1, 1, 20, 20)), 3)
    assert soft_dice(labels, labels).item() == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["nice-trans", "vxm"])
def test_a_few_training_steps_lower_the_loss(method):
    from warpseg.learning.train import training_step

    torch.manual_seed(0)
    moving, moving_labels = blob_pair((32, 32), np.eye(4), 1)
    fixed, fixed_labels = blob_pair((32, 32), np.eye(4), 2)
    pair = {key: torch.as_tensor(volume.array)[None, None] for key, volume in
            (("moving", moving), ("fixed", fixed), ("moving_labels", moving_labels), ("fixed_labels", fixed_labels))}
    pair["moving_labels"], pair["fixed_labels"] = pair["moving_labels"].long(), pair["fixed_labels"].long()
    model = new_model(method, 2, **TINY[method])
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss = RegistrationLoss(2, window=5, smoothness=0.1, dice_weight=1.0)
    losses = [training_step(model, optimiser, loss, pair, "cpu")["total"] for _ in range(40)]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05


@pytest.mark.parametrize("method,ndim", [("nice-trans", 2), ("vxm", 2), ("nice-trans", 3), ("vxm", 3)])
def test_learned_methods_honour_the_register_contract(tmp_path, method, ndim):
    shape = (37, 45) if ndim == 2 else (21, 26, 19)  # odd sizes, not multiples of 16
    affine = np.diag([1.0, 1.2, 2.0, 1.0])
    moving, moving_labels = blob_pair(shape, affine, 1)
    fixed, fixed_labels = blob_pair(shape, affine, 2)
    weights = tiny_checkpoint(tmp_path, method, ndim, spacing=1.5 if ndim == 3 else None)
    result = run_to_end(register(moving, fixed, method, moving_labels=moving_labels, fixed_labels=fixed_labels,
                                 weights=str(weights), device="cpu"))
    assert result.displacement.shape == (ndim,) + shape
    assert result.warped.shape == shape and np.allclose(result.warped.affine, affine)
    assert result.weights == str(weights) and "dice_mean" in result.metrics


def test_weights_of_the_wrong_dimensionality_are_refused(tmp_path):
    weights = tiny_checkpoint(tmp_path, "vxm", 3)
    image, _ = blob_pair((32, 32), np.eye(4), 1)
    with pytest.raises(InputError, match="3D model"):
        run_to_end(register(image, image, "vxm", weights=str(weights), device="cpu"))


def test_weights_may_come_as_an_option_as_in_a_benchmark_spec(tmp_path):
    """``vxm[weights=F]``: the option ``weights`` is the weights file; two files at once are refused."""
    weights = tiny_checkpoint(tmp_path, "vxm", 2)
    image, _ = blob_pair((32, 32), np.eye(4), 1)
    result = run_to_end(register(image, image, "vxm", options={"weights": str(weights)}, device="cpu"))
    assert result.weights == str(weights)
    with pytest.raises(InputError, match="two weights files were given"):
        run_to_end(register(image, image, "vxm", weights=str(weights), options={"weights": str(weights)},
                            device="cpu"))


def test_training_pairs_are_drawn_across_subjects(shared_data):
    from warpseg.learning.data import RegistrationData

    data = RegistrationData(shared_data, 2, validation_subjects=("vxm",), label_maps=2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(6):
        pair = data.sample(generator)
        assert pair["subjects"][0] != pair["subjects"][1]
        assert "vxm" not in pair["subjects"]
        assert pair["moving"].shape == pair["fixed"].shape == (1, 1, 160, 192)
    names = [name for name, _ in data.validation_pairs()]
    assert names and all("vxm" in name for name in names)
