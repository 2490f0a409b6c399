"""Running as one of several processes started by torchrun (torch.distributed): who this process is, which device
it uses, and leaving the job cleanly. `eval` and `classify` share it; each splits its inputs into strided shards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from mvit_cli.errors import UsageError
from mvit_cli.runners.devices import resolve_device


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torch.distributed job started by torchrun."""

    rank: int
    world_size: int
    backend: str
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# What torchrun (and any env:// launcher) sets for each process it starts.
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def start_distributed(device: str) -> tuple[Distributed | None, str]:
    """Join the torch.distributed job when launched by torchrun (RANK, WORLD_SIZE, MASTER_* in the environment).

    Returns the job (None for a plain single process) and the device this process must use: with CUDA, each
    process takes the GPU of its LOCAL_RANK.
    """
    if not all(os.environ.get(name) for name in LAUNCHER_VARIABLES):
        return None, device
    import torch.distributed as dist

    target = resolve_device(device)
    if target.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"torchrun started more processes per node than there are GPUs "
                             f"({torch.cuda.device_count()}); use --nproc-per-node {torch.cuda.device_count()}")
        target = torch.device("cuda", local_rank)
        torch.cuda.set_device(target)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://")
    job = Distributed(dist.get_rank(), dist.get_world_size(), backend, target)
    return job, str(target)


def stop_distributed(job: Distributed | None) -> None:
    if job is not None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
