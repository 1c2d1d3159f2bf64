"""Device and process set-up, strict: the one home of which device a run uses and which processes it spans.

Under ``torchrun --nproc_per_node N`` (``WORLD_SIZE`` > 1) a process joins the process group (gloo on the CPU, nccl on
CUDA) and uses the GPU of its ``LOCAL_RANK``; otherwise it is one process on one device. A device asked for by name
(``train.device: cuda``) that is not there is an error, not a silent fall-back to the CPU.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist

from pipeline.errors import UserError


@dataclasses.dataclass(frozen=True)
class Dist:
    """This process's place among the run's processes: rank 0 of 1 without torchrun."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that prints and writes every file."""
        return self.rank == 0

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` averaged over the processes, in place (unchanged in a single process)."""
        if self.world > 1:
            dist.all_reduce(t)
            t /= self.world
        return t

    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``t`` on every process, in place (unchanged in a single process)."""
        if self.world > 1:
            dist.broadcast(t, src=0)
        return t

    def barrier(self) -> None:
        """Wait for every process (nothing to wait for in a single process)."""
        if self.world > 1:
            dist.barrier()


def init_distributed(device_name: str) -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        use_cuda = device_name != "cpu" and torch.cuda.is_available()
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return Dist(dist.get_rank(), dist.get_world_size())


def resolve_device(name: str = "auto") -> torch.device:
    """The device ``train.device`` names: ``auto`` is CUDA when there is one, else the CPU; under torchrun, the GPU
    of this process's ``LOCAL_RANK``. Raises a :class:`UserError` for ``cuda`` on a machine without it."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is cuda but no CUDA device is available (use auto or cpu)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and dist.is_available() and dist.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def init_process(device_name: str, threads: int = 0) -> tuple[Dist, torch.device]:
    """Set this process up for a run, in order: torch's intra-op threads (``threads`` > 0; 0 keeps torch's default),
    the process group (under torchrun), then the device."""
    if threads > 0:
        torch.set_num_threads(threads)
    ddp = init_distributed(device_name)
    return ddp, resolve_device(device_name)
