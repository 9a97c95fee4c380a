"""Device choice and multi-process (DistributedDataParallel) setup.

``torchrun --nproc_per_node=N main.py ...`` starts N processes and sets ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE``; each process then trains a replica of the model on its own
shard of every batch. Without those variables the run is a single process.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Any, List

import torch
import torch.distributed as dist
from torch import nn

from runner.errors import DeviceError

DEVICES = ("auto", "cpu", "cuda")  # the values of config.device (see select_device)


@dataclasses.dataclass(frozen=True)
class Context:
    """Where this process runs.

    Attributes:
        device: the torch device of this process.
        rank: index of this process among all processes (0 when single-process).
        world_size: number of processes.
    """

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        """Whether several processes train together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints, logs and test reports."""
        return self.rank == 0


def select_device(request: str, local_rank: int = 0) -> torch.device:
    """The device for ``config.device`` ("auto", "cpu" or "cuda").

    Raises:
        DeviceError: CUDA was asked for but is not available.
    """
    if request == "cpu" or (request == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(
            "--config.device=cuda was given but this PyTorch installation sees no CUDA GPU "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}). Run on the CPU with "
            "--config.device=cpu (or --config.device=auto), or install a CUDA build of PyTorch "
            "on a machine with an NVIDIA GPU."
        )
    return torch.device("cuda", local_rank)


def setup(device_request: str, timeout_minutes: float = 30.0) -> Context:
    """Chooses the device and, under torchrun, joins the process group.

    The backend is NCCL on CUDA and Gloo on the CPU. A collective operation that a process does
    not reach within ``timeout_minutes`` (a hung rank) fails in the others instead of blocking
    them forever.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(device_request, local_rank)
    if world_size == 1:
        return Context(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return Context(device, dist.get_rank(), dist.get_world_size())


def teardown(context: Context, together: bool = True) -> None:
    """Leaves the process group joined by :func:`setup`.

    Args:
        together: first wait until every process is done (a run that ended normally: the main
            process still tests while the others are finished, and a process that closes its
            connections while a peer still holds them can abort inside Gloo). ``False`` after an
            error, when the other processes may never arrive.
    """
    if context.distributed and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def wrap(model: nn.Module, context: Context) -> nn.Module:
    """The model to train: a DistributedDataParallel replica when several processes run."""
    if not context.distributed:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def sum_over_processes(values: torch.Tensor, context: Context) -> torch.Tensor:
    """Element-wise sum of ``values`` over all processes (identity when single-process)."""
    if context.distributed:
        values = values.to(context.device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values.cpu()


def max_over_processes(values: torch.Tensor, context: Context) -> torch.Tensor:
    """Element-wise maximum of ``values`` over all processes (identity when single-process)."""
    if context.distributed:
        values = values.to(context.device)
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values.cpu()


def gather_objects(obj: Any, context: Context) -> List[Any]:
    """``obj`` of every process, in rank order, on every process (``[obj]`` when single-process)."""
    if not context.distributed:
        return [obj]
    gathered: List[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def parameter_fingerprints(model: nn.Module, context: Context) -> List[float]:
    """A float64 sum of all parameters, one per process, gathered on every process.

    Replicas that train correctly hold identical parameters, so all entries agree.
    """
    with torch.no_grad():
        total = sum(p.detach().double().sum() for p in unwrap(model).parameters())
    local = torch.as_tensor(float(total), dtype=torch.float64)
    gathered = torch.zeros(context.world_size, dtype=torch.float64)
    gathered[context.rank] = local
    return sum_over_processes(gathered, context).tolist()
