"""Several GPUs or machines with ``torch.distributed`` (DDP), launched by ``torchrun``.

``torchrun --nproc-per-node N -m lesion_engine.cli train ...`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`setup` reads
them and joins the process group: NCCL on CUDA, gloo on the CPU. Without those variables training runs in
one process. Only rank 0 writes files.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

__all__ = ["DistInfo", "all_reduce_mean", "any_rank", "barrier", "setup", "teardown"]

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands.

    Attributes
    ----------
    rank, world_size, local_rank : int
        Global rank, number of processes, rank on this machine.
    device : torch.device
        The device this process trains on.
    distributed : bool
        Whether a process group is active.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool

    @property
    def is_main(self) -> bool:
        """Whether this process writes files (rank 0)."""
        return self.rank == 0


def _device(preference: str, local_rank: int) -> torch.device:
    if preference not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {preference!r}")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available")
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(device: str = "auto") -> DistInfo:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = _device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        logger.info("rank %d of %d joined (%s on %s)", rank, world_size, backend, chosen)
    distributed = dist.is_available() and dist.is_initialized()
    if distributed:
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank, world_size, local_rank, chosen, distributed)


def teardown(info: DistInfo) -> None:
    """Leave the process group (if this module joined one)."""
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in one process)."""
    if info.distributed:
        dist.barrier()


def all_reduce_mean(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Mean of each value over the ranks (the values themselves in one process)."""
    if not info.distributed or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=info.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    tensor /= info.world_size
    return {k: float(v) for k, v in zip(keys, tensor.tolist(), strict=True)}


def any_rank(flag: bool, info: DistInfo) -> bool:
    """Whether ``flag`` is true on any rank (so that every rank takes the same decision, e.g. to stop)."""
    if not info.distributed:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)
