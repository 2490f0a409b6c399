"""Turns a loaded model into the fastest exact way to run it on the chosen device (placeholder)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def prepare(model: nn.Module, device: torch.device, backend: str = "torch") -> Callable[[torch.Tensor], torch.Tensor]:
    """A callable mapping a float32 [B, 3, H, W] batch (on any device) to float32 logits on the CPU."""
    model = model.to(device).eval()

    @torch.inference_mode()
    def run(batch: torch.Tensor) -> torch.Tensor:
        return model(batch.to(device)).float().cpu()

    return run


def default_batch_size(device: torch.device) -> int:
    """Images per batch when the user gives none (placeholder: to be chosen from measurement)."""
    return 64 if device.type == "cuda" else 8


def default_workers() -> int:
    """Decoding worker processes when the user gives none (placeholder: to be chosen from measurement)."""
    import os

    return max(1, min(4, (os.cpu_count() or 2) - 1))
