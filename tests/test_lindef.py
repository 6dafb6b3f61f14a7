"""The linear + deformable CNN (lindef): fold-free by construction, pluggable similarity, the register contract."""
import json

import numpy as np
import pytest
import torch

from conftest import blob_pair
from warpseg.cli import main
from warpseg.engine import register, run_to_end, write_result
from warpseg.errors import InputError
from warpseg.learning.checkpoint import read_checkpoint, save_checkpoint
from warpseg.learning.losses import (MutualInformationLoss, RegistrationLoss, SimilarityLoss,
                                     parse_similarity)
from warpseg.learning.preprocess import Preprocessing
from warpseg.learning.registry import new_model
from warpseg.learning.train import training_step
from warpseg.models import LinearDeformable
from warpseg.models.lindef import enforce_diagonal_dominance, gradients_to_displacement
from warpseg.spatial import jacobian_determinant, warp_image

TINY = {"encoder": (4, 4, 4, 4, 4), "decoder": (8, 8)}
SHAPES = {2: (24, 28), 3: (12, 14, 10)}


def blob_tensors(shape=(32, 32)) -> dict:
    """A training pair of blob images and label maps as ``(1, 1, *shape)`` tensors."""
    moving, moving_labels = blob_pair(shape, np.eye(4), 1)
    fixed, fixed_labels = blob_pair(shape, np.eye(4), 2)
    return {"moving": torch.as_tensor(moving.array)[None, None], "fixed": torch.as_tensor(fixed.array)[None, None],
            "moving_labels": torch.as_tensor(moving_labels.array)[None, None].long(),
            "fixed_labels": torch.as_tensor(fixed_labels.array)[None, None].long()}


@pytest.mark.parametrize("ndim", [2, 3])
def test_the_network_starts_at_the_identity_and_stays_small(ndim):
    model = LinearDeformable(ndim)
    images = torch.rand(2, 1, *SHAPES[ndim])
    outputs = model(images, images.flip(0))
    assert outputs["displacement"].shape == (2, ndim, *SHAPES[ndim])
    assert outputs["displacement"].abs().max() < 1e-2 and torch.all(outputs["dominance_scale"] == 1)
    assert torch.allclose(outputs["affine"], torch.eye(ndim, ndim + 1).expand(2, -1, -1))
    assert model.size_multiple == 1 and sum(p.numel() for p in model.parameters()) < 300_000
    rebuilt = LinearDeformable(**model.config)
    assert rebuilt.config == model.config


def test_the_grid_is_strictly_monotonic_along_every_axis():
    gradients = 2 * torch.rand(1, 3, 9, 10, 11)
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in (9, 10, 11)],
                                      indexing="ij"))[None] + gradients_to_displacement(gradients)
    for axis in range(3):
        spacing = torch.diff(grid[:, axis], dim=axis + 1)
        expected = gradients[:, axis].narrow(axis + 1, 1, gradients.shape[axis + 2] - 1)
        assert torch.allclose(spacing, expected, atol=1e-5)  # consecutive samples are g apart, g in (0, 2)
    assert torch.allclose(gradients_to_displacement(torch.ones(1, 2, 6, 7)), torch.zeros(1, 2, 6, 7))


def test_monotonic_grid_lines_alone_can_fold_and_the_dominance_scaling_prevents_it():
    torch.manual_seed(0)
    raw = gradients_to_displacement(2 * torch.rand(1, 2, 40, 40))
    assert (jacobian_determinant(raw) <= 0).any()  # why the paper's construction needs the scaling
    scaled, scale, _ = enforce_diagonal_dominance(raw)
    assert 0 < scale.item() < 1 and (jacobian_determinant(scaled) > 0).all()


def test_the_dominance_penalty_is_zero_where_no_rescaling_is_needed_and_grows_with_the_excess():
    model = LinearDeformable(2, **TINY).eval()
    images = torch.rand(2, 1, 1, 24, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        at_identity = model(images[0], images[1])
        randomise(model, torch.Generator().manual_seed(1), 1.0)
        random = model(images[0], images[1])
    assert at_identity["loss_terms"]["dominance_penalty"] == 0 and at_identity["dominance_scale"].item() == 1
    assert random["dominance_scale"].item() < 1 and random["loss_terms"]["dominance_penalty"] > 0


def randomise(model: torch.nn.Module, generator: torch.Generator, scale: float) -> None:
    """Random weights everywhere; the deformable branch's gradient head scaled by ``scale``."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            std = scale if name.startswith("deformable_branch.gradient_head") else 1.0
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("scale", [0.1, 1.0, 100.0])
def test_random_weights_and_inputs_never_fold(ndim, scale):
    model = LinearDeformable(ndim, **TINY).eval()
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        randomise(model, generator, scale)
        images = torch.rand(2, 2, 1, *SHAPES[ndim], generator=generator)
        with torch.no_grad():
            outputs = model(images[0], images[1])
        determinant = jacobian_determinant(outputs["displacement"])
        assert torch.isfinite(determinant).all() and (determinant > 0).all(), (seed, determinant.min())
        gradients = outputs["spatial_gradients"]
        assert (gradients >= 0).all() and (gradients <= 2).all()


def test_mutual_information_prefers_the_aligned_image_and_matches_monai():
    from monai.losses import GlobalMutualInformationLoss

    image = torch.as_tensor(blob_pair((40, 40), np.eye(4), 3)[0].array)[None, None]
    image = image / image.max()
    shuffled = image.flatten()[torch.randperm(image.numel(), generator=torch.Generator().manual_seed(0))]
    mi = MutualInformationLoss()
    assert mi(image, image) < mi(image, shuffled.view_as(image)) - 0.5
    assert mi(1 - image, image).item() == pytest.approx(mi(image, image).item(), abs=1e-3)  # multi-modal
    ours = MutualInformationLoss(bins=23, sigma_ratio=0.5)(image, image ** 2)
    assert ours.item() == pytest.approx(GlobalMutualInformationLoss(num_bins=23)(image, image ** 2).item(), abs=1e-3)


def test_mutual_information_gradient_points_towards_alignment():
    fixed = torch.as_tensor(blob_pair((40, 40), np.eye(4), 3)[0].array)[None, None]
    fixed = fixed / fixed.max()
    shift = torch.zeros(1, 2, 40, 40)
    shift[:, 0] = -2.0
    moving = warp_image(fixed, shift, padding="border")  # moving(x + 2) = fixed(x): u = +2 aligns
    translation = torch.zeros(2, requires_grad=True)
    mi = MutualInformationLoss()
    loss = mi(warp_image(moving, translation.view(1, 2, 1, 1).expand(1, 2, 40, 40)), fixed)
    loss.backward()
    assert torch.isfinite(translation.grad).all() and translation.grad[0] < 0
    step = torch.tensor([0.5, 0.0]).view(1, 2, 1, 1).expand(1, 2, 40, 40)
    assert mi(warp_image(moving, step), fixed) < loss.detach()


def test_similarity_choices_parse_and_combine():
    assert parse_similarity("lncc") == [("lncc", 1.0)]
    assert parse_similarity("MI:0.5, lncc:0.5") == [("mi", 0.5), ("lncc", 0.5)]
    for bad in ("ssim", "mi:x", "mi:-1", "mi,mi"):
        with pytest.raises(InputError):
            parse_similarity(bad)
    a, b = torch.rand(1, 1, 20, 20), torch.rand(1, 1, 20, 20)
    combined = SimilarityLoss(2, "mse:2,mi:0.5")(a, b)
    parts = 2 * SimilarityLoss(2, "mse")(a, b) + 0.5 * SimilarityLoss(2, "mi")(a, b)
    assert combined.item() == pytest.approx(parts.item(), rel=1e-5)
    assert RegistrationLoss(2)(a, a, torch.zeros(1, 2, 20, 20))["similarity"].item() == pytest.approx(-1.0, abs=1e-3)


@pytest.mark.parametrize("similarity", ["mi", "mse"])
def test_a_few_training_steps_lower_the_loss(similarity):
    torch.manual_seed(0)
    pair = blob_tensors()
    model = new_model("lindef", 2, **TINY)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss = RegistrationLoss(2, smoothness=0.0, dice_weight=1.0, similarity=similarity)
    steps = [training_step(model, optimiser, loss, pair, "cpu") for _ in range(30)]
    assert "deformable_penalty" in steps[0] and "affine_penalty" in steps[0]
    totals = [terms["total"] for terms in steps]
    assert np.mean(totals[-5:]) < np.mean(totals[:5]) - 0.02


def trained_checkpoint(tmp_path, ndim: int):
    """A lindef checkpoint after a few training steps on a blob pair."""
    torch.manual_seed(0)
    model = new_model("lindef", ndim, **TINY)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss = RegistrationLoss(ndim, window=5, smoothness=0.0, similarity="mi:0.5,lncc:0.5")
    pair = blob_tensors(SHAPES[ndim])
    for _ in range(3):
        training_step(model, optimiser, loss, pair, "cpu")
    preprocessing = Preprocessing(target_spacing=1.5 if ndim == 3 else None, size_multiple=model.size_multiple)
    return save_checkpoint(tmp_path / f"lindef_{ndim}d.pt", method="lindef", model=model.eval(),
                           preprocessing=preprocessing.as_dict(), training={"command": "test"})


@pytest.mark.parametrize("ndim", [2, 3])
def test_lindef_honours_the_register_contract(tmp_path, ndim):
    shape = (37, 45) if ndim == 2 else (21, 26, 19)
    affine = np.diag([1.0, 1.2, 2.0, 1.0])
    moving, moving_labels = blob_pair(shape, affine, 1)
    fixed, fixed_labels = blob_pair(shape, affine, 2)
    weights = trained_checkpoint(tmp_path, ndim)
    result = run_to_end(register(moving, fixed, "lindef", moving_labels=moving_labels, fixed_labels=fixed_labels,
                                 weights=str(weights), device="cpu"))
    assert result.displacement.shape == (ndim,) + shape
    assert result.warped.shape == shape and np.allclose(result.warped.affine, affine)
    assert result.metrics["folding_percent"] == 0.0 and "dice_mean" in result.metrics
    write_result(result, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "result.json").read_text())
    assert summary["method"] == "lindef" and summary["weights"] == str(weights)


def test_the_similarity_option_picks_the_shipped_weights_and_says_how_to_train_missing_ones(tmp_path, monkeypatch):
    from warpseg.methods import learned_inference
    from warpseg.methods.lindef import LinearDeformableRegistration

    monkeypatch.setattr(learned_inference, "shipped_weights",
                        lambda method, ndim, variant=None: tmp_path / f"{method}_{ndim}d_{variant}.pt")
    (tmp_path / "lindef_2d_mse.pt").write_bytes(b"")
    assert LinearDeformableRegistration(similarity="mse").weights_path(2) == tmp_path / "lindef_2d_mse.pt"
    assert not LinearDeformableRegistration().has_weights_for(2)  # the default, lncc, is not there
    image, _ = blob_pair((32, 32), np.eye(4), 1)
    with pytest.raises(InputError, match="no shipped 2D lncc weights for lindef.*warpseg train lindef --ndim 2 "
                                         "--similarity lncc"):
        run_to_end(register(image, image, "lindef", device="cpu"))
    with pytest.raises(InputError, match="lindef ships weights for similarity lncc, mse, mi, not 'nmi'"):
        run_to_end(register(image, image, "lindef", device="cpu", options={"similarity": "nmi"}))


@pytest.mark.slow
def test_train_cli_stores_the_similarity_in_the_checkpoint(tmp_path, shared_data):
    weights = tmp_path / "lindef_2d.pt"
    common = ["train", "lindef", "--ndim", "2", "--data", str(shared_data), "--label-maps", "1", "--steps", "2",
              "--validate-every", "2", "--device", "cpu", "--out", str(weights)]
    assert main([*common, "--similarity", "nmi"]) == 2
    assert main([*common, "--similarity", "mi"]) == 0
    checkpoint = read_checkpoint(weights)
    config = checkpoint["training"]["config"]
    assert checkpoint["model"]["class"] == "LinearDeformable" and checkpoint["preprocessing"]["size_multiple"] == 1
    assert config["similarity"] == "mi" and config["smoothness"] == 1.0
