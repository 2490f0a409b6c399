"""The evaluation loop: images -> batches -> logits -> exact top-1 / top-5 counts, on one process or many.

Under `torchrun` every process evaluates its own shard of the validation set and the counts are summed with
torch.distributed (gloo on CPU, NCCL on CUDA). Shards are strided slices of the image list: disjoint, covering
every image exactly once whatever the number of processes (DistributedSampler pads the last shard with repeated
images, which would count them twice).

Ctrl-C stops the loop between batches: the batch being counted when it arrives is finished first, so the
partial result, the predictions file and the failure list always describe the same images.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from mvit_cli.distributed import Distributed
from mvit_cli.evaluation.class_subsets import restricted_top_k
from mvit_cli.evaluation.sets import EvalSet
from mvit_cli.metrics import TOP_K, Tally, top_k


@dataclass(frozen=True)
class Prediction:
    position: int  # index of the image in EvalSet.items
    path: Path
    targets: tuple[int, ...]  # every correct class (one, except for ReaL)
    classes: tuple[int, ...]  # top-5 class indices (model output numbering), most likely first
    probabilities: tuple[float, ...]  # softmax over the classes scored (all 1000, or the set's subset)


@dataclass(frozen=True)
class Failure:
    position: int
    path: Path
    reason: str


@dataclass
class EvalResult:
    tally: Tally  # counts over the whole set (all processes)
    failures: list[Failure]  # sorted by position; complete on the main process only
    seconds: float  # wall time of the slowest process, from the first batch request to the last count
    partial: bool  # interrupted: the counts cover only the images done so far
    world_size: int = 1

    @property
    def images_per_second(self) -> float:
        return self.tally.images / self.seconds if self.seconds > 0 else 0.0


ProgressCallback = Callable[[int, int, Tally], None]  # (images done incl. failed, images in this shard, counts)
PredictionsCallback = Callable[[list[Prediction]], None]


@dataclass
class _ShardState:
    tally: Tally = field(default_factory=Tally)
    failures: list[Failure] = field(default_factory=list)
    predictions: list[Prediction] = field(default_factory=list)
    done: int = 0


def evaluate(
    eval_set: EvalSet,
    model,  # loading.LoadedModel: `run` and `preprocessing` are used
    batch_size: int,
    workers: int,
    job: Distributed | None = None,
    on_progress: ProgressCallback | None = None,
    on_predictions: PredictionsCallback | None = None,
    among: Sequence[int] | None = None,
) -> EvalResult:
    """Evaluate this process's shard of `eval_set` and, under torchrun, merge all shards.

    `among`: score only these output classes (ImageNet-R / -A's 200): top-1 / top-5 are taken among them and the
    probabilities are a softmax over them. Each image counts as correct when a prediction is any of its
    `EvalItem.correct` classes.

    `on_predictions` receives the per-image predictions: batch by batch in a single process; under torchrun
    all at once on the main process (in set order, gathered from every process), so there every process must
    pass one (or none), since each sends its shard's predictions. Ctrl-C ends the loop early and gives a
    result marked partial instead of raising.
    """
    from mvit_cli.pipeline.batching import iter_batches, run_batches

    rank, world_size = (job.rank, job.world_size) if job else (0, 1)
    positions = list(range(rank, len(eval_set.items), world_size))  # disjoint strided shards, none padded
    items = [eval_set.items[p] for p in positions]
    stream_predictions = on_predictions if job is None else None
    keep_predictions = on_predictions is not None and job is not None

    state = _ShardState()
    scored = torch.tensor(sorted(among), dtype=torch.int64) if among is not None else None
    partial = False
    start = time.perf_counter()
    # The published numbers were measured on the stored pixels: timm's and transformers' evaluation never apply
    # EXIF orientation, so neither does eval (classify does, since there the photo as displayed matters).
    batches = iter_batches([item.path for item in items], model.preprocessing, batch_size, workers,
                           exif_transpose=False)
    try:
        for batch, logits in run_batches(batches, model.run):  # [B, 3, S, S] -> [B, 1000]
            with _interrupts_deferred():
                new = _count(batch, logits, items, positions, state, scored)
                if stream_predictions and new:
                    stream_predictions(new)
                elif keep_predictions:
                    state.predictions.extend(new)
            if on_progress:
                on_progress(state.done, len(items), state.tally)
    except KeyboardInterrupt:
        partial = True
    finally:
        close = getattr(batches, "close", None)
        if close:
            close()  # stops the decoding threads now, not at garbage collection
    seconds = time.perf_counter() - start

    if job is None:
        return EvalResult(state.tally, state.failures, seconds, partial)
    return _merge(job, state, seconds, partial, on_predictions if keep_predictions else None)


def _count(batch, logits: torch.Tensor | None, items, positions: list[int], state: _ShardState,
           scored: torch.Tensor | None) -> list[Prediction]:
    """Add one batch to the counts; returns its predictions."""
    for local, reason in batch.failures:
        state.failures.append(Failure(positions[local], items[local].path, reason))
    state.tally.failed += len(batch.failures)
    state.done += len(batch.indices) + len(batch.failures)
    if logits is None:
        return []
    correct = [items[i].correct for i in batch.indices]
    width = max(len(c) for c in correct)
    targets = torch.tensor([list(c) + [-1] * (width - len(c)) for c in correct], dtype=torch.int64)
    classes, probabilities = top_k(logits) if scored is None else restricted_top_k(logits, scored, TOP_K)
    state.tally.add(targets, classes)
    return [
        Prediction(positions[local], items[local].path, c, tuple(k), tuple(p))
        for local, c, k, p in zip(batch.indices, correct, classes.tolist(), probabilities.tolist())
    ]


def _merge(job: Distributed, state: _ShardState, seconds: float,
           partial: bool, on_predictions: PredictionsCallback | None) -> EvalResult:
    """Sum the counts of all processes; the main process gets every failure and prediction, in set order."""
    import torch.distributed as dist

    state.tally.all_reduce(job.device)
    # The slowest process sets the time; one interrupted process makes the whole result partial.
    timing = torch.tensor([seconds, float(partial)], dtype=torch.float64, device=job.device)
    dist.all_reduce(timing, op=dist.ReduceOp.MAX)
    seconds, partial = float(timing[0]), bool(timing[1])

    shards: list = [None] * job.world_size
    dist.all_gather_object(shards, (state.failures, state.predictions))
    failures = sorted((f for shard_failures, _ in shards for f in shard_failures), key=lambda f: f.position)
    if on_predictions and job.is_main:
        on_predictions(sorted((p for _, shard_predictions in shards for p in shard_predictions),
                              key=lambda p: p.position))
    return EvalResult(state.tally, failures, seconds, partial, job.world_size)


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold a Ctrl-C that arrives inside the block until the block is done, then raise it.

    A batch is then either fully counted (tally, failures, predictions file) or not at all.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt
