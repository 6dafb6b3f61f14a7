"""PC-Reg-RT: the perception guides the registration, reverse teaching improves the segmentation,
one checkpoint honours the register and the segment contracts."""
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import blob_pair
from warpseg.engine import register, run_to_end, segment, write_result
from warpseg.io import read_volume
from warpseg.learning.checkpoint import load_checkpoint, save_checkpoint
from warpseg.learning.pcreg_rt_training import PcRegRtLoss, pcreg_rt_loss_terms
from warpseg.learning.preprocess import Preprocessing
from warpseg.learning.train import training_step
from warpseg.methods import METHODS, SEGMENTATION_METHODS
from warpseg.models import PcRegRt

NAMES = {0: "Background", 1: "outer", 2: "middle", 3: "core"}
TINY = {"segmentation_channels": (8, 16), "encoder": (8, 16), "decoder": (16, 16, 8)}


def tiny_model(ndim: int = 2, seed: int = 0) -> PcRegRt:
    torch.manual_seed(seed)
    return PcRegRt(ndim, num_labels=4, **TINY)


def blob_tensors(seed: int, shape=(32, 32)):
    image, labels = blob_pair(shape, np.eye(4), seed)
    return torch.as_tensor(image.array)[None, None], torch.as_tensor(labels.array).long()[None, None]


def mean_foreground_dice(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    from warpseg.learning.segmentation_training import mean_dice

    return mean_dice(predicted.numpy(), truth[0, 0].numpy())


def checkpoint(path, model, spacing=None):
    preprocessing = Preprocessing(target_spacing=spacing, size_multiple=model.size_multiple)
    extra = {"segmentation": {"label_set": "toy", "label_names": dict(NAMES), "num_labels": len(NAMES)}}
    return save_checkpoint(path, method="pcreg-rt", model=model, preprocessing=preprocessing.as_dict(),
                           training={"command": "test"}, extra=extra)


@pytest.mark.parametrize("ndim,shape", [(2, (32, 48)), (3, (12, 16, 20))])
def test_one_pass_gives_a_diffeomorphic_field_and_both_perceptions(ndim, shape):
    model = tiny_model(ndim)
    outputs = model(torch.rand(2, 1, *shape), torch.rand(2, 1, *shape))
    assert outputs["displacement"].shape == outputs["velocity"].shape == (2, ndim, *shape)
    assert outputs["moving_segmentation"].shape == outputs["fixed_segmentation"].shape == (2, 4, *shape)
    assert model.correspondence.in_channels == 1 + 4 and model.size_multiple == 4


def test_the_registration_sees_the_perception_but_does_not_train_it():
    model = tiny_model()
    moving, fixed = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    first = model(moving, fixed)["displacement"]
    with torch.no_grad():
        model.perception.classify.bias += torch.tensor([3.0, 0.0, 0.0, -3.0])
    second = model(moving, fixed)
    assert not torch.allclose(first, second["displacement"])  # other perceptions, another field
    second["displacement"].square().sum().backward()
    assert all(p.grad is None for p in model.perception.parameters())


def test_warm_start_from_seg_unet_and_voxelmorph_checkpoints(tmp_path):
    """``--init-from seg-unet.pt,vxm.pt``: the U-Net perceives and the VoxelMorph registers exactly as
    they did, the VoxelMorph whatever is perceived."""
    from warpseg.learning.warm_start import initialise_from
    from warpseg.models import SegmentationUNet, VoxelMorph

    torch.manual_seed(1)
    unet = SegmentationUNet(2, 4, 1, TINY["segmentation_channels"])
    vxm = VoxelMorph(2, encoder=TINY["encoder"], decoder=TINY["decoder"], integration_steps=7)
    for parameter in [*unet.parameters(), *vxm.parameters()]:  # move away from the initialisation
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    paths = [save_checkpoint(tmp_path / f"{method}.pt", method=method, model=net, preprocessing={}, training={})
             for method, net in (("seg-unet", unet), ("vxm", vxm))]
    target = tiny_model()
    counts = [initialise_from(target, path) for path in paths]
    assert [c["copied"] for c in counts] == [len(unet.state_dict()), len(vxm.state_dict())]
    moving, fixed = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        outputs = target(moving, fixed)
        assert torch.allclose(outputs["fixed_segmentation"], unet(fixed)["segmentation"], atol=1e-5)
        expected = vxm(moving, fixed)["displacement"]
        assert torch.allclose(expected, outputs["displacement"], atol=1e-5) and expected.abs().max() > 0.01
        target.perception.classify.bias += 3.0 * torch.arange(4.0)
        assert torch.allclose(expected, target(moving, fixed)["displacement"], atol=1e-5)


def test_loss_terms_train_each_net_by_its_own_terms():
    model, loss = tiny_model(), PcRegRtLoss(2)
    atlas, labels = blob_tensors(1)
    image, _ = blob_tensors(2)
    terms = pcreg_rt_loss_terms(model, loss, {"moving": atlas, "moving_labels": labels, "fixed": image}, "cpu")
    assert {"similarity", "smoothness", "guidance", "atlas_cross_entropy", "atlas_dice", "teaching_cross_entropy",
            "teaching_dice"} <= set(terms)
    teaching = terms["teaching_cross_entropy"] + terms["teaching_dice"]
    registration = terms["similarity"] + terms["guidance"]
    assert all(g is None for g in torch.autograd.grad(teaching, list(model.correspondence.parameters()),
                                                      allow_unused=True))
    assert all(g is None for g in torch.autograd.grad(registration, list(model.perception.parameters()),
                                                      allow_unused=True))


def test_task_region_is_the_dilated_perceived_foreground():
    probabilities = torch.zeros(1, 4, 16, 16)
    probabilities[:, 0] = 1.0
    probabilities[:, 0, 8, 8], probabilities[:, 2, 8, 8] = 0.0, 1.0
    loss = PcRegRtLoss(2, mask_margin=2)
    region = loss.task_region(probabilities)
    assert region.shape == (1, 1, 16, 16) and region.sum() == 25 and region[0, 0, 6:11, 6:11].eq(1).all()
    assert torch.allclose(loss.task_region(probabilities, trust=0.25), 0.25 * region + 0.75)  # half-trusted


def test_perception_trust_is_the_soft_dice_on_the_labelled_atlas():
    from warpseg.learning.pcreg_rt_training import perception_trust

    _, labels = blob_tensors(1)
    confident = 20.0 * torch.movedim(torch.nn.functional.one_hot(labels[:, 0], 4), -1, 1).float()
    assert perception_trust(confident.requires_grad_(True), labels).item() == pytest.approx(1.0, abs=1e-4)
    assert perception_trust(torch.zeros(1, 4, 32, 32), labels).item() < 0.5  # a guessing net


def test_reverse_teaching_alone_teaches_the_perception_an_unlabelled_image():
    """No supervised term: the perception learns only from the atlas labels carried by registration."""
    torch.manual_seed(0)
    model = PcRegRt(2, num_labels=4, segmentation_channels=(8, 16, 16), encoder=(8, 16), decoder=(16, 16, 8))
    loss = PcRegRtLoss(2, smoothness=0.1, segmentation_weight=0.0)
    atlas, atlas_labels = blob_tensors(1)
    image, truth = blob_tensors(2)
    optimiser = torch.optim.Adam(model.parameters(), lr=5e-3)
    with torch.no_grad():
        before = mean_foreground_dice(model.segment(image).argmax(1), truth)
    pair = {"moving": atlas, "moving_labels": atlas_labels, "fixed": image}
    for _ in range(60):
        terms = training_step(model, optimiser, loss, pair, "cpu", pcreg_rt_loss_terms)
    with torch.no_grad():
        after = mean_foreground_dice(model.segment(image).argmax(1), truth)
    assert "atlas_dice" not in terms and after > max(before + 0.3, 0.6), (before, after)


@pytest.mark.parametrize("ndim", [2, 3])
def test_register_contract_on_the_fixed_grid_with_both_segmentations(tmp_path, ndim):
    shape, moving_shape = ((37, 45), (41, 43)) if ndim == 2 else ((21, 26, 19), (23, 24, 19))
    fixed_affine, moving_affine = np.diag([1.0, 1.2, 2.0, 1.0]), np.diag([1.1, 1.1, 2.0, 1.0])
    moving, moving_labels = blob_pair(moving_shape, moving_affine, 1)
    fixed, fixed_labels = blob_pair(shape, fixed_affine, 2)
    weights = checkpoint(tmp_path / "w.pt", tiny_model(ndim), spacing=1.5 if ndim == 3 else None)
    result = run_to_end(register(moving, fixed, "pcreg-rt", moving_labels=moving_labels, fixed_labels=fixed_labels,
                                 weights=str(weights), device="cpu"))
    assert result.displacement.shape == (ndim,) + shape and "dice_mean" in result.metrics
    out = tmp_path / "out"
    write_result(result, out)
    for name, grid in (("moving_segmentation", moving), ("fixed_segmentation", fixed)):
        written = nib.load(str(out / f"{name}.nii.gz"))
        assert written.shape[:ndim] == grid.shape and np.allclose(written.affine, grid.affine)
    assert read_volume(out / "warped.nii.gz").shape == shape


def test_segment_contract_gives_labels_on_the_image_grid(tmp_path):
    image, reference = blob_pair((30, 37), np.diag([0.9, 1.3, 2.0, 1.0]), 3)
    weights = checkpoint(tmp_path / "w.pt", tiny_model())
    result = run_to_end(segment(image, "pcreg-rt", reference=reference, weights=str(weights), device="cpu"))
    assert result.segmentation.shape == image.shape and np.allclose(result.segmentation.affine, image.affine)
    assert result.segmentation.label_names == NAMES and "dice_mean" in result.metrics
    assert "pcreg-rt" in METHODS and "pcreg-rt" in SEGMENTATION_METHODS


def test_checkpoint_rebuilds_both_nets(tmp_path):
    model = tiny_model(seed=3).eval()
    loaded, _ = load_checkpoint(checkpoint(tmp_path / "w.pt", model))
    assert type(loaded) is PcRegRt and loaded.config == model.config
    images = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(*images)["displacement"], loaded(*images)["displacement"])


def test_train_writes_one_checkpoint_that_registers_and_segments(tmp_path, shared_data, capsys):
    from warpseg.cli import main
    from warpseg.learning.checkpoint import read_checkpoint

    weights = tmp_path / "pcreg-rt.pt"
    shipped = [METHODS["vxm"]().weights_path(2), SEGMENTATION_METHODS["seg-unet"](labels="seg4").weights_path(2)]
    assert main(["train", "pcreg-rt", "--ndim", "2", "--data", str(shared_data), "--labels", "seg4", "--shots", "2",
                 "--steps", "2", "--validate-every", "2", "--label-maps", "1", "--device", "cpu",
                 "--init-from", ",".join(map(str, shipped)), "--out", str(weights)]) == 0
    warm_start = next(line for line in capsys.readouterr().err.splitlines() if "warm start" in line)
    assert all(f"{path}: " in warm_start for path in shipped) and warm_start.count(" 0 tensors copied") == 0
    payload = read_checkpoint(weights)
    assert payload["model"]["class"] == "PcRegRt" and payload["segmentation"]["label_set"] == "seg4"
    validation = payload["training"]["validation"]
    assert {"segmentation_dice", "dice", "dice_before", "folding_percent"} <= set(validation)
    assert payload["training"]["data"]["validation_subjects"] == ["vxm"]
    slices, out = shared_data / "oasis2d", tmp_path / "out"
    assert main(["segment", str(slices / "vxm_slice_norm.nii.gz"), "--method", "pcreg-rt", "--weights", str(weights),
                 "--labels", str(slices / "vxm_slice_seg4.nii.gz"), "--device", "cpu", "--out", str(out),
                 "--quiet"]) == 0
    assert json.loads((out / "result.json").read_text())["details"]["label_set"] == "seg4"
