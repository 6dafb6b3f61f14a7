"""Few-shot segmentation training: the joint loss learns, the K-shot protocol holds out, the CLI round-trips."""
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import blob_pair
from warpseg.cli import main
from warpseg.errors import InputError
from warpseg.io import read_volume
from warpseg.io.label_names import read_label_names
from warpseg.learning.checkpoint import read_checkpoint
from warpseg.learning.train import training_step
from warpseg.models import NiceTranseg, SegmentationUNet


def blob_tensors(seed: int, shape=(32, 32)):
    image, labels = blob_pair(shape, np.eye(4), seed)
    return torch.as_tensor(image.array)[None, None], torch.as_tensor(labels.array).long()[None, None]


def foreground_dice(predicted: torch.Tensor, reference: torch.Tensor) -> float:
    from warpseg.learning.segmentation_training import mean_dice

    return mean_dice(predicted.numpy(), reference[0, 0].numpy())


@pytest.mark.parametrize("method", ["nice-transeg", "seg-unet"])
def test_a_few_steps_raise_the_segmentation_dice_of_an_unlabelled_image(method):
    """Trained on one labelled blob image (the atlas); scored on another whose labels it never sees."""
    from warpseg.learning.segmentation_training import JointSegmentationLoss, nice_transeg_loss_terms, unet_loss_terms

    torch.manual_seed(0)
    atlas, atlas_labels = blob_tensors(1)
    image, truth = blob_tensors(2)
    if method == "nice-transeg":
        model, loss_terms = NiceTranseg(2, num_labels=4, channels=(4, 8, 8, 8)), nice_transeg_loss_terms
        predict = lambda: model(atlas, image)["fixed_segmentation"].argmax(1)  # noqa: E731
    else:
        model, loss_terms = SegmentationUNet(2, 4, channels=(8, 16, 16)), unet_loss_terms
        predict = lambda: model(image)["segmentation"].argmax(1)  # noqa: E731
    loss = JointSegmentationLoss(2, smoothness=0.1)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2 if method == "nice-transeg" else 5e-3)
    with torch.no_grad():
        before = foreground_dice(predict(), truth)
    pair = {"moving": atlas, "moving_labels": atlas_labels, "fixed": image}
    for _ in range(60):
        terms = training_step(model, optimiser, loss, pair, "cpu", loss_terms)
    with torch.no_grad():
        after = foreground_dice(predict(), truth)
    # S_F learns only through the consistency term here: slower and noisier (0.26-0.42 after 60 steps
    # across learning rates and thread counts, from 0.09)
    gain, floor = {"nice-transeg": (0.15, 0.2), "seg-unet": (0.2, 0.5)}[method]
    assert after > max(before + gain, floor), (before, after)
    assert {"cross_entropy", "dice", "total"} <= set(terms)
    if method == "nice-transeg":
        assert {"similarity", "smoothness", "consistency"} <= set(terms)


def test_seg4_shots_take_real_subjects_first_and_keep_vxm_out(shared_data):
    from warpseg.learning.few_shot import FewShotData

    data = FewShotData(shared_data, 2, "seg4", shots=3, label_maps=1)
    assert [s.name for s in data.atlases] == ["subjX", "subjY", "training_seg_01"]
    assert [s.name for s in data.validation] == ["vxm"] and data.num_labels == 5
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        pair = data.sample(generator)
        assert "vxm" not in pair["subjects"] and pair["subjects"][0] != pair["subjects"][1]
        assert pair["subjects"][0] in ("subjX", "subjY", "training_seg_01")
        # the fixed side has labels exactly when it is one of the K labelled atlases
        assert ("fixed_labels" in pair) == (pair["subjects"][1] in ("subjX", "subjY", "training_seg_01"))
    names = [name for name, _ in data.validation_pairs()]
    assert names == ["subjX->vxm", "subjY->vxm"]


def test_seg35_is_one_shot_on_vxm_and_validates_on_subjy_merged_to_seg4(shared_data):
    from warpseg.learning.few_shot import FewShotData

    data = FewShotData(shared_data, 2, "seg35", shots=1, label_maps=1)
    assert [s.name for s in data.atlases] == ["vxm"] and data.num_labels == 36
    assert [s.name for s in data.validation] == ["subjY"] and "subjY" not in data.unlabelled_names
    (_, pair), = data.validation_pairs()
    assert pair["moving_labels"].max() > 4 and pair["moving_seg4"].max() <= 4
    assert data.label_names[2] == "Left-Cerebral-Cortex"
    with pytest.raises(InputError, match="only seg35 atlas"):
        FewShotData(shared_data, 2, "seg35", shots=1, validation_subjects=("vxm",), label_maps=0)
    with pytest.raises(InputError, match="--shots 1"):
        FewShotData(shared_data, 2, "seg35", shots=2, label_maps=0)
    with pytest.raises(InputError, match="more labelled subjects"):
        FewShotData(shared_data, 2, "seg4", shots=4, label_maps=1)


def test_one_shot_self_pairs_give_the_fixed_side_the_atlas_labels(shared_data):
    from warpseg.learning.few_shot import FewShotData

    def fixed_sides(data):
        generator = torch.Generator().manual_seed(0)
        return [data.sample(generator) for _ in range(12)]

    plain = fixed_sides(FewShotData(shared_data, 2, "seg35", shots=1, label_maps=1))
    assert all(pair["subjects"][1] != "vxm" and "fixed_labels" not in pair for pair in plain)
    mixed = fixed_sides(FewShotData(shared_data, 2, "seg35", shots=1, label_maps=1, self_pair_share=0.5))
    selves = [pair for pair in mixed if pair["subjects"] == ("vxm", "vxm")]
    assert 0 < len(selves) < len(mixed)
    for pair in selves:  # labelled, in the seg35 set, and not a copy of the moving side
        assert pair["fixed_labels"].max() > 4 and not torch.equal(pair["fixed"], pair["moving"])
    assert all("fixed_labels" not in pair for pair in mixed if pair["subjects"][1] != "vxm")


def test_self_pairs_are_refused_where_nothing_would_use_them(tmp_path, shared_data, capsys):
    assert main(["train", "brbs", "--ndim", "2", "--data", str(shared_data), "--labels", "seg35", "--self-pairs", "0.3",
                 "--steps", "1", "--out", str(tmp_path / "w.pt")]) != 0
    assert "--self-pairs applies to nice-transeg and pcreg-rt" in capsys.readouterr().err
    assert not (tmp_path / "w.pt").exists()


def test_resuming_a_frozen_run_without_the_flag_is_refused_and_the_checkpoint_kept(tmp_path, shared_data, capsys):
    from warpseg.methods import METHODS

    out = tmp_path / "w.pt"
    common = ["train", "nice-transeg", "--ndim", "2", "--data", str(shared_data), "--validate-every", "1",
              "--out", str(out)]
    assert main([*common, "--steps", "1", "--freeze-registration",
                 "--init-from", str(METHODS["nice-trans"]().weights_path(2))]) == 0
    written = out.read_bytes()
    assert main([*common, "--steps", "2", "--resume"]) != 0
    assert "resume with the options it started with (--freeze-registration, --registration-lr-scale)" in capsys.readouterr().err
    assert out.read_bytes() == written


@pytest.mark.parametrize("method,steps", [("seg-unet", 10), ("nice-transeg", 4)])
def test_train_then_segment_writes_the_checkpoint_label_ids_and_names(tmp_path, shared_data, method, steps):
    weights = tmp_path / f"{method}.pt"
    assert main(["train", method, "--ndim", "2", "--data", str(shared_data), "--labels", "seg4", "--shots", "2",
                 "--steps", str(steps), "--validate-every", str(steps), "--label-maps", "1", "--lr", "1e-2",
                 "--device", "cpu", "--out", str(weights)]) == 0
    checkpoint = read_checkpoint(weights)
    record, data = checkpoint["segmentation"], checkpoint["training"]["data"]
    assert record["label_set"] == "seg4" and record["label_names"][4] == "CSF" and record["shots"] == 2
    assert data["labelled_subjects"] == ["subjX", "subjY"] and data["validation_subjects"] == ["vxm"]
    assert 0 <= checkpoint["training"]["validation"]["segmentation_dice"] <= 1
    assert ("atlas" in record) == (method == "nice-transeg")
    if method == "nice-transeg":  # the further real labelled atlas is kept too, for multi-atlas segmentation
        assert record["atlas"]["subject"] == "subjX" and [r["subject"] for r in record["further_atlases"]] == ["subjY"]
        assert_further_atlases_can_be_stored_afterwards(weights, shared_data, checkpoint)

    out, slices = tmp_path / "out", shared_data / "oasis2d"
    assert main(["segment", str(slices / "vxm_slice_norm.nii.gz"), "--method", method, "--weights", str(weights),
                 "--labels", str(slices / "vxm_slice_seg4.nii.gz"), "--device", "cpu", "--out", str(out),
                 "--quiet"]) == 0
    image = read_volume(slices / "vxm_slice_norm.nii.gz", labels=False)
    written = nib.load(str(out / "segmentation.nii.gz"))
    assert read_label_names(out / "segmentation.nii.gz") == record["label_names"]
    assert written.shape[:2] == image.shape and np.allclose(written.affine, nib.load(str(slices / "vxm_slice_norm.nii.gz")).affine)
    assert set(np.unique(np.asarray(written.dataobj))) <= set(record["label_names"])
    if method == "seg-unet":  # trained enough to give more than one label, which read_volume requires
        assert read_volume(out / "segmentation.nii.gz", labels=True).label_names == record["label_names"]
    summary = json.loads((out / "result.json").read_text())
    assert summary["method"] == method and "dice_mean" in summary and summary["details"]["label_set"] == "seg4"


def assert_further_atlases_can_be_stored_afterwards(weights, shared_data, checkpoint: dict) -> None:
    """A checkpoint from before they were kept gets the same atlases back, its weights untouched."""
    from warpseg.learning.segmentation_training import store_further_atlases

    older = weights.with_name("older.pt")
    payload = torch.load(weights, weights_only=True)
    del payload["segmentation"]["further_atlases"]
    torch.save(payload, older)
    assert store_further_atlases(older, shared_data) == ["subjY"]
    stored = read_checkpoint(older)
    kept, again = checkpoint["segmentation"]["further_atlases"][0], stored["segmentation"]["further_atlases"][0]
    assert torch.equal(kept["image"], again["image"]) and torch.equal(kept["labels"], again["labels"])
    assert all(torch.equal(value, stored["state_dict"][key]) for key, value in checkpoint["state_dict"].items())
    assert "further_atlases" in stored["training"]


def test_labelled_fixed_images_add_registration_dice_and_fixed_branch_supervision():
    from warpseg.learning.segmentation_training import JointSegmentationLoss, nice_transeg_loss_terms
    from warpseg.models import NiceTranseg

    torch.manual_seed(0)
    model = NiceTranseg(2, num_labels=3, channels=(4, 8, 8))
    labels = torch.zeros(1, 1, 32, 32, dtype=torch.long)
    labels[:, :, 8:24, 8:24] = 1
    labels[:, :, 12:20, 12:20] = 2
    pair = {"moving": labels.float() / 2, "moving_labels": labels, "fixed": labels.float() / 2}
    loss = JointSegmentationLoss(2)
    unlabelled = nice_transeg_loss_terms(model, loss, pair, "cpu")
    labelled = nice_transeg_loss_terms(model, loss, {**pair, "fixed_labels": labels}, "cpu")
    assert "registration_dice" not in unlabelled and "dice" in unlabelled
    assert float(labelled["dice"]) == pytest.approx(float(unlabelled["dice"]))
    assert 0 <= float(labelled["registration_dice"]) < 0.05  # identical labels, near-identity field
    extra = labelled["registration_dice"] + labelled["fixed_cross_entropy"] + labelled["fixed_dice"]
    assert float(labelled["total"]) == pytest.approx(float(unlabelled["total"] + extra))
