"""Which device runs the model, and how many images a batch holds there by default."""

from __future__ import annotations

import torch

from mvit_cli.errors import DeviceUnavailableError

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
        raise DeviceUnavailableError("cuda", "this torch build sees no CUDA GPU")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceUnavailableError("mps", "MPS is not available here")
    return device


def default_batch_size(device: torch.device) -> int:
    """Images per batch when the user gives none (see DEFAULT_BATCH_SIZE)."""
    return DEFAULT_BATCH_SIZE.get(device.type, 16)


