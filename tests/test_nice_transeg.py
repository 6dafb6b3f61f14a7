"""NICE-Transeg and the U-Net baseline: shapes, gradients, checkpoints, and the register contract."""
import time

import numpy as np
import pytest
import torch

from conftest import blob_pair, smooth_field, textured_image
from warpseg.engine import register, run_to_end, write_result
from warpseg.io import Volume, read_volume
from warpseg.learning.checkpoint import build_model, load_checkpoint, read_checkpoint, save_checkpoint
from warpseg.learning.preprocess import Preprocessing
from warpseg.methods import METHODS, SEGMENTATION_METHODS
from warpseg.models import NiceTrans, NiceTranseg, SegmentationUNet

NAMES = {0: "Background", 1: "outer", 2: "middle", 3: "core"}
TINY = {2: (4, 8, 8, 8), 3: (4, 8, 8)}


def tiny_transeg(ndim: int, num_labels: int = 4) -> NiceTranseg:
    torch.manual_seed(0)
    return NiceTranseg(ndim, num_labels=num_labels, channels=TINY[ndim])


def supervised_transeg(ndim: int, steps: int = 15) -> NiceTranseg:
    """A tiny NICE-Transeg fitted a few steps to blob labels, so that its label maps are not constant."""
    from warpseg.learning.losses import SegmentationLoss

    model, loss = tiny_transeg(ndim), SegmentationLoss()
    image, labels = blob_pair((24,) * ndim, np.eye(4), 1)
    image, labels = torch.as_tensor(image.array)[None, None], torch.as_tensor(labels.array).long()[None, None]
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        outputs = model(image, image)
        total = sum(sum(loss(outputs[key], labels).values()) for key in ("moving_segmentation", "fixed_segmentation"))
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
    return model.eval()


def tiny_segmentation_checkpoint(path, model, spacing=None):
    preprocessing = Preprocessing(target_spacing=spacing, size_multiple=model.size_multiple)
    extra = {"segmentation": {"label_set": "toy", "label_names": dict(NAMES), "num_labels": len(NAMES)}}
    return save_checkpoint(path, method="nice-transeg" if isinstance(model, NiceTranseg) else "seg-unet",
                           model=model, preprocessing=preprocessing.as_dict(), training={"command": "test"},
                           extra=extra)


def warm_started_transeg(tmp_path) -> tuple[NiceTrans, NiceTranseg, dict]:
    """A tiny trained-looking NICE-Trans, a NICE-Transeg warm-started from its checkpoint, and the copy counts."""
    from warpseg.learning.warm_start import initialise_from

    torch.manual_seed(0)
    source = NiceTrans(ndim=2, channels=TINY[2])
    for parameter in source.parameters():  # move away from the (identity) initialisation
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    path = save_checkpoint(tmp_path / "nice-trans.pt", method="nice-trans", model=source, preprocessing={},
                           training={})
    target = tiny_transeg(2)
    return source, target, initialise_from(target, path)


@pytest.mark.parametrize("ndim,shape", [(2, (48, 80)), (3, (12, 20, 28))])
def test_one_pass_gives_the_field_and_both_segmentations(ndim, shape):
    model = tiny_transeg(ndim, num_labels=5)
    moving, fixed = torch.rand(2, 1, *shape), torch.rand(2, 1, *shape)
    outputs = model(moving, fixed)
    assert outputs["displacement"].shape == (2, ndim, *shape)
    assert outputs["moving_segmentation"].shape == outputs["fixed_segmentation"].shape == (2, 5, *shape)
    assert outputs["affine"].shape == (2, ndim, ndim + 1) and len(outputs["level_displacements"]) == len(TINY[ndim])
    assert outputs["displacement"].abs().max() < 1e-2  # identity at initialisation, as NICE-Trans


def test_gradients_reach_both_branches_and_the_registration_decoder():
    model = tiny_transeg(2)
    outputs = model(torch.rand(1, 1, 32, 40), torch.rand(1, 1, 32, 40))
    loss = sum(outputs[key].square().mean() for key in ("moving_segmentation", "fixed_segmentation", "displacement"))
    loss.backward()
    silent = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert silent == ["affine_head.hidden.0.weight", "affine_head.hidden.0.bias"]  # behind a zero-initialised layer


def test_segmentations_depend_on_the_other_image():
    """The coupling is real: the fixed segmentation changes when only the moving image changes."""
    model = tiny_transeg(2)
    fixed = torch.rand(1, 1, 32, 32)
    first = model(torch.rand(1, 1, 32, 32), fixed)["fixed_segmentation"]
    second = model(torch.rand(1, 1, 32, 32), fixed)["fixed_segmentation"]
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("kind", ["nice-transeg", "seg-unet"])
def test_checkpoint_round_trip_gives_the_same_outputs(tmp_path, kind):
    torch.manual_seed(1)
    model = tiny_transeg(2) if kind == "nice-transeg" else SegmentationUNet(2, 4, channels=(4, 8, 8))
    path = tiny_segmentation_checkpoint(tmp_path / f"{kind}.pt", model)
    loaded, description = load_checkpoint(path)
    assert type(loaded) is type(model) and loaded.config == model.config
    assert description["segmentation"]["label_names"] == NAMES
    model.eval()
    images = (torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))
    with torch.no_grad():
        if kind == "nice-transeg":
            before, after = model(*images), loaded(*images)
            assert torch.equal(before["fixed_segmentation"], after["fixed_segmentation"])
            assert torch.equal(before["displacement"], after["displacement"])
        else:
            assert torch.equal(model(images[0])["segmentation"], loaded(images[0])["segmentation"])


@pytest.mark.parametrize("ndim", [2, 3])
def test_register_contract_writes_both_segmentations_with_names(tmp_path, ndim):
    shape, moving_shape = ((37, 45), (41, 43)) if ndim == 2 else ((21, 26, 19), (23, 24, 19))
    fixed_affine, moving_affine = np.diag([1.0, 1.2, 2.0, 1.0]), np.diag([1.1, 1.1, 2.0, 1.0])
    moving, moving_labels = blob_pair(moving_shape, moving_affine, 1)
    fixed, fixed_labels = blob_pair(shape, fixed_affine, 2)
    model = supervised_transeg(ndim)
    weights = tiny_segmentation_checkpoint(tmp_path / "w.pt", model, spacing=1.5 if ndim == 3 else None)
    result = run_to_end(register(moving, fixed, "nice-transeg", moving_labels=moving_labels,
                                 fixed_labels=fixed_labels, weights=str(weights), device="cpu"))
    assert result.displacement.shape == (ndim,) + shape and "dice_mean" in result.metrics
    assert "segmentations" not in result.details  # arrays stay out of result.json
    for name in ("moving_segmentation", "fixed_segmentation"):  # each scored against its own image's labels
        assert 0 <= result.metrics["segmentations"][name]["dice_mean"] <= 1
    out = tmp_path / "out"
    write_result(result, out)
    for name, grid in (("moving_segmentation", moving), ("fixed_segmentation", fixed)):
        written = read_volume(out / f"{name}.nii.gz")
        assert written.is_labels and written.shape == grid.shape and np.allclose(written.affine, grid.affine)
        assert written.label_names == NAMES and set(np.unique(written.array)) <= set(NAMES)
    assert (out / "warped.nii.gz").is_file() and (out / "result.json").is_file()


def test_nice_transeg_is_a_registration_and_a_segmentation_method():
    assert "nice-transeg" in METHODS and {"nice-transeg", "seg-unet"} <= set(SEGMENTATION_METHODS)


def test_without_weights_the_methods_say_how_to_train(tmp_path, monkeypatch):
    from warpseg.engine import segment
    from warpseg.errors import InputError

    monkeypatch.setattr("warpseg.methods.learned_inference.shipped_weights",
                        lambda method, ndim, label_set=None: tmp_path / f"{method}_{ndim}d_{label_set}.pt")
    image, _ = blob_pair((32, 32), np.eye(4), 1)
    for method in ("nice-transeg", "seg-unet"):
        with pytest.raises(InputError, match=f"no shipped 2D seg4 weights for {method} yet.*"
                                             f"warpseg train {method} --ndim 2 --labels seg4"):
            run_to_end(segment(image, method, device="cpu"))
        with pytest.raises(InputError, match=f"2D seg35 weights for {method}.*--labels seg35"):
            run_to_end(segment(image, method, device="cpu", options={"labels": "seg35"}))
        with pytest.raises(InputError, match="no weights for label set 'seg99'.*labels=seg4 or labels=seg35"):
            run_to_end(segment(image, method, device="cpu", options={"labels": "seg99"}))
    with pytest.raises(InputError, match="seg-unet has no option colour"):
        run_to_end(segment(image, "seg-unet", device="cpu", options={"colour": "red"}))
    with pytest.raises(InputError, match="no shipped 2D seg4 weights for nice-transeg yet"):
        run_to_end(register(image, image, "nice-transeg", device="cpu"))


def test_shipped_weights_are_named_by_label_set():
    from warpseg.methods import SEGMENTATION_METHODS

    for labels in ("seg4", "seg35"):
        assert SEGMENTATION_METHODS["seg-unet"](labels=labels).label_set == labels
    assert METHODS["nice-transeg"](labels="seg35").label_set == "seg35"
    assert METHODS["nice-trans"]().label_set is None


def test_shipped_nice_trans_weights_still_load_into_the_refactored_network():
    weights = METHODS["nice-trans"]().weights_path(2)
    payload = read_checkpoint(weights)
    model = build_model(payload)  # strict state-dict loading
    assert type(model) is NiceTrans and not isinstance(model, NiceTranseg)
    image = torch.zeros(1, 1, 32, 32)
    image[:, :, 8:24, 10:22] = 1.0
    with torch.no_grad():
        outputs = model(image, image)
    assert torch.isfinite(outputs["displacement"]).all() and outputs["displacement"].shape == (1, 2, 32, 32)


def test_segmenting_fuses_the_network_map_with_the_atlas_labels_warped_by_the_same_pass(tmp_path):
    """An untrained model barely moves the atlas (|u| < 0.001 voxel), so the warped atlas labels are
    nearly one-hot and outvote any network probability: the fused map is the atlas's labels."""
    from warpseg.engine import segment

    weights = str(tiny_segmentation_checkpoint(tmp_path / "w.pt", tiny_transeg(2)))
    image, labels = blob_pair((32, 40), np.eye(4), 1)
    fused = run_to_end(segment(image, "nice-transeg", atlas=(image, labels), weights=weights, device="cpu"))
    network = fused.segmentations["network_segmentation"]
    assert np.array_equal(fused.segmentation.array, labels.array)
    assert not np.array_equal(network.array, labels.array) and network.label_names == NAMES
    alone = run_to_end(segment(image, "nice-transeg", atlas=(image, labels), weights=weights, device="cpu",
                               options={"fuse_atlas_labels": "false"}))
    assert np.array_equal(alone.segmentation.array, network.array) and not alone.segmentations


def test_the_checkpoint_atlases_vote_together_and_the_atlases_option_picks_how_many(tmp_path):
    """Two kept atlases (nearly unmoved by an untrained model): where their labels agree the fused map
    takes them (2 + p votes against at most 2 - p); with ``atlases=1`` it is the first atlas's labels."""
    from warpseg.engine import segment
    from warpseg.errors import InputError

    image, first = blob_pair((32, 48), np.eye(4), 1)
    second = first.with_array(np.roll(first.array, 3, axis=0), is_labels=True)
    records = [{"subject": name, "image": torch.as_tensor(image.array, dtype=torch.float16)[None, None],
                "labels": torch.as_tensor(labels.array)[None, None]} for name, labels in (("A", first), ("B", second))]
    weights = tiny_segmentation_checkpoint(tmp_path / "w.pt", tiny_transeg(2))
    payload = torch.load(weights, weights_only=True)
    payload["segmentation"].update(atlas=records[0], further_atlases=records[1:])
    torch.save(payload, weights)

    both = run_to_end(segment(image, "nice-transeg", weights=str(weights), device="cpu"))
    agree = first.array == second.array
    assert np.array_equal(both.segmentation.array[agree], first.array[agree]) and not agree.all()
    assert both.details["atlas"] == "checkpoint atlas A; checkpoint atlas B"
    one = run_to_end(segment(image, "nice-transeg", weights=str(weights), device="cpu", options={"atlases": 1}))
    assert np.array_equal(one.segmentation.array, first.array) and one.details["atlas"] == "checkpoint atlas A"
    assert np.array_equal(one.segmentations["network_segmentation"].array,
                          both.segmentations["network_segmentation"].array)
    with pytest.raises(InputError, match="or 0 for all of them"):
        run_to_end(segment(image, "nice-transeg", weights=str(weights), device="cpu", options={"atlases": -1}))


def test_refining_the_field_moves_the_atlas_labels_onto_the_image(tmp_path):
    """The image is the atlas deformed by a known smooth field; an untrained model leaves the atlas
    where it is, a test-time refinement of the field (NIR on the model grid) aligns it, so the fused
    map overlaps the image's labels more."""
    from warpseg.engine import segment
    from warpseg.metrics import dice_per_label
    from warpseg.spatial import warp_image

    weights = str(tiny_segmentation_checkpoint(tmp_path / "w.pt", tiny_transeg(2)))
    shape, field = (64, 80), torch.as_tensor(smooth_field((64, 80), amplitude=3.0))[None]
    atlas_image = textured_image(shape)
    atlas_labels = np.digitize(atlas_image, [0.15, 0.3, 0.5]).astype(np.uint8)
    image = warp_image(torch.as_tensor(atlas_image)[None, None], field)[0, 0].numpy()
    truth = warp_image(torch.as_tensor(atlas_labels)[None, None].float(), field, mode="nearest")[0, 0].numpy()
    atlas = (Volume(atlas_image, np.eye(4)), Volume(atlas_labels, np.eye(4), is_labels=True))

    def dice(options):
        result = run_to_end(segment(Volume(image, np.eye(4)), "nice-transeg", atlas=atlas, weights=weights,
                                    device="cpu", options=options))
        return np.mean(list(dice_per_label(result.segmentation.array, truth.astype(np.uint8)).values())), result.details

    plain, _ = dice({})
    refined, details = dice({"refine": 150})
    assert refined > plain + 0.05, (plain, refined)
    assert len(details["refine"]) == 1 and details["refine"][0]["iterations"] == 150


def test_a_refinement_reports_progress_and_stops_when_cancelled(tmp_path):
    from warpseg.engine import segment

    weights = str(tiny_segmentation_checkpoint(tmp_path / "w.pt", tiny_transeg(2)))
    image, labels = blob_pair((32, 40), np.eye(4), 1)
    job = segment(image, "nice-transeg", atlas=(image, labels), weights=weights, device="cpu",
                  options={"refine": 10**6, "refine_preview_every": 2})
    stages = [record.stage for _, record in zip(range(8), job)]
    closing = time.monotonic()
    job.close()
    assert "refine atlas 1/1" in stages and time.monotonic() - closing < 1.0


@pytest.mark.parametrize("options,message", [({"refine": 5, "fuse_atlas_labels": False}, "drop refine"),
                                             ({"refine": -1}, "refine=-1")])
def test_a_refinement_without_atlas_labels_to_move_is_refused(tmp_path, options, message):
    from warpseg.engine import segment
    from warpseg.errors import InputError

    weights = str(tiny_segmentation_checkpoint(tmp_path / "w.pt", tiny_transeg(2)))
    image, labels = blob_pair((32, 40), np.eye(4), 1)
    with pytest.raises(InputError, match=message):
        run_to_end(segment(image, "nice-transeg", atlas=(image, labels), weights=weights, device="cpu",
                           options=options))


def test_atlas_labels_outside_the_model_label_set_are_refused_for_fusion_only(tmp_path):
    from warpseg.engine import segment
    from warpseg.errors import InputError

    weights = str(tiny_segmentation_checkpoint(tmp_path / "w.pt", tiny_transeg(2)))
    image, labels = blob_pair((32, 40), np.eye(4), 1)
    foreign = labels.with_array(labels.array * 3, is_labels=True)  # IDs up to 9 for a 4-label model
    with pytest.raises(InputError, match="fuse_atlas_labels=false"):
        run_to_end(segment(image, "nice-transeg", atlas=(image, foreign), weights=weights, device="cpu"))
    alone = run_to_end(segment(image, "nice-transeg", atlas=(image, foreign), weights=weights, device="cpu",
                               options={"fuse_atlas_labels": False}))
    assert alone.segmentation.shape == image.shape


def test_labels_map_back_with_the_checkpoint_label_ids():
    """Probabilities are resized to the native grid before the argmax, so labels keep their IDs."""
    from warpseg.learning.preprocess import plan_grid
    from warpseg.methods.learned_inference import labels_to_native_grid

    grid = plan_grid((30, 37), (1.0, 1.0), Preprocessing(target_spacing=2.0, size_multiple=8))
    logits = torch.full((1, 4) + grid.padded_shape, -5.0)
    logits[:, 3] = 5.0
    labels = labels_to_native_grid(logits, grid)
    assert labels.shape == (30, 37) and (labels == 3).all()
    volume = Volume(labels, np.eye(4), is_labels=True, label_names=NAMES)
    assert volume.label_names[3] == "core"


def test_warm_start_from_nice_trans_registers_exactly_as_nice_trans(tmp_path):
    """Copied and zero-widened weights: the new segmentation inputs of the fuse convs contribute nothing."""
    source, target, counts = warm_started_transeg(tmp_path)
    assert counts["copied"] > 0 and counts["widened"] == len(TINY[2]) and counts["fresh"] > 0
    moving, fixed = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        expected, got = source.eval()(moving, fixed), target.eval()(moving, fixed)
    assert torch.allclose(expected["displacement"], got["displacement"], atol=1e-5)
    assert expected["displacement"].abs().max() > 0.01


def test_frozen_registration_keeps_the_warm_start_field_while_the_branches_learn(tmp_path):
    from warpseg.learning.losses import SegmentationLoss

    source, model, _ = warm_started_transeg(tmp_path)
    assert model.freeze_registration() > 0
    branches = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    assert branches and all(name.split(".")[0] in ("moving_branch", "fixed_branch") for name in branches)
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    image, labels = blob_pair((32, 32), np.eye(4), 1)
    image, labels = torch.as_tensor(image.array)[None, None], torch.as_tensor(labels.array).long()[None, None]
    for _ in range(3):
        outputs = model(image, image)
        total = sum(sum(SegmentationLoss()(outputs[key], labels).values())
                    for key in ("moving_segmentation", "fixed_segmentation"))
        total = total - outputs["displacement"].abs().mean()  # a registration term: must not move anything
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
    assert any(not torch.equal(p, branches[name]) for name, p in model.named_parameters() if name in branches)
    moving, fixed = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(source.eval()(moving, fixed)["displacement"],
                              model.eval()(moving, fixed)["displacement"], atol=1e-5)


def test_a_registration_lr_scale_slows_the_registration_part_but_keeps_it_learning(tmp_path):
    from warpseg.learning.losses import SegmentationLoss
    from warpseg.learning.train import TrainingConfig, parameter_groups

    _, model, _ = warm_started_transeg(tmp_path)
    rate, scale, steps = 1e-3, 0.1, 3
    groups = parameter_groups(model, TrainingConfig(method="nice-transeg", ndim=2, data="", learning_rate=rate,
                                                    registration_lr_scale=scale))
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.segmentation_branch_parameters()}
    assert groups[1]["lr"] == pytest.approx(rate * scale) and len(groups[1]["params"]) > 0
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimiser = torch.optim.Adam(groups, lr=rate)
    image, labels = blob_pair((32, 32), np.eye(4), 1)
    image, labels = torch.as_tensor(image.array)[None, None], torch.as_tensor(labels.array).long()[None, None]
    for _ in range(steps):
        outputs = model(image, image)
        total = sum(sum(SegmentationLoss()(outputs[key], labels).values())
                    for key in ("moving_segmentation", "fixed_segmentation")) - outputs["displacement"].abs().mean()
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
    branch_names = {name for name, _ in model.named_parameters() if name.split(".")[0].endswith("_branch")}
    moved = {name: float((p.detach() - before[name]).abs().max()) for name, p in model.named_parameters()}
    registration_moved = max(value for name, value in moved.items() if name not in branch_names)
    bound = steps * rate * scale * 1.05  # an Adam step moves a weight by at most about its learning rate
    assert 0 < registration_moved <= bound
    assert max(moved[name] for name in branch_names) > 2 * bound


def test_a_registration_lr_scale_is_refused_where_it_means_nothing(tmp_path, capsys):
    from warpseg.cli import main

    for extra in (["--registration-lr-scale", "0"], ["--registration-lr-scale", "0.1", "--freeze-registration",
                                                     "--init-from", "w0.pt"]):
        assert main(["train", "nice-transeg", "--ndim", "2", "--steps", "1", "--out", str(tmp_path / "w.pt"),
                     *extra]) != 0
        assert "--registration-lr-scale applies to nice-transeg without --freeze-registration" in capsys.readouterr().err
    assert main(["train", "seg-unet", "--ndim", "2", "--steps", "1", "--registration-lr-scale", "0.5",
                 "--out", str(tmp_path / "w.pt")]) != 0
    assert not (tmp_path / "w.pt").exists()


def test_freezing_the_registration_needs_nice_transeg_and_trained_weights(tmp_path, capsys):
    from warpseg.cli import main

    for method, extra in (("nice-transeg", []), ("seg-unet", ["--init-from", "w0.pt"])):
        assert main(["train", method, "--ndim", "2", "--freeze-registration", "--steps", "1",
                     "--out", str(tmp_path / "w.pt"), *extra]) != 0
        assert "--freeze-registration applies to nice-transeg started from trained weights" in capsys.readouterr().err
    assert not (tmp_path / "w.pt").exists()


@pytest.mark.parametrize("labels", ["seg4", "seg35"])
def test_shipped_3d_weights_register_exactly_as_the_3d_nice_trans_they_started_from(labels):
    """The 3D weights trained their segmentation branches only (``--freeze-registration``, README)."""
    transeg, _ = load_checkpoint(METHODS["nice-transeg"](labels=labels).weights_path(3))
    trans, _ = load_checkpoint(METHODS["nice-trans"]().weights_path(3))
    torch.manual_seed(0)
    moving, fixed = torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        expected, got = trans.eval()(moving, fixed), transeg.eval()(moving, fixed)
    assert got["fixed_segmentation"].shape[1] == transeg.num_labels
    assert torch.allclose(expected["displacement"], got["displacement"], atol=1e-5)
