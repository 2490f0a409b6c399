"""Running as one of several processes started by torchrun (torch.distributed): who this process is, which device
it uses, how the inputs are split and how results come back in order, and leaving the job cleanly.

Shards are strided: process r of W takes inputs r, r + W, r + 2W, ... of the stream (disjoint, none dropped or
repeated, whatever the count; and a stream of unknown length needs no counting first). Every process batches its
shard the same way (the same batch sizes), so at step t the processes hold the t-th batches of their shards, and
interleaving them gives a contiguous run of the whole input order: the main process writes each step's results
as they arrive, in input order, with no more than one step of them in memory.

Stopping (Ctrl-C, SIGTERM) must not break the lockstep: a process that left the collective calls would leave the
others waiting for ever. So under torchrun a signal only sets `stop`; every process finishes and sends its batch
of the current step with a "stop" flag, and all of them leave together after it, the output complete up to there.
"""

from __future__ import annotations

import itertools
import os
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, TypeVar

import torch

from mvit_cli.errors import UsageError
from mvit_cli.runners.devices import resolve_device

T = TypeVar("T")



class StopRequest:
    """Set by the CLI's signal handlers under torchrun (module docstring); read at every step of
    `gather_in_order`, which passes it on to every process. `signal`: the first signal's number."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal = 0

    def request(self, signum: int) -> None:
        self.signal = self.signal or signum
        self.event.set()

    def clear(self) -> None:
        self.signal = 0
        self.event.clear()


stop = StopRequest()


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


def shard(items: Iterable[T], job: Distributed) -> Iterator[T]:
    """This process's strided share of `items` (module docstring)."""
    return itertools.islice(items, job.rank, None, job.world_size)


def gather_in_order(batches: Iterable[list[T]], job: Distributed) -> Iterator[list[T]]:
    """Each step's batches of every process, interleaved back into input order: the whole step's list on the main
    process, an empty list on the others (one per step, so they stay in step). Ends when every shard is done, or
    after the step in which any process saw a `stop` request."""
    import torch.distributed as dist

    iterator = iter(batches)
    while True:
        mine = next(iterator, None)
        gathered: list[Any] = [None] * job.world_size
        dist.all_gather_object(gathered, (mine, stop.signal if stop.event.is_set() else 0))
        parts = [batch or [] for batch, _ in gathered]
        if all(batch is None for batch, _ in gathered):
            return
        yield _interleave(parts) if job.is_main else []
        signals = [signum for _, signum in gathered if signum]
        if signals:
            stop.request(signals[0])  # every process leaves after this same step, with the same exit code
            return


def _interleave(parts: list[list[T]]) -> list[T]:
    """Process r's i-th item is input (start + i) * W + r: take the i-th of every process in turn."""
    return [part[i] for i in range(max(map(len, parts), default=0)) for part in parts if i < len(part)]


def broadcast_from_main(value: Any, job: Distributed | None) -> Any:
    """The main process's `value`, on every process (e.g. what a resumed output file already holds)."""
    if job is None:
        return value
    import torch.distributed as dist

    box = [value if job.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_agree(flag: bool, job: Distributed | None) -> bool:
    """Whether `flag` is true on any process (a collective: every process must call it)."""
    if job is None:
        return flag
    import torch.distributed as dist

    value = torch.tensor([int(flag)], device=job.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
