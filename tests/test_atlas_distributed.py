"""`warpseg atlas build --distributed`: the atlas update over items split across 2 gloo ranks equals the
single-process one, and a 2-rank build writes rank 0's outputs only. Tiny synthetic data only."""
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, drive, free_port
from test_atlas_istn import TINY, write_tiny_shared_data
from warpseg.cli import main
from warpseg.io import read_volume
from warpseg.learning.atlas_build import OUTPUT_FILES, AtlasConfig, AtlasProgress, build_atlas, update_atlas
from warpseg.learning.atlas_build import warped_training_mean
from warpseg.learning.atlas_data import AtlasTrainingData
from warpseg.learning.checkpoint import load_checkpoint
from warpseg.learning.data import Subject
from warpseg.learning.distributed import DistributedContext, share_of_items
from warpseg.models import AtlasIstn

SHAPE = (32, 40)


def toy_training_data() -> AtlasTrainingData:
    """Five one-slice subjects on ``SHAPE``: three with images, two label-only (synthesised images)."""
    training = []
    for index in range(5):
        labels = torch.zeros((1, 1) + SHAPE, dtype=torch.long)
        labels[..., 6 + 2 * index: 26, 8 + index: 32] = 1
        labels[..., 12: 20 + index, 14: 26] = 2
        images = (0.2 + 0.3 * labels.float() + 0.05 * index) if index < 3 else None
        training.append(Subject(f"s{index}", images, labels))
    return AtlasTrainingData(training, [], {0: "bg", 1: "outer", 2: "core"}, np.eye(4), ndim=2)


def shifted_toy_model() -> AtlasIstn:
    """A tiny seeded model holding the toy set's initial atlas, its STN set to a clear similarity transform."""
    torch.manual_seed(0)
    model = AtlasIstn(2, 3, SHAPE, **TINY)
    model.set_atlas(*toy_training_data().initial_atlas())
    with torch.no_grad():
        model.stn.similarity.parameters_out.bias[:3] = torch.tensor([math.atanh(0.2), -math.atanh(0.1), 0.3])
    return model.eval()


def start_rank(rank: int, world_size: int, port: int) -> None:
    """The variables ``torchrun`` sets, so that the code under test joins the group as it would there."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)


def warped_mean_rank(rank: int, world_size: int, port: int, folder: str) -> None:
    """One rank: the distributed warped mean of the toy set; saves it."""
    import torch.distributed as dist

    start_rank(rank, world_size, port)
    dist.init_process_group("gloo", init_method="env://")
    try:
        context = DistributedContext(rank, world_size, rank, "cpu")
        image, labels = drive(warped_training_mean(shifted_toy_model(), toy_training_data(), "cpu", context))[1]
        torch.save({"image": image, "labels": labels}, os.path.join(folder, f"mean{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_every_item_is_in_exactly_one_share():
    items = list(range(7))
    shares = [share_of_items(items, DistributedContext(rank, 3, rank, "cpu")) for rank in range(3)]
    assert sorted(sum(shares, [])) == items and [len(share) for share in shares] == [3, 2, 2]
    assert share_of_items(items, None) == items


def test_warped_mean_over_two_gloo_ranks_equals_the_single_process_mean(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(warped_mean_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"mean{rank}.pt", weights_only=True) for rank in range(2)]
    expected_image, expected_labels = drive(warped_training_mean(shifted_toy_model(), toy_training_data(), "cpu"))[1]
    for key in ("image", "labels"):
        assert torch.equal(ranks[0][key], ranks[1][key])  # every rank holds the same mean
    torch.testing.assert_close(ranks[0]["image"], expected_image, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ranks[0]["labels"], expected_labels, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ranks[0]["labels"].sum(1), torch.ones((1,) + SHAPE), atol=1e-5, rtol=0)
    # the transform is no identity and one rank's share alone gives another mean: the test can fail
    initial_image, _ = toy_training_data().initial_atlas()
    assert float((expected_image - initial_image).abs().max()) > 0.1
    half = toy_training_data()
    half.items = half.items[::2]
    assert float((drive(warped_training_mean(shifted_toy_model(), half, "cpu"))[1][0] - expected_image).abs().max()) > 1e-3


def tiny_build_config(data) -> AtlasConfig:
    return AtlasConfig(data=str(data), ndim=2, epochs=1, steps_per_epoch=4, learning_rate=1e-2, atlas_rate=0.5,
                       label_maps=0, device="cpu", model_options=dict(TINY))


def atlas_build_rank(rank: int, world_size: int, port: int, folder: str) -> None:
    """One rank of a distributed build of the tiny atlas; saves its atlas previews, records and written paths."""
    start_rank(rank, world_size, port)
    config = tiny_build_config(os.path.join(folder, "data"))
    records, written = drive(build_atlas(config, os.path.join(folder, "atlas"), distributed=True))
    atlases = [record for record in records if isinstance(record, AtlasProgress)]
    torch.save({"images": [atlas.preview for atlas in atlases], "records": [atlas.record for atlas in atlases],
                "written": [str(path) for path in written]}, os.path.join(folder, f"rank{rank}.pt"))


def test_two_gloo_ranks_build_one_atlas_that_rank_0_writes(tmp_path):
    import torch.multiprocessing as mp

    data = write_tiny_shared_data(tmp_path / "data")
    mp.spawn(atlas_build_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(2)]
    out = tmp_path / "atlas"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atlas", "data", "rank0.pt", "rank1.pt"]  # no staging left
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    assert sorted(ranks[0]["written"]) == sorted(str(out / name) for name in OUTPUT_FILES) and ranks[1]["written"] == []
    assert [r["epoch"] for r in ranks[0]["records"]] == [0, 1] and "dice" in ranks[0]["records"][1]
    assert "dice" not in ranks[1]["records"][1]  # rank 0 alone validates
    for before, after in zip(*(rank["images"] for rank in ranks)):
        assert np.array_equal(before, after)  # every rank ends every epoch with the same atlas
    model, checkpoint = load_checkpoint(out / "model.pt")
    assert checkpoint["training"]["world_size"] == 2 and [h["epoch"] for h in checkpoint["training"]["history"]] == [0, 1]
    # the written atlas is the single-process update with the trained weights: the whole set's warped mean
    levels = model.atlas_label_levels.clone()
    data = AtlasTrainingData.from_shared_data(data, 2, label_maps=0)
    initial_image, initial_labels = data.initial_atlas()
    model.set_atlas(initial_image, initial_labels)
    warped_image, warped_labels = drive(warped_training_mean(model, data, "cpu"))[1]
    written_image = torch.as_tensor(read_volume(out / "atlas_image.nii.gz", labels=False).array)
    expected_image = update_atlas(initial_image, warped_image, 0.5)[0, 0]
    torch.testing.assert_close(written_image, expected_image, atol=1e-5, rtol=1e-5)
    assert np.array_equal(ranks[0]["images"][1], written_image.numpy())
    expected_levels = (update_atlas(initial_labels, warped_labels, 0.5).clamp(0, 1) * 255).round()
    assert float((levels.float() - expected_levels).abs().max()) <= 1
    assert float((expected_image - initial_image[0, 0]).abs().max()) > 1e-3  # the update did move the atlas


def test_distributed_atlas_build_outside_torchrun_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    data = write_tiny_shared_data(tmp_path / "data")
    status = main(["atlas", "build", "--data", str(data), "--ndim", "2", "--epochs", "1", "--steps-per-epoch", "1",
                   "--device", "cpu", "--out", str(tmp_path / "atlas"), "--quiet", "--distributed"])
    error = capsys.readouterr().err.strip()
    assert status == 2 and "torchrun" in error and "atlas build" in error and "\n" not in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


@pytest.mark.slow
def test_torchrun_atlas_build_prints_and_writes_once(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun not installed beside this Python")
    data, out = write_tiny_shared_data(tmp_path / "data"), tmp_path / "atlas"
    command = [torchrun, "--nproc_per_node=2", f"--master_port={free_port()}", "-m", "warpseg.cli", "atlas", "build",
               "--data", str(data), "--ndim", "2", "--epochs", "1", "--steps-per-epoch", "2", "--label-maps", "0",
               "--device", "cpu", "--out", str(out), "--distributed"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert finished.stdout.count("atlas and model written") == 1  # rank 0 only
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atlas", "data"]
    assert load_checkpoint(out / "model.pt")[1]["training"]["world_size"] == 2
