"""Dynamic batching: images from concurrent requests gathered into one model batch.

Requests decode their uploads on threads and hand each decoded image ([crop, crop, 3] uint8, the pipeline's
`pixels_or_reason`) to the batcher, which answers with that image's logits. One thread forms batches: it waits
for an image, then takes more until the batch holds `batch_size` images or `max_wait` has passed since the oldest
one arrived, turns them into one tensor (`batch_tensor`, as classify does) and runs the model. While the model
runs, new images queue up; an image that already waited longer than `max_wait` (the model was busy) is batched
at once with whatever else is waiting, so under load batches grow by themselves and no time is spent waiting.

An image belongs to no request here, so a slow or broken request cannot hold a batch back: its images join a
batch only once they are decoded, and an image that fails to decode never gets here. A batch whose model call
raises fails its images only.

The model runs on the batcher's thread only: on the CPU runner the images of a batch spread over the cores
(runners/torch_cpu.py), and each image's logits are the same bits whatever batch it ran in (`same_shape_chunks`),
so a record does not depend on which requests happened to arrive with it.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
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


_STOP = object()


class DynamicBatcher:
    """Runs `run` ([B, 3, H, W] float32 -> [B, classes] logits) on batches of images from any thread or task."""

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], preprocessing: Preprocessing, batch_size: int,
                 max_wait_s: float, on_batch: Callable[[int], None] | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.run = run
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.max_wait_s = max(0.0, max_wait_s)
        self.on_batch = on_batch
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()  # orders `submit` against `close`: nothing is queued behind the stop mark
        self._thread = threading.Thread(target=self._loop, name="mvit-batcher", daemon=True)
        self._thread.start()

    def submit(self, pixels: np.ndarray) -> Future:
        """Queue one decoded image; the future gets its logits row [classes] (or the model's exception)."""
        job = _Job(pixels)
        with self._lock:
            if self._closed:
                raise BatcherClosed("the server is shutting down")
            self._queue.put(job)
        return job.future

    async def logits(self, pixels: np.ndarray) -> torch.Tensor:
        """`submit` for a coroutine: awaits the image's logits row."""
        return await asyncio.wrap_future(self.submit(pixels))

    def close(self, timeout: float | None = None) -> None:
        """Take no more images, run every image already queued, and stop the thread (a graceful drain)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            jobs, stop = self._gather(first)
            self._run(jobs)
            if stop:
                return

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        """`first` and the images that join it: up to `batch_size`, until `max_wait` after `first` arrived."""
        jobs = [first]
        deadline = first.arrived + self.max_wait_s
        while len(jobs) < self.batch_size:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            jobs.append(job)
        return jobs, False

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
