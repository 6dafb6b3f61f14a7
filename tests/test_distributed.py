"""`warpseg train --distributed`: DDP on 2 gloo processes equals single-process training on both pairs."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, blob_pair, free_port
from warpseg.cli import main
from warpseg.learning.distributed import DistributedContext, rank_seed, wrap_model
from warpseg.learning.losses import RegistrationLoss
from warpseg.learning.registry import new_model
from warpseg.learning.train import pair_loss_terms, training_step

TINY_VXM = {"encoder": (4, 8, 8, 8), "decoder": (8, 8, 8, 8, 8, 4, 4)}
STEPS = 3


def blob_training_pair(seed: int) -> dict:
    """A 32 x 32 training pair ``{moving, fixed, moving_labels, fixed_labels}`` of shape ``(1, 1, 32, 32)``."""
    moving, moving_labels = blob_pair((32, 32), np.eye(4), seed)
    fixed, fixed_labels = blob_pair((32, 32), np.eye(4), seed + 100)
    tensors = {key: torch.as_tensor(volume.array)[None, None] for key, volume in
               (("moving", moving), ("fixed", fixed), ("moving_labels", moving_labels), ("fixed_labels", fixed_labels))}
    return {**tensors, "moving_labels": tensors["moving_labels"].long(), "fixed_labels": tensors["fixed_labels"].long()}


def new_tiny_run():
    """The same tiny network, optimiser and loss on every call (seeded)."""
    torch.manual_seed(0)
    model = new_model("vxm", 2, **TINY_VXM)
    return model, torch.optim.Adam(model.parameters(), lr=5e-3), RegistrationLoss(2, window=5, smoothness=0.1)


def ddp_rank(rank: int, world_size: int, port: int, folder: str) -> None:
    """One rank: DDP training of the tiny network on its own pair; saves its losses and weights."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        model, optimiser, loss = new_tiny_run()
        ddp = wrap_model(model, DistributedContext(rank, world_size, rank, "cpu"))
        pair = blob_training_pair(rank)
        losses = [training_step(ddp, optimiser, loss, pair, "cpu")["total"] for _ in range(STEPS)]
        torch.save({"losses": losses, "state_dict": model.state_dict()}, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def single_process_on_both_pairs() -> tuple[list[list[float]], dict]:
    """Per step: each pair's loss, then one step on the mean of both losses (what DDP averages)."""
    model, optimiser, loss = new_tiny_run()
    pairs, losses = [blob_training_pair(0), blob_training_pair(1)], []
    for _ in range(STEPS):
        terms = [pair_loss_terms(model, loss, pair, "cpu")["total"] for pair in pairs]
        optimiser.zero_grad(set_to_none=True)
        (sum(terms) / len(terms)).backward()
        optimiser.step()
        losses.append([float(term.detach()) for term in terms])
    return losses, model.state_dict()


def test_two_gloo_ranks_train_like_one_process_on_both_pairs(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(ddp_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    expected_losses, expected_weights = single_process_on_both_pairs()
    for rank in range(2):
        assert ranks[rank]["losses"] == pytest.approx([step[rank] for step in expected_losses], abs=1e-5)
        for name, value in expected_weights.items():
            torch.testing.assert_close(ranks[rank]["state_dict"][name], value, atol=1e-5, rtol=1e-4)
    assert expected_losses[-1] != pytest.approx(expected_losses[0], abs=1e-4)  # the weights did move
    lone_model, lone_optimiser, loss = new_tiny_run()  # one pair alone ends elsewhere: the test can fail
    for _ in range(STEPS):
        training_step(lone_model, lone_optimiser, loss, blob_training_pair(0), "cpu")
    largest_difference = max(float((value - expected_weights[name]).abs().max())
                             for name, value in lone_model.state_dict().items())
    assert largest_difference > 1e-3


def test_each_rank_samples_with_its_own_seed_and_rank_0_with_the_run_seed():
    seeds = [rank_seed(7, rank) for rank in range(4)]
    assert seeds[0] == 7 and len(set(seeds)) == 4
    assert rank_seed(8, 1) != seeds[1]


def test_distributed_outside_torchrun_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    status = main(["train", "vxm", "--ndim", "2", "--steps", "1", "--out", str(tmp_path / "m.pt"),
                   "--device", "cpu", "--distributed"])
    error = capsys.readouterr().err.strip()
    assert status == 2 and "torchrun" in error and "\n" not in error
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.slow
def test_torchrun_writes_one_single_process_format_checkpoint(tmp_path, shared_data):
    from warpseg.learning.checkpoint import build_model, read_checkpoint

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun not installed beside this Python")
    out = tmp_path / "vxm.pt"
    command = [torchrun, "--nproc_per_node=2", f"--master_port={free_port()}", "-m", "warpseg.cli", "train", "vxm",
               "--ndim", "2", "--data", str(shared_data), "--steps", "2", "--validate-every", "2", "--label-maps", "0",
               "--device", "cpu", "--out", str(out), "--distributed"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert finished.stdout.count("checkpoint written") == 1  # rank 0 only
    payload = read_checkpoint(out)
    assert payload["training"]["world_size"] == 2 and payload["training"]["validation"]["step"] == 2
    assert set(payload["state_dict"]) == set(new_model("vxm", 2).state_dict())  # no DDP 'module.' prefix
    build_model(payload)
    state = torch.load(out.with_suffix(".state.pt"), weights_only=False)
    assert len(state["generators"]) == 2 and not torch.equal(state["generators"][0], state["generators"][1])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["vxm.pt", "vxm.state.pt"]
