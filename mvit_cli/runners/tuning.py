"""Process-level tuning for the CPU path: how many cores, glibc's allocator, whether oneDNN Graph fusion is on.

Each choice is made at run time from this machine (cores, architecture, libc), never from one machine's figures.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

import torch

def cpu_threads() -> int:
    """Cores the CPU path uses: torch's intra-op thread count (physical cores, or OMP_NUM_THREADS)."""
    return max(1, torch.get_num_threads())


# Image-decoding threads when the user gives none: one per core beyond the first, at most this many.
MAX_DEFAULT_WORKERS = 4


def default_workers() -> int:
    """Image-decoding threads when the user gives none (pipeline/batching.py).

    One per core beyond the first, at most MAX_DEFAULT_WORKERS: decoding overlaps the model, which uses every core.
    Measured on 2 cores (`classify`, 300 ImageNet JPEGs, ~3 ms each to decode and crop, batch 32), images/s with 0 /
    1 / 2 threads: XXS 142 / 141 / 142, XS 87 / 89 / 84, S 53 / 54 / 56: on 2 cores the model and decoding share the
    same cores, so one thread or none are equal (0 still overlaps: the model runs the previous batch meanwhile).

    With spare cores the decoding threads keep a fast model fed; they cost no start-up time.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, min(MAX_DEFAULT_WORKERS, cores - 1))



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


