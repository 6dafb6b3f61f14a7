"""Training on several processes with torch.distributed: started by ``torchrun``, one model copy per rank.

``torchrun --nproc_per_node=K`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`start_distributed` reads them. CPU runs use the gloo backend, CUDA runs
nccl with one GPU per local rank. DistributedDataParallel averages the gradients of the ranks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from warpseg.errors import WarpsegError

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a distributed run and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: str

    @property
    def is_main(self) -> bool:
        """Rank 0 validates and writes checkpoints."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Whether ``torchrun`` (or an equivalent launcher) set this process's rank variables."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def is_main_process() -> bool:
    """True except on ranks other than 0 of a launched run (for printing once)."""
    return int(os.environ.get("RANK", "0")) == 0


def start_distributed(device: str) -> DistributedContext:
    """Join the process group ``torchrun`` describes: gloo on ``"cpu"``, nccl on ``"cuda"``."""
    import torch.distributed as dist

    if not launched_by_torchrun():
        raise WarpsegError("--distributed runs under torchrun, e.g. "
                           "torchrun --nproc_per_node=2 -m warpseg.cli train ... --distributed")
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device, backend = f"cuda:{local_rank}", "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://")
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, device)


def stop_distributed(wait: bool = True) -> None:
    """Leave the process group, after every rank got there when ``wait`` (not after an error)."""
    import torch.distributed as dist

    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, context: DistributedContext) -> torch.nn.Module:
    """``model`` in DistributedDataParallel: every rank starts from rank 0's weights, gradients averaged."""
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [context.local_rank] if context.device.startswith("cuda") else None
    return DistributedDataParallel(model, device_ids=device_ids)


def rank_seed(seed: int, rank: int) -> int:
    """The data-sampling seed of ``rank``: the run's seed on rank 0, a seed derived from both elsewhere."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def gather_from_ranks(value) -> list:
    """``value`` from every rank, in rank order (a collective: every rank must call it)."""
    import torch.distributed as dist

    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered
