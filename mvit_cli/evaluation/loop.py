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
from mvit_cli.evaluation.sets import EvalItem, EvalSet
from mvit_cli.metrics import TOP_K, Tally, top_k_probabilities


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


@dataclass(frozen=True)
class Scoring:
    """One way to score images: which images (each with its correct classes) and which outputs compete."""

    items: Sequence[EvalItem]
    among: Sequence[int] | None = None  # output classes scored (ImageNet-R / -A's 200); None: all 1000


@dataclass
class _ShardState:
    tally: Tally = field(default_factory=Tally)
    failures: list[Failure] = field(default_factory=list)
    predictions: list[Prediction] = field(default_factory=list)


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
    (result,) = evaluate_together([Scoring(eval_set.items, among)], model, batch_size, workers, job, on_progress,
                                  on_predictions)
    return result


def evaluate_together(
    scorings: Sequence[Scoring],
    model,
    batch_size: int,
    workers: int,
    job: Distributed | None = None,
    on_progress: ProgressCallback | None = None,
    on_predictions: PredictionsCallback | None = None,
) -> list[EvalResult]:
    """Several scorings of images that overlap (ImageNet val scored as val, ReaL, R-clean, A-clean) in one pass:
    every image is decoded and run once, and counted in each scoring that holds it. One result per scoring, as
    `evaluate` would give it (the time is that of the shared pass). `on_predictions`: one scoring only.
    """
    from mvit_cli.pipeline.batching import iter_batches, run_batches

    if on_predictions is not None and len(scorings) != 1:
        raise ValueError("predictions are written for one scoring at a time")
    # The images of all scorings, each once, and where each one sits in every scoring that holds it.
    paths: list[Path] = []
    members: list[list[tuple[int, int]]] = []  # per image: (scoring number, position in that scoring)
    number_of: dict[Path, int] = {}
    for s, scoring in enumerate(scorings):
        for position, item in enumerate(scoring.items):
            n = number_of.setdefault(item.path, len(paths))
            if n == len(paths):
                paths.append(item.path)
                members.append([])
            members[n].append((s, position))

    rank, world_size = (job.rank, job.world_size) if job else (0, 1)
    shard = list(range(rank, len(paths), world_size))  # disjoint strided shards, none padded
    stream_predictions = on_predictions if job is None else None
    keep_predictions = on_predictions is not None and job is not None

    states = [_ShardState() for _ in scorings]
    scored = [torch.tensor(sorted(s.among), dtype=torch.int64) if s.among is not None else None for s in scorings]
    partial, done = False, 0
    start = time.perf_counter()
    # The published numbers were measured on the stored pixels: timm's and transformers' evaluation never apply
    # EXIF orientation, so neither does eval (classify does, since there the photo as displayed matters).
    batches = iter_batches([paths[n] for n in shard], model.preprocessing, batch_size, workers,
                           exif_transpose=False)
    try:
        for batch, logits in run_batches(batches, model.run):  # [B, 3, S, S] -> [B, 1000]
            with _interrupts_deferred():
                for s, scoring in enumerate(scorings):
                    new = _count(batch, logits, shard, members, s, scoring, states[s], scored[s])
                    if stream_predictions and new:
                        stream_predictions(new)
                    elif keep_predictions:
                        states[s].predictions.extend(new)
                done += len(batch.indices) + len(batch.failures)
            if on_progress:
                on_progress(done, len(shard), states[0].tally)
    except KeyboardInterrupt:
        partial = True
    finally:
        close = getattr(batches, "close", None)
        if close:
            close()  # stops the decoding threads now, not at garbage collection
    seconds = time.perf_counter() - start

    if job is None:
        return [EvalResult(state.tally, state.failures, seconds, partial) for state in states]
    return _merge(job, states, seconds, partial, on_predictions if keep_predictions else None)


def _count(batch, logits: torch.Tensor | None, shard: list[int], members: list[list[tuple[int, int]]], s: int,
           scoring: Scoring, state: _ShardState, scored: torch.Tensor | None) -> list[Prediction]:
    """Add scoring `s`'s part of one batch to its counts; returns its predictions."""

    def mine(local: int) -> int | None:  # position in scoring s of the batch's image `local`, or None
        return next((position for t, position in members[shard[local]] if t == s), None)

    for local, reason in batch.failures:
        position = mine(local)
        if position is not None:
            state.failures.append(Failure(position, scoring.items[position].path, reason))
            state.tally.failed += 1
    if logits is None:
        return []
    rows, positions = [], []
    for row, local in enumerate(batch.indices):
        position = mine(local)
        if position is not None:
            rows.append(row)
            positions.append(position)
    if not rows:
        return []
    items = [scoring.items[p] for p in positions]
    correct = [item.correct for item in items]
    width = max(len(c) for c in correct)
    targets = torch.tensor([list(c) + [-1] * (width - len(c)) for c in correct], dtype=torch.int64)
    mine_logits = logits[rows] if len(rows) != len(logits) else logits
    probabilities, classes = (top_k_probabilities(mine_logits) if scored is None
                              else restricted_top_k(mine_logits, scored, TOP_K))
    state.tally.add(targets, classes)
    return [
        Prediction(p, item.path, c, tuple(k), tuple(q))
        for p, item, c, k, q in zip(positions, items, correct, classes.tolist(), probabilities.tolist())
    ]


def _merge(job: Distributed, states: list[_ShardState], seconds: float,
           partial: bool, on_predictions: PredictionsCallback | None) -> list[EvalResult]:
    """Sum the counts of all processes; the main process gets every failure and prediction, in set order."""
    import torch.distributed as dist

    for state in states:  # the same scorings in the same order on every process
        state.tally.all_reduce(job.device)
    # The slowest process sets the time; one interrupted process makes the whole result partial.
    timing = torch.tensor([seconds, float(partial)], dtype=torch.float64, device=job.device)
    dist.all_reduce(timing, op=dist.ReduceOp.MAX)
    seconds, partial = float(timing[0]), bool(timing[1])

    shards: list = [None] * job.world_size
    dist.all_gather_object(shards, [(state.failures, state.predictions) for state in states])
    results = []
    for s, state in enumerate(states):
        failures = sorted((f for shard in shards for f in shard[s][0]), key=lambda f: f.position)
        if on_predictions and job.is_main:
            on_predictions(sorted((p for shard in shards for p in shard[s][1]), key=lambda p: p.position))
        results.append(EvalResult(state.tally, failures, seconds, partial, job.world_size))
    return results


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
