"""Training on several processes with torch.distributed: started by ``torchrun``, one model copy per rank.

``torchrun --nproc_per_node=K`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`start_distributed` reads them. CPU runs use the gloo backend, CUDA runs
nccl with one GPU per local rank. DistributedDataParallel averages the gradients of the ranks.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Generator
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


def start_distributed(device: str, command: str = "train") -> DistributedContext:
    """Join the process group ``torchrun`` describes: gloo on ``"cpu"``, nccl on ``"cuda"``.

    ``command`` (``"train"``, ``"atlas build"``) names the CLI command in the error raised outside torchrun.
    """
    import torch.distributed as dist

    if not launched_by_torchrun():
        raise WarpsegError("--distributed runs under torchrun, e.g. "
                           f"torchrun --nproc_per_node=2 -m warpseg.cli {command} ... --distributed")
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
    """Leave the process group, after every rank got there when ``wait`` (not after an error).

    Models wrapped for the group (DDP) that only the garbage collector still holds are freed first:
    one freed after the group is gone can abort the process (gloo: "terminate called without an
    active exception", seen once in a test run).
    """
    import gc

    import torch.distributed as dist

    if dist.is_initialized():
        gc.collect()
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def run_in_process_group(job: Callable[[DistributedContext | None], Generator], device: str, distributed: bool,
                         command: str = "train") -> Generator:
    """``yield from job(context)``: in the group ``torchrun`` describes when ``distributed``, else with ``None``.

    The group is left at the end: after every rank got there, or at once after an error (or
    :meth:`close`). Returns what ``job`` returns.
    """
    context = start_distributed(device, command) if distributed else None
    try:
        result = yield from job(context)
    except BaseException:
        if context is not None:
            stop_distributed(wait=False)
        raise
    if context is not None:
        stop_distributed()
    return result


def wrap_model(model: torch.nn.Module, context: DistributedContext, broadcast_buffers: bool = True) -> torch.nn.Module:
    """``model`` in DistributedDataParallel: every rank starts from rank 0's weights, gradients averaged.

    ``broadcast_buffers=False`` skips sending rank 0's buffers before every forward pass, for
    buffers the ranks keep equal themselves (Atlas-ISTN's atlas).
    """
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [context.local_rank] if context.device.startswith("cuda") else None
    return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=broadcast_buffers)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel wrapper, or ``model`` itself."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


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


def sum_over_ranks(*tensors: torch.Tensor) -> None:
    """Replace every tensor, in place, by its sum over the ranks (a collective: every rank must call it).

    The tensors lie on the rank's device (CUDA ones under nccl); every rank ends with the same values.
    """
    import torch.distributed as dist

    for tensor in tensors:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def share_of_items(items: list, context: DistributedContext | None) -> list:
    """This rank's share of ``items``: every ``world_size``-th from ``rank``; all of them without a context."""
    if context is None:
        return list(items)
    return list(items[context.rank::context.world_size])
