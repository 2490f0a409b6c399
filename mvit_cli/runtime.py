"""Turns a loaded model into the fastest exact way to run it on the chosen device.

`prepare(model, device, backend)` returns a `Runner`: a callable mapping a float32 [B, 3, H, W] batch to
float32 [B, 1000] logits on the CPU, within 1e-4 of the plain model (parity is tested for every path).

How the CPU path ("torch" backend) gets its speed, each step measured in benchmarks/RESULTS.md:

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
4. Images are split across the cores in chunks of two (`CPU_MICRO_BATCH`; a short last chunk is padded so one
   trace serves every batch size, on one core as on many), each core running single-threaded kernels; a batch
   of one image runs on all cores instead (lowest latency), on the chunk's graph, padded, if that exists. Per
   image, splitting (measured one image per core, unfused) is ~10% faster than running the whole batch with
   multi-threaded kernels on an idle machine (XXS 6.2 vs 6.7 ms, S 21.5 vs 23.7 ms, 2 cores) and 2.4x faster
   when another process keeps one core busy (XXS 10.1 vs 24.7 ms): single-threaded kernels never wait for a
   descheduled sibling thread, so decoding threads or anything else sharing the cores slows the model down
   only in proportion. `submit` queues a batch's chunks and returns at once: the pipeline
   (`batching.run_batches`) queues the next batch behind the running one, so the cores do not idle while the
   caller handles results.
5. glibc's allocator hands blocks above its mmap threshold back to the OS on free, so every big tensor is
   page-faulted in again on the next call; raising its thresholds once per process (`mallopt`) keeps them
   (see `tune_allocator`; MVIT_MALLOC_TUNING=0 turns it off). mvit's per-image path rarely allocates that
   much, but large user batches, the pipeline's batch tensors and the eager fallback do (timm eager at batch
   32 runs 2.0-2.1x faster with it).

The "onnxruntime" backend (optional extra `mvit-cli[onnx]`) runs an ONNX export of the folded model, cached
once (`export.py`: in `<cache>/mvit/exports/` for cached weights, in `mvit-exports/` beside any other weights
file), with the same image-per-core scheme. On CUDA and MPS the model runs
eagerly in channels_last: exact, simple, and batch parallelism is what those devices are good at anyway.
"""

from __future__ import annotations

import copy
import ctypes
import os
import platform
import sys
import threading
import warnings
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from mvit_cli.errors import UsageError

BACKENDS = ("torch", "onnxruntime")

# Images per call of the per-core model on the CPU. Measured per image at batch 32 with oneDNN fusion (one image
# per core at a time vs two vs three or four), two runs each: XXS 6.01 / 5.57 / 5.55 and 5.64 / 5.65 / 5.78 ms,
# XS 12.02 / 11.34 / 10.90 (four), S 19.95 / 17.89 / 20.66 and 18.71 / 17.37 / 19.19 ms. Two is never worse and
# 6-10% faster for XS and S. (Unfused, one had been best: XXS 6.15 / 5.99 / 6.06, S 21.5 / 22.4 / 25.0 ms.)
# The onnxruntime backend keeps one (`ORT_MICRO_BATCH`).
CPU_MICRO_BATCH = 2
ORT_MICRO_BATCH = 1

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

# Default images per batch when the user gives none. On the CPU the batch is split per core anyway, so this only
# sets how often the pipeline hands work over: end-to-end classify on 300 JPEGs (2 cores, XXS) ran at 103, 108
# and 104 images/s with 16, 32 and 64 (S: 40 at all three); with the threaded pipeline, whole `classify` commands on
# 300 photos (XS) took 5.8-5.9 / 5.6-5.9 / 5.6-5.9 s. GPU values are not measured (no GPU was available):
# bigger batches are faster per image there up to memory limits, and 64 images of 256 px need well under 2 GiB
# of activations for every variant.
DEFAULT_BATCH_SIZE = {"cpu": 32, "cuda": 64, "mps": 32}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but this torch build sees no CUDA GPU; use --device cpu")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps was asked for, but MPS is not available here; use --device cpu")
    return device


def default_batch_size(device: torch.device) -> int:
    """Images per batch when the user gives none (see DEFAULT_BATCH_SIZE)."""
    return DEFAULT_BATCH_SIZE.get(device.type, 16)


def cpu_threads() -> int:
    """Cores the CPU path uses: torch's intra-op thread count (physical cores, or OMP_NUM_THREADS)."""
    return max(1, torch.get_num_threads())


def default_workers() -> int:
    """Image-decoding threads when the user gives none (batching.py).

    One per core beyond the first, at most 4: decoding overlaps the model, which uses every core. Measured on 2
    cores (`classify`, 300 ImageNet JPEGs, ~3 ms each to decode and crop, batch 32), images/s with 0 / 1 / 2
    threads: XXS 142 / 141 / 142, XS 87 / 89 / 84, S 53 / 54 / 56: on 2 cores the model and decoding share the
    same cores, so one thread or none are equal (0 still overlaps: the model runs the previous batch meanwhile).
    With spare cores the decoding threads keep a fast model fed; they cost no start-up time.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, min(4, cores - 1))


# ----------------------------------------------------------------------------------------------- allocator

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_allocator_tuned = False


def onednn_fusion_wanted() -> bool:
    """Whether traced CPU graphs run with oneDNN Graph fusion (module docstring, step 3): on unless
    MVIT_ONEDNN_FUSION says otherwise, where this torch build has it, on x86-64 CPUs only: that is where it was
    measured and where oneDNN Graph's fused kernels are mature (on ARM it would hand graphs to a less-tested
    path, and a failure inside a fused kernel is not an exception mvit could fall back from)."""
    if os.environ.get("MVIT_ONEDNN_FUSION", "1").lower() in ("0", "off", "false", "no"):
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    return hasattr(torch.jit, "enable_onednn_fusion") and torch.backends.mkldnn.is_available()


def tune_allocator() -> bool:
    """Stop glibc from returning activation-sized blocks to the OS after every use. Once per process.

    By default glibc serves blocks above its mmap threshold (adaptive, at most 32 MiB) with fresh mmaps and
    trims the heap top after frees, so a forward pass over big activations page-faults them in again on every
    call (timm eager, S, batch 32: 1.7 million page faults and 2.5 s of system time per call; with this
    tuning none, and 2.1x the images/s). Serving all blocks from the heap and never trimming keeps
    the pages; the cost is that the process keeps its peak memory until it exits, which suits a CLI run.
    Returns whether the tuning is in effect.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if os.environ.get("MVIT_MALLOC_TUNING", "1") in ("0", "off", "false", "no"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        return False
    _allocator_tuned = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _allocator_tuned


# ----------------------------------------------------------------------------------------------- model surgery


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` with every Conv2d -> BatchNorm2d pair (mvit's `ConvBNAct`) merged into one conv.

    conv(x) * s + t with s = gamma / sqrt(var + eps), t = beta - mean * s is a conv with weight W * s and
    bias t: the same arithmetic up to float rounding (max |diff| ~5e-6 on the logits). SiLU runs in place
    on the conv's output, which nothing else reads.
    """
    from mvit_cli.model import ConvBNAct

    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, ConvBNAct):
            module.conv = torch.nn.utils.fusion.fuse_conv_bn_eval(module.conv, module.bn)
            module.bn = nn.Identity()
            if hasattr(module, "act"):
                module.act = nn.SiLU(inplace=True)
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded


# ----------------------------------------------------------------------------------------------- runners


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

    def submit(self, batch: torch.Tensor) -> Pending:
        """Start on `batch` and return at once where this runner computes in the background (the per-core CPU
        runners); the others compute it before returning."""
        return Pending.done(self(batch))


class EagerRunner(Runner):
    """The model as it is, on any device: the CUDA / MPS path (and the CPU fallback when asked for).

    CUDA: channels_last (cuDNN's fast layout) and TF32 switched off for the call. PyTorch lets cuDNN convolve in
    TF32 by default on Ampere and newer GPUs, which moves logits by ~1e-3; mvit promises float32 results within
    1e-4 of the reference, so convolutions and matmuls run in full float32. MPS: the default layout, since
    channels_last has given wrong results for some ops on older MPS builds.
    """

    def __init__(self, model: nn.Module, device: torch.device):
        self.device = device
        self.memory_format = torch.channels_last if device.type in ("cuda", "cpu") else torch.contiguous_format
        self.module = copy.deepcopy(model).eval().to(device).to(memory_format=self.memory_format)
        layout = "channels_last" if self.memory_format is torch.channels_last else "contiguous"
        self.description = f"torch {torch.__version__}, eager, {layout}, float32 on {device.type}"

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.device, torch.float32).contiguous(memory_format=self.memory_format)
        with _full_float32(self.device):
            return self.module(x).float().cpu()


class _full_float32:
    """Within the block, CUDA convolutions and matmuls compute in float32, not TF32 (restored afterwards)."""

    def __init__(self, device: torch.device):
        self.active = device.type == "cuda"

    def __enter__(self) -> None:
        if self.active:
            self.saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc: object) -> None:
        if self.active:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.saved


class _PerCorePool:
    """Runs `fn` on chunks of a batch, one chunk per core, each core single-threaded (see module docstring)."""

    def __init__(self, threads: int):
        self.threads = threads
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
        return Pending([pool.submit(fn, chunk) for chunk in chunks], size)

    def worker_thread_counts(self) -> list[int]:
        """torch's thread count as each pool thread sees it (a diagnostic: every entry should be 1)."""
        pool = self._start()
        arrived = threading.Barrier(self.threads)

        def report(_: int) -> int:
            arrived.wait()  # holds each thread until all have a task: one report per thread
            return torch.get_num_threads()

        return list(pool.map(report, range(self.threads)))


class TorchCpuRunner(Runner):
    """BatchNorm folded, channels_last, traced per input shape, fused, batches split per core (module docstring)."""

    def __init__(self, model: nn.Module, threads: int | None = None, micro_batch: int = CPU_MICRO_BATCH,
                 trace: bool = True, fuse: bool | None = None):
        self.module = fold_batchnorm(model).to(memory_format=torch.channels_last)
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
        self._pool = _PerCorePool(self.threads) if self.threads > 1 else None
        self.allocator_tuned = tune_allocator()
        self.description = (
            f"torch {torch.__version__}, BatchNorm folded, channels_last, "
            f"{'traced per input shape' if self.trace else 'eager'}, "
            f"{'oneDNN Graph fusion, ' if self.fuse else ''}"
            f"{self.threads} core(s), {micro_batch} image(s) per core at a time"
        )

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
            return Pending.done(torch.empty(0, self.module.classifier.out_features))
        if n <= self.micro_batch:
            return Pending.done(self._run_small(x))
        chunks = same_shape_chunks(x, self.micro_batch)  # one shape: one trace serves every batch size
        if self._pool is None:
            return Pending.done(torch.cat([self._run_one(chunk) for chunk in chunks])[:n])
        return self._pool.submit(self._run_one, chunks, n)

    def _run_small(self, x: torch.Tensor) -> torch.Tensor:
        """A batch no bigger than one chunk, on the calling thread with all cores (lowest latency), not on one
        core alone. Smaller than a chunk, it borrows the chunk's graph (padded) when that exists and its own does
        not: a trace costs ~0.5 s, the padding one image's compute (a lone last image of a long run)."""
        n = x.shape[0]
        chunk_shape = (self.micro_batch, *x.shape[1:])
        if n < self.micro_batch and chunk_shape in self._traced and tuple(x.shape) not in self._traced:
            return self._run_one(same_shape_chunks(x, self.micro_batch)[0])[:n]
        return self._run_one(x)


def same_shape_chunks(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """x split into chunks of `size` images, the last one padded with copies of its last image.

    Every chunk then has one shape, so one traced graph serves every batch size: a short last chunk would need a
    trace of its own (~0.5 s, the cost of 25-50 images). The padding images cost a little compute; images do not
    interact in inference, so the real images' logits are unchanged (the caller drops the padding's).
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


def prepare(model: nn.Module, device: torch.device, backend: str = "torch", *,
            weights_path: Path | None = None, export_dir: Path | None = None,
            expected_images: int | None = None) -> Runner:
    """The fastest exact way to run `model` on `device` with `backend` ("torch" or "onnxruntime").

    `weights_path` (the file the model was loaded from) keys the cached ONNX export of the onnxruntime
    backend, stored next to it; `export_dir` overrides where. Without either, the export is rebuilt per process.
    `expected_images`, when the caller knows how many images it will run, lets a small job skip tracing on the
    CPU (`TRACE_MIN_IMAGES`).
    """
    model = model.eval()
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "onnxruntime":
        if device.type != "cpu":
            raise UsageError("the onnxruntime backend runs on the CPU only; use --device cpu or --backend torch")
        from mvit_cli.export import OnnxRuntimeRunner

        return OnnxRuntimeRunner(model, weights_path=weights_path, export_dir=export_dir, threads=cpu_threads())
    if device.type == "cpu":
        return TorchCpuRunner(model, trace=worth_tracing(expected_images))
    return EagerRunner(model, device)
