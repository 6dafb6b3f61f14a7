"""Atlas-ISTN: transforms, the atlas update rule, refinement, the segment and register contracts, and
`warpseg atlas build` (outputs, and nothing left behind when cancelled). Tiny synthetic data only."""
import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import blob_pair, drive
from warpseg.cli import main
from warpseg.engine import register, run_to_end, segment, write_result, write_segmentation
from warpseg.errors import InputError
from warpseg.io import read_volume
from warpseg.learning.atlas_build import AtlasConfig, atlas_sharpness, build_atlas, update_atlas, warped_training_mean
from warpseg.learning.atlas_data import AtlasTrainingData, aseg_to_seg35
from warpseg.learning.atlas_istn_loss import AtlasIstnLoss
from warpseg.learning.atlas_refine import refine_transformer
from warpseg.learning.checkpoint import load_checkpoint, save_checkpoint
from warpseg.learning.data import Subject
from warpseg.learning.losses import one_hot
from warpseg.learning.preprocess import Preprocessing
from warpseg.methods import METHODS, SEGMENTATION_METHODS
from warpseg.models import AtlasIstn
from warpseg.models.atlas_istn import rotation_matrix, similarity_matrix
from warpseg.models.nice_trans import normalised_to_voxel_affine
from warpseg.spatial import compose_displacements

NAMES = {0: "Background", 1: "outer", 2: "middle", 3: "core"}
TINY = {"itn_channels": (4, 8), "affine_channels": (4, 8), "stn_encoder": (4, 8), "stn_decoder": (8, 8, 4)}
ATLAS_SHAPE = {2: (32, 40), 3: (16, 16, 24)}


def blob_tensors(shape, seed):
    image, labels = blob_pair(shape, np.eye(4), seed)
    return torch.as_tensor(image.array)[None, None], torch.as_tensor(labels.array).long()[None, None]


def tiny_model(ndim: int, itn_steps: int = 0) -> AtlasIstn:
    """A tiny model whose atlas is a blob label map; its ITN fitted ``itn_steps`` steps to that map."""
    torch.manual_seed(0)
    model = AtlasIstn(ndim, len(NAMES), ATLAS_SHAPE[ndim], **TINY)
    image, labels = blob_tensors(ATLAS_SHAPE[ndim], 1)
    model.set_atlas(image, one_hot(labels, len(NAMES)))
    optimiser = torch.optim.Adam(model.itn.parameters(), lr=1e-2)
    for _ in range(itn_steps):
        loss = torch.nn.functional.cross_entropy(model.itn(image)["segmentation"], labels[:, 0])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


@pytest.fixture(params=[2, 3])
def weights(request, tmp_path):
    ndim = request.param
    model = tiny_model(ndim, itn_steps=15)
    preprocessing = Preprocessing(target_spacing=1.0, size_multiple=model.size_multiple)
    path = save_checkpoint(tmp_path / f"atlas-istn_{ndim}d.pt", method="atlas-istn", model=model,
                           preprocessing=preprocessing.as_dict(), training={"command": "test", "validation": None},
                           extra={"segmentation": {"label_set": "toy", "label_names": NAMES, "num_labels": 4}})
    return ndim, str(path)


def test_similarity_is_the_identity_at_zero_and_rotations_stay_rotations():
    for ndim in (2, 3):
        parameters = torch.zeros(1, 2 * ndim + (1 if ndim == 2 else 3))
        assert torch.allclose(similarity_matrix(parameters, ndim), torch.eye(ndim, ndim + 1)[None])
    rotation = rotation_matrix(torch.randn(5, 3), 3)
    assert torch.allclose(rotation @ rotation.transpose(1, 2), torch.eye(3).expand(5, 3, 3), atol=1e-6)
    assert torch.allclose(torch.linalg.det(rotation), torch.ones(5), atol=1e-6)


def test_a_known_shift_moves_the_atlas_and_the_two_directions_invert_each_other():
    model = tiny_model(2)
    with torch.no_grad():  # translation only: tanh^-1(shift / MAX_SHIFT) on the first axis
        model.stn.similarity.parameters_out.bias[0] = math.atanh(0.1 / 0.5)
    probabilities = model.atlas_probabilities()
    outputs = model.transform(probabilities)
    half_extent = max(ATLAS_SHAPE[2]) / 2
    assert torch.allclose(outputs["affine"][0, :, 2], torch.tensor([0.1 * half_extent, 0.0]), atol=1e-4)
    shifted = torch.roll(probabilities, shifts=-2, dims=2)  # 0.1 * 20 = 2 voxels
    assert torch.allclose(outputs["warped_atlas"][..., 4:-4, :], shifted[..., 4:-4, :], atol=1e-3)
    # a similarity and a smooth velocity of up to 3 voxels: image -> atlas -> image is the identity
    matrix = normalised_to_voxel_affine(similarity_matrix(torch.tensor([[0.2, -0.1, 0.3, 0.1, -0.1]]), 2), (32, 40))
    rows, columns = torch.meshgrid(torch.linspace(0, math.pi, 32), torch.linspace(0, math.pi, 40), indexing="ij")
    velocity = 3.0 * torch.stack([torch.sin(rows) * torch.cos(columns), torch.sin(columns) * torch.cos(rows)])[None]
    fields = model.stn.displacements(matrix, velocity, (32, 40))
    round_trip = compose_displacements(fields["atlas_to_image"], fields["image_to_atlas"])
    assert fields["image_to_atlas"].abs().max() > 3 and round_trip[..., 6:-6, 6:-6].abs().max() < 0.15


def test_atlas_update_rule_on_a_toy_set():
    """z_0 is the training mean; one update is (1 - η) z + η mean(z_i ∘ Φ_i), with Φ_i ≈ id at initialisation."""
    shape, values = (32, 40), (0.2, 0.6)
    training = []
    for index, value in enumerate(values):
        labels = torch.zeros((1, 1) + shape, dtype=torch.long)
        labels[..., 8 + 4 * index: 24, 10:30] = index + 1
        training.append(Subject(f"s{index}", torch.full((1, 1) + shape, value), labels))
    data = AtlasTrainingData(training, [], {0: "bg", 1: "a", 2: "b"}, np.eye(4), ndim=2)
    image, labels = data.initial_atlas()
    assert torch.allclose(image, torch.full_like(image, 0.4))
    assert float(labels[0, 1, 10, 15]) == 0.5 and float(labels[0, 2, 20, 15]) == 0.5 and float(labels[0, 0, 2, 2]) == 1
    model = AtlasIstn(2, 3, shape, **TINY)
    model.set_atlas(image, labels)
    warped_image, warped_labels = drive(warped_training_mean(model, data, "cpu"))[1]
    assert torch.allclose(warped_image[..., 1:-1, 1:-1], image[..., 1:-1, 1:-1], atol=1e-3)
    previous = torch.zeros_like(image)
    updated = update_atlas(previous, warped_image, rate=0.25)
    assert torch.allclose(updated[..., 1:-1, 1:-1], torch.full_like(updated, 0.1)[..., 1:-1, 1:-1], atol=1e-3)
    assert torch.equal(update_atlas(torch.tensor([2.0]), torch.tensor([6.0]), 0.25), torch.tensor([3.0]))
    sharp, blurred = atlas_sharpness(image, one_hot(training[0].labels, 3)), atlas_sharpness(image, labels)
    assert sharp["label_entropy"] == 0.0 and blurred["label_entropy"] > 0.05


def test_the_dice_term_gives_a_small_structure_a_gradient_the_squared_error_does_not():
    """The squared error averaged over voxels pulls a 2x2 structure's channel in proportion to its area; Dice does not."""
    labels = torch.zeros((1, 1, 32, 32), dtype=torch.long)
    labels[..., 8:10, 8:10] = 7
    target = one_hot(labels, 36)
    atlas = target.mean(dim=(2, 3), keepdim=True).expand_as(target).contiguous()
    pulls = {}
    for weight in (0.0, 1.0):
        logits = torch.zeros((1, 36, 32, 32), requires_grad=True)
        outputs = {"probabilities": logits.softmax(dim=1), "warped_atlas": atlas,
                   "atlas_to_image": torch.zeros((1, 2, 32, 32)), "velocity": torch.zeros((1, 2, 32, 32))}
        terms = AtlasIstnLoss(dice_weight=weight)(outputs, target, atlas)
        terms["total"].backward()
        pulls[weight] = float(-logits.grad[0, 7, 8:10, 8:10].sum())
        assert ("segmentation_dice" in terms) == (weight > 0)
    assert pulls[0.0] > 0 and pulls[1.0] > 10 * pulls[0.0]


def test_the_cross_entropy_term_still_pulls_an_itn_whose_softmax_has_saturated():
    """Logits blown up towards background: the squared error's gradient is exactly zero, cross-entropy's is not."""
    labels = torch.zeros((1, 1, 16, 16), dtype=torch.long)
    labels[..., 4:12, 4:12] = 2
    target = one_hot(labels, 4)
    pulls = {}
    for weight in (0.0, 1.0):
        logits = torch.zeros((1, 4, 16, 16))
        logits[:, 0] = 200.0
        logits.requires_grad_(True)
        outputs = {"segmentation": logits, "probabilities": logits.softmax(dim=1), "warped_atlas": target,
                   "atlas_to_image": torch.zeros((1, 2, 16, 16)), "velocity": torch.zeros((1, 2, 16, 16))}
        AtlasIstnLoss(cross_entropy_weight=weight)(outputs, target, target)["total"].backward()
        pulls[weight] = float(-logits.grad[0, 2, 4:12, 4:12].sum())
    assert pulls[0.0] == 0.0 and pulls[1.0] > 0.1


def test_refinement_lowers_its_loss_and_aligns_the_atlas():
    model = tiny_model(2)
    atlas = model.atlas_probabilities()
    target = one_hot(blob_tensors(ATLAS_SHAPE[2], 5)[1], len(NAMES))
    records, (outputs, summary) = drive(refine_transformer(model, target, atlas, iterations=25, learning_rate=3e-3,
                                                           smoothness=1.0))
    assert [r.step for r in records] == list(range(1, 26)) and {r.stage for r in records} == {"refine"}
    assert summary["loss_after"] < 0.8 * summary["loss_before"]
    before = ((model.transform(target, atlas)["warped_atlas"] - target) ** 2).sum(1).mean()
    assert ((outputs["warped_atlas"] - target) ** 2).sum(1).mean() < before
    assert model.stn.similarity.parameters_out.bias.abs().max() == 0  # the model itself is untouched


def test_segment_contract_gives_atlas_labels_and_the_itn_labels_on_the_image_grid(weights, tmp_path):
    ndim, path = weights
    shape = (37, 45) if ndim == 2 else (17, 19, 21)
    affine = np.diag([1.2, 0.9, 1.0, 1.0]) if ndim == 2 else np.diag([1.1, 1.0, 1.3, 1.0])
    image, reference = blob_pair(shape, affine, 2)
    records, result = drive(segment(image, "atlas-istn", reference=reference, weights=path, device="cpu",
                                    options={"refine": 3}))
    assert [r.step for r in records if r.stage == "refine"] == [1, 2, 3]
    assert result.segmentation.shape == image.shape and np.allclose(result.segmentation.affine, image.affine)
    assert result.segmentation.label_names == NAMES and set(np.unique(result.segmentation.array)) <= set(NAMES)
    assert result.details["refine"]["iterations"] == 3 and "segmentations" not in result.details
    assert set(result.metrics["segmentations"]) == {"itn_segmentation"} and "dice_mean" in result.metrics
    write_segmentation(result, tmp_path / "out")
    itn = read_volume(tmp_path / "out" / "itn_segmentation.nii.gz")
    assert itn.is_labels and itn.shape == image.shape and np.allclose(itn.affine, image.affine)
    json.loads((tmp_path / "out" / "result.json").read_text())


def test_register_contract_through_the_atlas(weights, tmp_path):
    ndim, path = weights
    shape, moving_shape = ((36, 44), (40, 42)) if ndim == 2 else ((16, 20, 22), (18, 18, 20))
    moving, moving_labels = blob_pair(moving_shape, np.diag([1.1, 1.1, 1.0, 1.0]), 1)
    fixed, fixed_labels = blob_pair(shape, np.diag([1.0, 1.2, 1.0, 1.0]), 2)
    result = run_to_end(register(moving, fixed, "atlas-istn", moving_labels=moving_labels, fixed_labels=fixed_labels,
                                 weights=path, device="cpu", options={"refine": 2}))
    assert result.displacement.shape == (ndim,) + shape and np.isfinite(result.displacement).all()
    assert "dice_mean" in result.metrics and set(result.details["refine"]) == {"moving", "fixed"}
    write_result(result, tmp_path / "out")
    for name, grid in (("fixed_segmentation", fixed), ("moving_segmentation", moving)):
        written = read_volume(tmp_path / "out" / f"{name}.nii.gz")
        assert written.shape == grid.shape and np.allclose(written.affine, grid.affine) and written.label_names == NAMES
    to_atlas = run_to_end(register(moving, fixed, "atlas-istn", weights=path, device="cpu",
                                   options={"refine": 0, "fixed_is_atlas": True}))
    assert to_atlas.details["fixed_is_atlas"] and to_atlas.details["refine"] == {"moving": {"iterations": 0}}


def test_atlas_istn_is_a_segmentation_and_a_registration_method_and_refuses_a_given_atlas(weights):
    ndim, path = weights
    assert "atlas-istn" in METHODS and "atlas-istn" in SEGMENTATION_METHODS
    image, labels = blob_pair((24,) * ndim, np.eye(4), 1)
    with pytest.raises(InputError, match="drop --atlas"):
        run_to_end(segment(image, "atlas-istn", atlas=(image, labels), weights=path, device="cpu"))
    with pytest.raises(InputError, match="no option"):
        run_to_end(segment(image, "atlas-istn", weights=path, device="cpu", options={"iterations": 3}))
    for options, message in (({"refine": -1}, "refine=-1: give a number of refinement steps"),
                             ({"refine_learning_rate": 0}, "refine_learning_rate=0: give an Adam step size"),
                             ({"refine_smoothness": -5}, "refine_smoothness=-5: a loss weight is 0 or more")):
        with pytest.raises(InputError, match=message):
            run_to_end(segment(image, "atlas-istn", weights=path, device="cpu", options=options))


def write_tiny_shared_data(folder, shape=(32, 48), slices=24):
    """oasis2d stacks of blob images and seg4-like labels for subjX, subjY and vxm, and the seg4 names."""
    (folder / "oasis2d").mkdir(parents=True)
    (folder / "labels").mkdir()
    (folder / "labels" / "seg4_labels.txt").write_text(
        "#ID Name\n0 Background\n1 Cortex\n2 Subcortical-Gray-Matter\n3 White-Matter\n4 CSF\n")
    affine = np.array([[-1.0, 0, 0, 16], [0, 0, 1, -12], [0, -1, 0, 24], [0, 0, 0, 1]])
    for seed, name in enumerate(("subjX", "subjY", "vxm")):
        image, labels = blob_pair(shape, np.eye(4), seed + 1)
        for kind, array in (("norm", image.array), ("seg4", labels.array)):
            stack = np.repeat(array[..., None], slices, axis=2)
            nib.save(nib.Nifti1Image(stack, affine), str(folder / "oasis2d" / f"{name}_stack_z090-130_{kind}.nii.gz"))
    return folder


def test_cli_atlas_build_writes_the_atlas_model_and_history(tmp_path):
    data = write_tiny_shared_data(tmp_path / "data")
    out = tmp_path / "atlas"
    assert main(["atlas", "build", "--data", str(data), "--ndim", "2", "--epochs", "2", "--steps-per-epoch", "4",
                 "--atlas-rate", "0.5",
                 "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["atlas_history.json", "atlas_image.nii.gz",
                                                     "atlas_labels.labels.json", "atlas_labels.nii.gz", "model.pt"]
    labels, image = read_volume(out / "atlas_labels.nii.gz"), read_volume(out / "atlas_image.nii.gz", labels=False)
    assert labels.shape == image.shape == (32, 48) and labels.label_names[3] == "White-Matter"
    assert np.allclose(image.affine[:3, 3], [16, -12 + 19, 24])  # the stack's geometry at the benchmark slice
    history = json.loads((out / "atlas_history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert all({"gradient_magnitude", "label_entropy", "dice", "itn_dice"} <= set(h) for h in history)
    model, checkpoint = load_checkpoint(out / "model.pt")
    assert isinstance(model, AtlasIstn) and checkpoint["method"] == "atlas-istn"
    assert checkpoint["training"]["data"]["validation_subjects"] == ["vxm"]
    assert np.array_equal(model.atlas_probabilities()[0].argmax(0).numpy(), labels.array)
    result = run_to_end(segment(image, "atlas-istn", weights=str(out / "model.pt"), device="cpu",
                                options={"refine": 1}))
    assert result.segmentation.shape == image.shape and result.segmentation.label_names == labels.label_names


def test_cli_atlas_build_refuses_out_of_range_settings_before_writing(tmp_path, capsys):
    data = write_tiny_shared_data(tmp_path / "data")
    out = tmp_path / "atlas"
    assert main(["atlas", "build", "--data", str(data), "--dice-weight", "-1", "--atlas-rate", "2", "--out", str(out),
                 "--quiet"]) != 0
    message = capsys.readouterr().err
    assert "--atlas-rate, --dice-weight out of range" in message and not out.exists()


def test_cancelled_build_leaves_nothing_behind(tmp_path):
    data = write_tiny_shared_data(tmp_path / "data")
    out = tmp_path / "atlas"
    job = build_atlas(AtlasConfig(data=str(data), ndim=2, epochs=3, steps_per_epoch=10), out)
    stages = [next(job).stage for _ in range(3)]
    job.close()
    assert "atlas" in stages and not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert main(["train", "atlas-istn", "--ndim", "2", "--out", str(tmp_path / "x.pt")]) == 2


def test_seg35_relabelling_resolves_nearest_of_rules(shared_data):
    aseg = np.zeros((12, 12, 12), dtype=np.int64)
    aseg[:, :6] = 2  # left cerebral white matter -> seg35 1
    aseg[:, 6:] = 41  # right cerebral white matter -> seg35 20
    aseg[4:8, 5:7, 4:8] = 251  # corpus callosum: nearest of left/right white matter
    aseg[0, 0, 0] = 999  # unknown -> 0
    seg35 = aseg_to_seg35(aseg, shared_data)
    assert seg35[5, 5, 5] == 1 and seg35[5, 6, 5] == 20 and seg35[0, 0, 0] == 0 and set(np.unique(seg35)) == {0, 1, 20}


SHIPPED_ATLASES = {(2, "seg4"): (0.75, 0.65), (2, "seg35"): (0.75, 0.65), (3, "seg4"): (0.6, 0.5),
                   (3, "seg35"): (0.4, 0.5)}
"""``(ndim, label set): (ITN, one-pass atlas)`` Dice the shipped model must beat on its held-out subject
(the 3D models are CPU-budget builds at 4 mm, README; the 3D seg35 ITN is still weak, 0.52)."""


@pytest.mark.parametrize("ndim,label_set", SHIPPED_ATLASES)
def test_shipped_atlases_segment_the_held_out_subject(ndim, label_set, shared_data):
    """The shipped models on the subject their build held out (vxm for seg4, subjY for seg35), scored in seg4."""
    from warpseg.learning.label_maps import to_seg4_lookup
    from warpseg.metrics import dice_per_label

    subject = "vxm" if label_set == "seg4" else "subjY"
    folder = shared_data / f"oasis{ndim}d"
    name = f"{subject}_slice" if ndim == 2 else f"{subject}_aligned"
    image = read_volume(folder / f"{name}_norm.nii.gz", labels=False)
    reference = np.asarray(read_volume(folder / f"{name}_seg4.nii.gz", labels=True).array)
    result = run_to_end(segment(image, "atlas-istn", device="cpu", options={"labels": label_set, "refine": 0}))
    lookup = to_seg4_lookup(shared_data, label_set)
    scores = {}
    for name, labels in (("atlas", result.segmentation), ("itn", result.segmentations["itn_segmentation"])):
        merged = lookup[np.asarray(labels.array, dtype=np.int64)]
        scores[name] = np.mean(list(dice_per_label(merged, reference).values()))
    itn, atlas = SHIPPED_ATLASES[(ndim, label_set)]
    assert scores["itn"] > itn and scores["atlas"] > atlas, scores
