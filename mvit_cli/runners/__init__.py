"""Backends: the fastest exact way to run a loaded model on the chosen device.

`prepare(model, device, backend)` returns a `Runner`: a callable mapping a float32 [B, 3, H, W] batch to
float32 [B, 1000] logits on the CPU, within 1e-4 of the plain model (parity is tested for every path).

- torch on the CPU (`torch_cpu.py`): BatchNorm folded, channels_last, traced and fused, a batch split per core;
- torch on CUDA / MPS (`torch_device.py`): eager in channels_last, float32 exact (TF32 off);
- onnxruntime on the CPU (`onnxruntime.py`, optional extra): a cached ONNX export, split per core.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mvit_cli.errors import BackendDeviceError, UsageError
from mvit_cli.runners.base import Pending, PerCorePool, Runner
from mvit_cli.runners.devices import DEFAULT_BATCH_SIZE, default_batch_size, resolve_device
from mvit_cli.runners.onnxruntime import OnnxRuntimeRunner
from mvit_cli.runners.precision import DtypeUnsupportedError, native_dtypes, resolve_dtype
from mvit_cli.runners.torch_cpu import TRACE_MIN_IMAGES, TorchCpuRunner, worth_tracing
from mvit_cli.runners.torch_device import EagerRunner
from mvit_cli.runners.tuning import cpu_threads, default_workers

BACKENDS = ("torch", "onnxruntime")


def prepare(model: nn.Module, device: torch.device, backend: str = "torch", *,
            weights_path: Path | None = None, export_dir: Path | None = None,
            expected_images: int | None = None, dtype: str = "float32") -> Runner:
    """The fastest exact way to run `model` on `device` with `backend` ("torch" or "onnxruntime").

    `weights_path` (the file the model was loaded from) keys the cached ONNX export of the onnxruntime
    backend, stored next to it; `export_dir` overrides where. Without either, the export is rebuilt per process.
    `expected_images`, when the caller knows how many images it will run, lets a small job skip tracing on the
    CPU (`TRACE_MIN_IMAGES`). `dtype`: "float32", or a reduced precision the device runs natively, already
    resolved by `precision.resolve_dtype` (it refuses the others).
    """
    model = model.eval()
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "onnxruntime":
        if device.type != "cpu":
            raise BackendDeviceError(backend, device.type)
        resolve_dtype(dtype, device, backend)  # float32 only: anything else is refused with the reason
        return OnnxRuntimeRunner(model, weights_path=weights_path, export_dir=export_dir, threads=cpu_threads())
    if device.type == "cpu":
        return TorchCpuRunner(model, trace=worth_tracing(expected_images), dtype=dtype)
    return EagerRunner(model, device, dtype)


__all__ = [
    "BACKENDS",
    "DEFAULT_BATCH_SIZE",
    "DtypeUnsupportedError",
    "TRACE_MIN_IMAGES",
    "EagerRunner",
    "OnnxRuntimeRunner",
    "Pending",
    "PerCorePool",
    "Runner",
    "TorchCpuRunner",
    "cpu_threads",
    "default_batch_size",
    "default_workers",
    "native_dtypes",
    "prepare",
    "resolve_device",
    "resolve_dtype",
]
