"""The model as it is on CUDA or MPS (and on the CPU when asked for): eager, float32-exact."""

from __future__ import annotations

import copy

import torch
from torch import nn

from mvit_cli.runners.base import Runner
from mvit_cli.runners.precision import DTYPES

class EagerRunner(Runner):
    """The model as it is, on any device: the CUDA / MPS path (and the CPU fallback when asked for).

    CUDA: channels_last (cuDNN's fast layout) and TF32 switched off for the call. PyTorch lets cuDNN convolve in
    TF32 by default on Ampere and newer GPUs, which moves logits by ~1e-3; mvit promises float32 results within
    1e-4 of the reference, so convolutions and matmuls run in full float32. MPS: the default layout, since
    channels_last has given wrong results for some ops on older MPS builds.

    float16 / bfloat16 (`dtype`): under torch.autocast, the device's own mixed-precision rules (convolutions and
    matmuls in the dtype, reductions such as LayerNorm and softmax in float32); logits come back float32.
    """

    def __init__(self, model: nn.Module, device: torch.device, dtype: str = "float32"):
        self.device = device
        self.dtype = dtype
        self.memory_format = torch.channels_last if device.type in ("cuda", "cpu") else torch.contiguous_format
        self.module = copy.deepcopy(model).eval().to(device).to(memory_format=self.memory_format)
        layout = "channels_last" if self.memory_format is torch.channels_last else "contiguous"
        precision = "float32" if dtype == "float32" else f"{dtype} autocast"
        self.description = f"torch {torch.__version__}, eager, {layout}, {precision} on {device.type}"

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.device, torch.float32).contiguous(memory_format=self.memory_format)
        if self.dtype != "float32":
            with torch.autocast(self.device.type, dtype=DTYPES[self.dtype]):
                return self.module(x).float().cpu()
        with FullFloat32(self.device):
            return self.module(x).float().cpu()


class FullFloat32:
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


