"""The CPU path of the torch backend: the fastest exact way mvit knows to run MobileViT on CPU cores.

How it gets its speed, each step measured in benchmarks/RESULTS.md:

1. BatchNorm folded into the preceding conv, SiLU in place, activations channels_last (NHWC: the layout
   oneDNN's depthwise and 3x3 convolutions are fastest in). A copy is optimised; the given model is untouched.
2. `torch.jit.trace` + `freeze` per input shape (the model's forward computes patch/resize decisions from the
   shape, so a trace is only valid for the shape it saw: one trace per shape, cached, any shape works).
   A job known to be smaller than `TRACE_MIN_IMAGES` skips this step and the next: they cost more than they
   save there.
3. oneDNN Graph fusion (`torch.jit.enable_onednn_fusion`): the profiling executor hands the frozen graph to
   oneDNN, which fuses each conv with its bias and SiLU, the linears with their activations and adds, so an
   activation is written once instead of two or three times. Measured per image (2 cores): XXS 7.95 -> 6.34
   ms at batch 1 and 11.3 -> 9.9 ms on one core; S 21.7 -> 18.8 / 39.2 -> 35.8 ms; logits still within
   5e-6. Cost: one profiling call and one compiling call (~0.2 s) per input shape, done while tracing.
   MVIT_ONEDNN_FUSION=0 turns it off (the traced graph then runs unoptimised, as before).
4. Images are split across the cores one at a time (`CPU_MICRO_BATCH`: one trace serves every batch size, on one
   core as on many, and every image gets the same bits however it is batched: `same_shape_chunks`), each core
   running single-threaded kernels; a traced batch of one image runs on all cores instead (lowest latency). Per
   image, splitting (measured one image per core, unfused) is ~10% faster than running the whole batch with
   multi-threaded kernels on an idle machine (XXS 6.2 vs 6.7 ms, S 21.5 vs 23.7 ms, 2 cores) and 2.4x faster
   when another process keeps one core busy (XXS 10.1 vs 24.7 ms): single-threaded kernels never wait for a
   descheduled sibling thread, so decoding threads or anything else sharing the cores slows the model down
   only in proportion. `submit` queues a batch's chunks and returns at once: the pipeline
   (`pipeline.batching.run_batches`) queues the next batch behind the running one, so the cores do not idle while
   the caller handles results.
5. glibc's allocator hands blocks above its mmap threshold back to the OS on free, so every big tensor is
   page-faulted in again on the next call; raising its thresholds once per process (`mallopt`) keeps them
   (see `tune_allocator`; MVIT_MALLOC_TUNING=0 turns it off). mvit's per-image path rarely allocates that
   much, but large user batches, the pipeline's batch tensors and the eager fallback do (timm eager at batch
   32 runs 2.0-2.1x faster with it).
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from typing import Callable

import torch
from torch import nn

from mvit_cli.folding import fold_batchnorm
from mvit_cli.runners.base import Pending, PerCorePool, Runner
from mvit_cli.runners.precision import DTYPES, in_precision
from mvit_cli.runners.tuning import cpu_threads, onednn_fusion_wanted, tune_allocator

# Images per call of the per-core model on the CPU: one. Every image then runs on the one graph traced for a single
# image, so its logits are the same bits however it is batched (`same_shape_chunks`), and a lone image needs no
# padding. Measured 2026-12-01 (AMX-class Xeon, 2 cores, fusion on), one vs two images per call, images/s at batch
# 32: XXS 202 vs 191, S 55.6 vs 56.9; at batch 1 (two images had been padded): XXS 5.8 vs 10.0 ms, S 17.8 vs
# 33.5 ms. (On the AVX-512 Xeon of earlier sessions two per call had been 6-10% faster for XS and S at batch 32.)
# bfloat16 (same machine, AMX), S, one vs two per call: batch 32 79.1 vs 82.4 images/s, batch 1 43.5 vs 28.9: two
# would gain 4% in bulk and make a lone image slower than float32 (33.6). One for every precision.
CPU_MICRO_BATCH = 1

# A job of fewer images than this runs the folded model eagerly instead of tracing it. Tracing and fusing cost
# ~0.5 s per process (XXS 0.51, XS 0.49-0.54, S 0.56-0.60 s) and save per image, eager -> traced, 2 cores:
# XXS 9.4 -> 6.9 ms, XS 17.2 -> 12.9, S 26.5 -> 20.1 at batch 1; one image per core at a time, in pairs: XXS
# 17.5 -> 12.1, XS 28.6 -> 24.1, S 45.2 -> 34.9 ms per pair. Whole `mvit classify` commands, traced vs eager:
# 1 photo (XS) 1.95 vs 1.46 s; 60 photos S 3.1-3.3 vs 2.7-2.9 s, XXS 2.3 vs 1.8-2.0; 100 photos S 3.9-4.1 vs
# 3.7-3.75, XXS 2.6 vs 2.2; 300 photos S 7.2-7.7 vs 8.2-9.0, XXS 3.8-3.9 either way (decoding shares the cores,
# which hides part of the eager model's slowness). 100 is about where S breaks even; XXS later still.
TRACE_MIN_IMAGES = 100

# Traced graphs kept per runner (one per input shape). Beyond that the least recently used is dropped.
MAX_TRACED_SHAPES = 8


class TorchCpuRunner(Runner):
    """BatchNorm folded, channels_last, traced per input shape, fused, batches split per core (module docstring)."""

    def __init__(self, model: nn.Module, threads: int | None = None, micro_batch: int = CPU_MICRO_BATCH,
                 trace: bool = True, fuse: bool | None = None, dtype: str = "float32"):
        # Folded in float32 first (the folding's arithmetic), then the body converted (runners/precision.py).
        self.dtype = dtype
        self.module = in_precision(fold_batchnorm(model), DTYPES[dtype]).to(memory_format=torch.channels_last)
        self.threads = threads or cpu_threads()
        self.micro_batch = micro_batch
        self.trace = trace and hasattr(torch, "jit")
        self.fuse = self.trace and (onednn_fusion_wanted() if fuse is None else fuse)
        if self.fuse:
            # A process-wide switch; it only acts on TorchScript graphs run with optimized execution, i.e. on
            # mvit's traced graphs (eager models, timm's included, are unaffected).
            torch.jit.enable_onednn_fusion(True)
        self._traced: OrderedDict[tuple[int, ...], Callable] = OrderedDict()
        self._trace_lock = threading.Lock()
        self._pool = PerCorePool(self.threads) if self.threads > 1 else None
        self.allocator_tuned = tune_allocator()
        self.description = (
            f"torch {torch.__version__}, BatchNorm folded, channels_last, "
            f"{'traced per input shape' if self.trace else 'eager'}, "
            f"{'oneDNN Graph fusion, ' if self.fuse else ''}"
            f"{'' if dtype == 'float32' else dtype + ' MobileViT blocks, ' }"
            f"{self.threads} core(s), {micro_batch} image(s) per core at a time"
        )

    def describe(self, batch_size: int) -> str:
        base = self.description.rsplit(", ", 2)[0]
        if batch_size <= self.micro_batch and self.trace:
            padded = f", padded to {self.micro_batch}" if batch_size < self.micro_batch else ""
            return f"{base}, one call on all {self.threads} core(s){padded}"
        return self.description

    @property
    def traced_shapes(self) -> list[tuple[int, ...]]:
        """The input shapes this runner has traced a graph for, least recently used first."""
        with self._trace_lock:
            return list(self._traced)

    def worker_thread_counts(self) -> list[int]:
        """torch's thread count as each per-core pool thread sees it (a diagnostic: every entry should be 1)."""
        return self._pool.worker_thread_counts() if self._pool is not None else [torch.get_num_threads()]

    @property
    def chunks_submitted(self) -> int:
        """Chunks handed to the per-core pool so far (batches bigger than one chunk go there)."""
        return self._pool.chunks_submitted if self._pool is not None else 0

    def _graph_for(self, x: torch.Tensor) -> Callable:
        """The traced graph for x's shape (traced on first sight), or the folded module if tracing fails."""
        if not self.trace:
            return self.module
        key = tuple(x.shape)
        with self._trace_lock:
            graph = self._traced.get(key)
            if graph is None:
                graph = self._trace(x)
                self._traced[key] = graph
                if len(self._traced) > MAX_TRACED_SHAPES:
                    self._traced.popitem(last=False)
            else:
                self._traced.move_to_end(key)
        return graph

    def _trace(self, x: torch.Tensor) -> Callable:
        try:
            with warnings.catch_warnings():
                # The tracer warns that shape arithmetic becomes constant: that is why there is a trace per shape.
                warnings.simplefilter("ignore")
                graph = torch.jit.freeze(torch.jit.trace(self.module, x, check_trace=False))
        except Exception:  # noqa: BLE001 - a torch whose tracer cannot handle the model still runs it eagerly
            return self.module
        if self.fuse:
            try:
                # The profiling executor records shapes on the first call and compiles the fused graph on the
                # second: do both now, so the caller's first real call is already fast.
                for _ in range(2):
                    self._execute(graph, x)
            except Exception:  # noqa: BLE001 - a oneDNN build that cannot fuse this graph: run it unfused
                self.fuse = False
        return graph

    def _execute(self, graph: Callable, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.jit.optimized_execution(self.fuse):
            return graph(x)

    def _run_one(self, x: torch.Tensor) -> torch.Tensor:
        return self._execute(self._graph_for(x), x)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.submit(batch).result()

    def submit(self, batch: torch.Tensor) -> Pending:
        x = batch.to("cpu", torch.float32).contiguous(memory_format=torch.channels_last)
        n = x.shape[0]
        if n == 0:
            return Pending.done(torch.empty(0, self.module.output_width))
        chunks = same_shape_chunks(x, self.micro_batch)  # one shape: one trace serves every batch size
        if n <= self.micro_batch and self.trace:
            # One chunk, on the calling thread with all cores (lowest latency). A traced graph gives the same bits
            # on any number of threads (measured), so this changes nothing in the result.
            return Pending.done(self._run_one(chunks[0])[:n])
        if self._pool is None:
            return Pending.done(torch.cat([self._run_one(chunk) for chunk in chunks])[:n])
        return self._pool.submit(self._run_one, chunks, n)


def same_shape_chunks(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """x split into chunks of `size` images, the last one padded with copies of its last image.

    Every chunk then has one shape, so one traced graph serves every batch size: a short last chunk would need a
    trace of its own (~0.5 s, the cost of 25-50 images). The padding images cost a little compute; images do not
    interact in inference, so the real images' logits are unchanged (the caller drops the padding's).

    It also makes results exact across ways of running: an image's logits are those of the chunk graph, bit for
    bit, whatever batch it came in, whichever images are beside it and however many threads run it (measured:
    a graph traced for 1 image, or eager kernels on another shape or thread count, differ by ~1e-6, which moves
    the 8th decimal of a probability). The same inputs therefore give the same records from Python and the shell,
    resumed or not, on one process or many.
    """
    chunks = list(x.split(size))
    short = size - chunks[-1].shape[0]
    if short > 0:
        last = chunks[-1]
        chunks[-1] = torch.cat([last, last[-1:].expand(short, *last.shape[1:])])
    return [c.contiguous(memory_format=torch.channels_last) for c in chunks]


def worth_tracing(expected_images: int | None) -> bool:
    """Whether a job of `expected_images` (None: unknown, e.g. a benchmark) should trace (TRACE_MIN_IMAGES)."""
    return expected_images is None or expected_images >= TRACE_MIN_IMAGES


