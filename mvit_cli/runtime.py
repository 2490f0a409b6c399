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
