"""BRBS: an invertible registration, space-style sampling, the mix-misalignment loss, the register and
segment contracts, and the generate job (N pairs, nothing partial)."""
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import blob_pair
from warpseg.engine import register, run_to_end, segment
from warpseg.engine.generate import generate_labelled_images
from warpseg.errors import InputError
from warpseg.learning.brbs_training import BrbsLoss, brbs_loss_terms, mix_misalignment_loss
from warpseg.learning.checkpoint import save_checkpoint
from warpseg.learning.preprocess import Preprocessing
from warpseg.models import Brbs
from warpseg.models.brbs import SpaceStyleSampling, space_style_sample
from warpseg.spatial import compose_displacements

NAMES = {0: "Background", 1: "outer", 2: "middle", 3: "core"}
TINY = {"segmentation_channels": (8, 16), "encoder": (8, 16), "decoder": (16, 16, 8)}


def tiny_model(ndim: int = 2, seed: int = 0) -> Brbs:
    torch.manual_seed(seed)
    return Brbs(ndim, num_labels=4, **TINY)


def blob_tensors(seed: int, shape=(32, 32)):
    image, labels = blob_pair(shape, np.eye(4), seed)
    return torch.as_tensor(image.array)[None, None], torch.as_tensor(labels.array).long()[None, None]


def smooth_velocity(shape, amplitude: float, seed: int = 0) -> torch.Tensor:
    from warpseg.learning.augment import smooth_noise

    return smooth_noise(shape, len(shape), torch.Generator().manual_seed(seed), amplitude, control_points=4)


def checkpoint(path, model, *, atlas_seed=None, target_seeds=(), spacing=None):
    """A tiny BRBS checkpoint; with ``atlas_seed`` it keeps an atlas and targets as training writes them."""
    preprocessing = Preprocessing(target_spacing=spacing, size_multiple=model.size_multiple)
    extra = {"segmentation": {"label_set": "toy", "label_names": dict(NAMES), "num_labels": len(NAMES)}}
    if atlas_seed is not None:
        image, labels = blob_tensors(atlas_seed, (30, 36))
        extra["segmentation"]["atlas"] = {"subject": "blob", "image": image.half(), "labels": labels.to(torch.uint8)}
        extra["generation"] = {"targets": [{"subject": f"blob{s}", "image": blob_tensors(s, (30, 36))[0].half()}
                                           for s in target_seeds]}
    return save_checkpoint(path, method="brbs", model=model, preprocessing=preprocessing.as_dict(),
                           training={"command": "test"}, extra=extra)


@pytest.mark.parametrize("ndim,shape", [(2, (48, 40)), (3, (32, 32, 32))])
def test_forward_and_inverse_fields_compose_to_the_identity(ndim, shape):
    model = tiny_model(ndim)
    velocity = smooth_velocity(shape, 2.0)
    forward, inverse = model.integrate(velocity), model.integrate(-velocity)
    interior = (slice(None), slice(None)) + (slice(4, -4),) * ndim
    assert forward.abs().max() > 2.0
    for outer, inner in ((forward, inverse), (inverse, forward)):
        error = compose_displacements(outer, inner)[interior].norm(dim=1)
        assert error.mean() < 0.05 and error.max() < 0.3, (error.mean(), error.max())  # voxels, for |u| up to 5
    naive = compose_displacements(forward, -forward)[interior].norm(dim=1)  # -u is not the inverse
    assert naive.mean() > 5 * compose_displacements(forward, inverse)[interior].norm(dim=1).mean()


def test_the_network_gives_the_inverse_of_its_own_field():
    model = tiny_model()
    torch.nn.init.normal_(model.registration.flow_head.weight, std=1.0)
    outputs = model(blob_tensors(1)[0], blob_tensors(2)[0])
    assert outputs["displacement"].abs().max() > 0.5
    error = compose_displacements(outputs["displacement"], outputs["inverse_displacement"])[..., 4:-4, 4:-4]
    assert error.norm(dim=1).mean() < 0.02


def test_mix_misalignment_loss_on_a_constructed_case():
    """S(X_A) says label 1, S(X_B) label 2, gamma = 1/4: the target is (0, 1/4, 3/4); a uniform answer on
    the mix is off by (1/3, 1/12, 5/12), whose squared length is 7/24."""
    first = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    second = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    uniform = torch.full((1, 3, 4, 4), 1.0 / 3.0, requires_grad=True)
    value = mix_misalignment_loss(uniform, first, second, 0.25)
    assert value.item() == pytest.approx(7.0 / 24.0)
    linear = 0.25 * first + 0.75 * second
    assert mix_misalignment_loss(linear, first, second, 0.25).item() == pytest.approx(0.0)
    teacher = first.clone().requires_grad_(True)
    mix_misalignment_loss(uniform, teacher, second, 0.25).backward()
    assert teacher.grad is None and uniform.grad is not None  # the mix learns; the targets are detached


def test_space_style_sampling_interpolates_between_atlas_and_targets():
    model = tiny_model()
    atlas, labels = blob_tensors(1)
    targets = torch.cat([blob_tensors(2)[0], blob_tensors(3)[0]])
    onehot = torch.movedim(torch.nn.functional.one_hot(labels[:, 0], 4), -1, 1).float()
    velocities = torch.stack([smooth_velocity((32, 32), 2.0, seed) for seed in (0, 1)])[:, 0]
    only_atlas = SpaceStyleSampling(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]]))
    image, soft = space_style_sample(atlas, onehot, targets, velocities, model.integrate, only_atlas)
    assert torch.allclose(image, atlas, atol=1e-5) and torch.allclose(soft, onehot, atol=1e-5)
    half_way = SpaceStyleSampling(torch.tensor([[0.0, 0.5, 0.5]]), torch.tensor([[0.2, 0.4, 0.4]]))
    image, soft = space_style_sample(atlas, onehot, targets, velocities, model.integrate, half_way)
    expected = model.integrate(0.5 * velocities[:1] + 0.5 * velocities[1:])
    from warpseg.spatial import warp_image

    assert torch.allclose(soft, warp_image(onehot, expected, padding="border"), atol=1e-5)
    assert torch.allclose(soft.sum(1), torch.ones(1, 32, 32), atol=1e-4)
    styles = torch.cat([atlas, warp_image(targets, model.integrate(-velocities), padding="border")])
    mixed = 0.2 * styles[:1] + 0.4 * styles[1:2] + 0.4 * styles[2:]
    assert torch.allclose(image, warp_image(mixed, expected, padding="border"), atol=1e-5)


def test_a_training_step_has_every_term_and_keeps_segmentation_out_of_the_registration():
    model, loss = tiny_model(), BrbsLoss(2)
    atlas, labels = blob_tensors(1)
    sampling = SpaceStyleSampling.draw(torch.Generator().manual_seed(0), count=2, targets=2)
    pair = {"moving": atlas, "moving_labels": labels, "fixed": torch.cat([blob_tensors(2)[0], blob_tensors(3)[0]]),
            "sampling": sampling}
    terms = brbs_loss_terms(model, loss, pair, "cpu")
    assert {"similarity", "smoothness", "semantic_consistency", "atlas_cross_entropy", "generated_cross_entropy",
            "generated_dice", "mix_misalignment"} <= set(terms) and torch.isfinite(terms["total"])
    segmentation = terms["generated_cross_entropy"] + terms["generated_dice"] + terms["mix_misalignment"]
    gradients = torch.autograd.grad(segmentation, list(model.registration.parameters()), allow_unused=True)
    assert all(g is None for g in gradients)


def test_register_and_segment_contracts_keep_the_input_grids(tmp_path):
    moving, moving_labels = blob_pair((41, 43), np.diag([1.1, 1.1, 2.0, 1.0]), 1)
    fixed, fixed_labels = blob_pair((37, 45), np.diag([1.0, 1.2, 2.0, 1.0]), 2)
    weights = str(checkpoint(tmp_path / "w.pt", tiny_model()))
    result = run_to_end(register(moving, fixed, "brbs", moving_labels=moving_labels, fixed_labels=fixed_labels,
                                 weights=weights, device="cpu"))
    assert result.displacement.shape == (2, 37, 45) and "dice_mean" in result.metrics
    assert set(result.segmentations) == {"moving_segmentation", "fixed_segmentation"}
    assert result.segmentations["fixed_segmentation"].shape == fixed.shape
    segmented = run_to_end(segment(fixed, "brbs", reference=fixed_labels, weights=weights, device="cpu"))
    assert segmented.segmentation.shape == fixed.shape and np.allclose(segmented.segmentation.affine, fixed.affine)
    assert segmented.segmentation.label_names == NAMES


def test_3d_register_contract(tmp_path):
    moving, _ = blob_pair((23, 24, 19), np.diag([1.1, 1.1, 2.0, 1.0]), 1)
    fixed, _ = blob_pair((21, 26, 19), np.diag([1.0, 1.2, 2.0, 1.0]), 2)
    weights = str(checkpoint(tmp_path / "w.pt", tiny_model(3), spacing=1.5))
    result = run_to_end(register(moving, fixed, "brbs", weights=weights, device="cpu"))
    assert result.displacement.shape == (3, 21, 26, 19) and result.warped.shape == fixed.shape


def test_generate_writes_n_labelled_pairs_from_the_checkpoint(tmp_path):
    from warpseg.cli import main

    weights = checkpoint(tmp_path / "w.pt", tiny_model(), atlas_seed=1, target_seeds=(2, 3))
    out = tmp_path / "generated"
    assert main(["brbs", "generate", "--weights", str(weights), "--n", "3", "--out", str(out), "--device", "cpu",
                 "--quiet"]) == 0
    for index in range(3):
        image = nib.load(str(out / f"generated_{index:03d}_image.nii.gz"))
        labels = nib.load(str(out / f"generated_{index:03d}_labels.nii.gz"))
        assert image.shape[:2] == labels.shape[:2] == (30, 36) and np.allclose(image.affine, labels.affine)
        assert set(np.unique(np.asarray(labels.dataobj))) <= set(NAMES)
    record = json.loads((out / "generation.json").read_text())
    assert record["count"] == 3 and len(record["draws"]) == 3 and len(record["draws"][0]["space_weights"]) == 3
    from warpseg._plugin._layers import LABEL_NAMES_KEY
    from warpseg._plugin._reader import read_layers  # what napari's File > Open calls

    (_, _, image_type), (_, attributes, labels_type) = read_layers(
        [str(out / "generated_002_image.nii.gz"), str(out / "generated_002_labels.nii.gz")])
    assert (image_type, labels_type) == ("image", "labels") and attributes["name"] == "generated_002_labels"
    assert attributes["metadata"][LABEL_NAMES_KEY] == NAMES


def test_generate_with_a_given_atlas_writes_on_the_atlas_grid(tmp_path):
    affine = np.diag([1.2, 0.9, 2.0, 1.0])
    atlas = blob_pair((26, 33), affine, 1)
    targets = [blob_pair((28, 30), np.diag([1.1, 1.0, 2.0, 1.0]), seed)[0] for seed in (2, 3)]
    weights = checkpoint(tmp_path / "w.pt", tiny_model())
    written = run_to_end(generate_labelled_images(weights, 2, tmp_path / "out", atlas=atlas, images=targets,
                                                  device="cpu"))
    assert len(written) == 7  # two images, two label maps with their .labels.json, generation.json
    labels = nib.load(str(tmp_path / "out" / "generated_001_labels.nii.gz"))
    assert labels.shape[:2] == (26, 33) and np.allclose(labels.affine, affine)


def test_generate_leaves_nothing_on_error_or_cancel(tmp_path, monkeypatch):
    weights = checkpoint(tmp_path / "w.pt", tiny_model(), atlas_seed=1, target_seeds=(2,))
    out = tmp_path / "out"
    calls = []

    def failing_write(volume, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_write(volume, path)

    import warpseg.io.write as write_module

    real_write = write_module.write_volume
    monkeypatch.setattr(write_module, "write_volume", failing_write)
    with pytest.raises(OSError, match="disk full"):
        run_to_end(generate_labelled_images(weights, 4, out, device="cpu"))
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["w.pt"]
    monkeypatch.setattr(write_module, "write_volume", real_write)
    job = generate_labelled_images(weights, 4, out, device="cpu")
    next(job), next(job)
    job.close()  # cancel after the first image
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["w.pt"]


def test_generate_refuses_other_weights_and_half_given_inputs(tmp_path):
    from warpseg.models import PcRegRt

    other = save_checkpoint(tmp_path / "pc.pt", method="pcreg-rt", model=PcRegRt(2, 4, **TINY),
                            preprocessing=Preprocessing(size_multiple=4).as_dict(), training={})
    with pytest.raises(InputError, match="generating needs BRBS weights"):
        run_to_end(generate_labelled_images(other, 1, tmp_path / "out", device="cpu"))
    with pytest.raises(InputError, match="together"):
        run_to_end(generate_labelled_images(other, 1, tmp_path / "out", atlas=blob_pair((8, 8), np.eye(4), 1)))
    weights = checkpoint(tmp_path / "w.pt", tiny_model())
    with pytest.raises(InputError, match="keeps no atlas"):
        run_to_end(generate_labelled_images(weights, 1, tmp_path / "out", device="cpu"))


def test_train_brbs_keeps_targets_but_never_the_held_out_subject(tmp_path, shared_data):
    from warpseg.cli import main
    from warpseg.learning.checkpoint import read_checkpoint

    weights = tmp_path / "brbs.pt"
    assert main(["train", "brbs", "--ndim", "2", "--data", str(shared_data), "--labels", "seg35", "--steps", "1",
                 "--validate-every", "1", "--label-maps", "1", "--device", "cpu", "--out", str(weights)]) == 0
    payload = read_checkpoint(weights)
    targets = [t["subject"] for t in payload["generation"]["targets"]]
    assert targets == ["subjX"] and payload["segmentation"]["atlas"]["subject"] == "vxm"
    assert payload["training"]["data"]["validation_subjects"] == ["subjY"]
    assert "folding_percent" in payload["training"]["validation"]
