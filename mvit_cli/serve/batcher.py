"""Dynamic batching: images from concurrent requests gathered into one model batch.

Requests decode their uploads on threads and hand each decoded image ([crop, crop, 3] uint8, the pipeline's
`pixels_or_reason`) to the batcher, which answers with that image's logits. One thread forms batches: it waits
for an image, then takes more until the batch holds `batch_size` images or `max_wait` has passed since the oldest
one arrived, turns them into one tensor (`batch_tensor`, as classify does) and runs the model. It waits only
while images are known to be on their way (`expect`: announced when their decoding starts), so a lone request
never waits for company that is not coming. While the model runs, new images queue up; an image that already
waited longer than `max_wait` (the model was busy) is batched at once with whatever else is waiting, so under
load batches grow by themselves and no time is spent waiting.

An image belongs to no request here, so a slow or broken request cannot hold a batch back: its images join a
batch only once they are decoded (a slow decode holds a batch back by `max_wait` at most), and an image that
fails to decode never gets here. A batch whose model call raises fails its images only.

The model is called from the batcher's thread only: on the CPU runner the images of a batch spread over the
cores, one at a time per core, each core running single-threaded kernels (runners/torch_cpu.py), and each
image's logits are the same bits whatever batch it ran in (`same_shape_chunks`), so a record does not depend on
which requests happened to arrive with it.

On the CPU the batcher's own thread is single-threaded too (`single_threaded`), and the model is warmed up from
it (`warm_up`): then no thread of the server ever starts an OpenMP team. Warmed up from a thread with all cores,
the model's fused oneDNN kernels are compiled for that many threads, and every per-core thread running them then
starts a team of its own: more threads than cores, which waited on each other (measured, XXS, 16 clients on 2
cores: 18.6 ms of CPU per image instead of 17.4, 96-101 instead of 110-115 images/s). A lone image then runs
on one core instead of two: on an idle machine its request takes
longer than two cores would need (p50 24 ms where decode + model on two cores take 14), and with other
processes on the cores far less (the two-core path took 800 ms per image with one core busy; 1 client p50
26 ms). benchmarks/RESULTS.md has the figures.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from mvit_cli.pipeline.batching import batch_tensor
from mvit_cli.preprocess import Preprocessing


class BatcherClosed(RuntimeError):
    """The server is shutting down: no new images are taken."""


@dataclass
class _Job:
    pixels: np.ndarray
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    """Runs `run` ([B, 3, H, W] float32 -> [B, classes] logits) on batches of images from any thread or task."""

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], preprocessing: Preprocessing, batch_size: int,
                 max_wait_s: float, on_batch: Callable[[int], None] | None = None, single_threaded: bool = False,
                 warm_up: tuple[int, ...] = (), unit: int = 1):
        """`single_threaded`: the batcher's thread runs torch with one thread (module docstring); `warm_up`: batch
        sizes run once on zeros before the first image is taken (the constructor returns when they are done);
        `unit`: the images the model runs at once without waste (`_next_batch`)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.run = run
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.max_wait_s = max(0.0, max_wait_s)
        self.on_batch = on_batch
        self.unit = max(1, unit)
        self._jobs: deque[_Job] = deque()
        self._coming = 0  # images announced (`expect`) and not yet submitted or withdrawn: being decoded
        self._closed = False
        self._changed = threading.Condition()
        started: Future = Future()
        default_threads = torch.get_num_threads()
        self._thread = threading.Thread(target=self._loop, args=(single_threaded, warm_up, started),
                                        name="mvit-batcher", daemon=True)
        self._thread.start()
        try:
            started.result()  # re-raises what failed in the warm-up
        finally:
            if single_threaded:
                torch.set_num_threads(default_threads)  # the default for threads created later, as before

    def expect(self, count: int = 1) -> None:
        """`count` images are on their way (being decoded): a batch may wait for them (up to max_wait), and only
        for them. Each is then `submit`ted with `expected=True`, or `withdraw`n if it cannot be decoded."""
        with self._changed:
            self._coming += count

    def withdraw(self, count: int = 1) -> None:
        """Images announced by `expect` that will not come after all (they failed to decode)."""
        with self._changed:
            self._coming -= count
            self._changed.notify_all()

    def submit(self, pixels: np.ndarray, expected: bool = False) -> Future:
        """Queue one decoded image; the future gets its logits row [classes] (or the model's exception)."""
        job = _Job(pixels)
        with self._changed:
            if expected:
                self._coming -= 1
            if self._closed:
                raise BatcherClosed("the server is shutting down")
            self._jobs.append(job)
            self._changed.notify_all()
        return job.future

    async def logits(self, pixels: np.ndarray, expected: bool = False) -> torch.Tensor:
        """`submit` for a coroutine: awaits the image's logits row."""
        return await asyncio.wrap_future(self.submit(pixels, expected))

    def close(self, timeout: float | None = None) -> None:
        """Take no more images, run every image already queued, and stop the thread (a graceful drain)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join(timeout)

    def _loop(self, single_threaded: bool, warm_up: tuple[int, ...], started: Future) -> None:
        try:
            if single_threaded:
                torch.get_num_threads()  # ATen sets a new thread's count lazily on its first op: have that done,
                torch.set_num_threads(1)  # then override it (for this thread; see runners.base.PerCorePool)
            size = self.preprocessing.crop_size
            for count in warm_up:
                self.run(torch.zeros(count, 3, size, size))
        except BaseException as exc:  # noqa: BLE001 - the constructor raises it
            started.set_exception(exc)
            return
        started.set_result(None)
        while True:
            jobs = self._next_batch()
            if jobs is None:
                return
            self._run(jobs)

    def _next_batch(self) -> list[_Job] | None:
        """The next batch: the oldest image and those that join it, up to `batch_size`. It waits for more only
        while images are being decoded, and at most until `max_wait` after the oldest arrived; a lone request
        runs at once. None once closed and drained.

        Of more than `unit` images waiting, a whole number of units is taken and the rest left first in line for
        the next batch, which starts as soon as this one is done. On the CPU a unit is one image per core: 3
        images on 2 cores take as long as 4."""
        with self._changed:
            while not self._jobs:
                if self._closed:
                    return None
                self._changed.wait()
            deadline = self._jobs[0].arrived + self.max_wait_s
            while len(self._jobs) < self.batch_size and self._coming > 0 and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            count = min(self.batch_size, len(self._jobs))
            if count > self.unit and not self._closed:
                count -= count % self.unit
            return [self._jobs.popleft() for _ in range(count)]

    def _run(self, jobs: list[_Job]) -> None:
        jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]  # skip the ones given up on
        if not jobs:
            return
        try:
            logits = self.run(batch_tensor([job.pixels for job in jobs], self.preprocessing))
        except BaseException as exc:  # noqa: BLE001 - the batch's requests get the error; the batcher goes on
            for job in jobs:
                job.future.set_exception(exc)
            return
        if self.on_batch is not None:
            self.on_batch(len(jobs))
        for job, row in zip(jobs, logits):
            job.future.set_result(row)
