"""What every backend is: a `Runner` maps a float32 [B, 3, H, W] batch to float32 [B, classes] logits on the CPU.

`submit` starts a batch and returns a `Pending` at once where the runner computes in the background (the per-core
CPU runners), so the pipeline can queue the next batch behind the running one. `PerCorePool` is that background:
one thread per core, each running single-threaded kernels (runners/torch_cpu.py says why).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import torch

class Pending:
    """Logits being computed in the background; `result()` waits for them. A batch's chunks, in order."""

    def __init__(self, chunks: list[Future], size: int):
        self._chunks = chunks
        self._size = size  # real images: the last chunk may carry padding (see `same_shape_chunks`)

    @classmethod
    def done(cls, logits: torch.Tensor) -> Pending:
        finished: Future = Future()
        finished.set_result(logits)
        return cls([finished], logits.shape[0])

    def result(self) -> torch.Tensor:
        return torch.cat([chunk.result() for chunk in self._chunks])[: self._size]

    def cancel(self) -> None:
        """Drop the chunks that have not started (when nobody will ask for the result any more)."""
        for chunk in self._chunks:
            chunk.cancel()


class Runner:
    """Callable: float32 [B, 3, H, W] (any device) -> float32 [B, num_classes] logits on the CPU."""

    backend: str = "torch"
    device: torch.device = torch.device("cpu")
    description: str = ""

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self, batch_size: int) -> str:
        """How a batch of `batch_size` images runs, in words (for `mvit bench`)."""
        return self.description

    def submit(self, batch: torch.Tensor) -> Pending:
        """Start on `batch` and return at once where this runner computes in the background (the per-core CPU
        runners); the others compute it before returning."""
        return Pending.done(self(batch))



class PerCorePool:
    """Runs `fn` on chunks of a batch, one chunk per core, each core single-threaded (see module docstring)."""

    def __init__(self, threads: int):
        self.threads = threads
        self.chunks_submitted = 0
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _start(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                main_threads = torch.get_num_threads()
                ready = threading.Barrier(self.threads)

                def single_threaded() -> None:
                    # ATen sets a thread's OpenMP/MKL thread count lazily, from the process default, on its
                    # first op. Trigger that now (get_num_threads), then override it for this thread: otherwise
                    # the first op would reset it to the default restored below, each pool thread would start
                    # its own multi-threaded OpenMP team, and the cores would be oversubscribed (measured:
                    # single-image latency on the main thread 2.6x slower afterwards).
                    torch.get_num_threads()
                    torch.set_num_threads(1)  # thread-local for OpenMP/MKL; also sets the default for new threads
                    ready.wait()  # every pool thread exists and is single-threaded before any work starts

                pool = ThreadPoolExecutor(self.threads, thread_name_prefix="mvit-core", initializer=single_threaded)
                list(pool.map(lambda _: None, range(self.threads)))
                torch.set_num_threads(main_threads)  # restore the default for threads created from now on
                self._pool = pool
            return self._pool

    def submit(self, fn: Callable[[torch.Tensor], torch.Tensor], chunks: list[torch.Tensor], size: int) -> Pending:
        """`fn` on every chunk, queued behind any chunks already queued; the first `size` rows of the results."""
        pool = self._start()
        self.chunks_submitted += len(chunks)
        return Pending([pool.submit(fn, chunk) for chunk in chunks], size)

    def worker_thread_counts(self) -> list[int]:
        """torch's thread count as each pool thread sees it (a diagnostic: every entry should be 1)."""
        pool = self._start()
        arrived = threading.Barrier(self.threads)

        def report(_: int) -> int:
            arrived.wait()  # holds each thread until all have a task: one report per thread
            return torch.get_num_threads()

        return list(pool.map(report, range(self.threads)))


