"""Reduced precision where the hardware runs it natively: which dtypes a device supports, and the model in one.

float32 is the default everywhere and what the published numbers are reproduced in. bfloat16 and float16 are
offered only where the device computes them natively; asking for one elsewhere is refused with what the device
does support, never emulated (emulated bf16 on a CPU without it runs several times slower than float32).

Native, decided at run time from the device itself (never from the machine this was measured on):
- CPU: bfloat16 with AMX-BF16 or AVX512-BF16 (x86 CPU flags); float16 with AMX-FP16. AVX512-FP16 alone does not
  count: measured here (a CPU with avx512_fp16 but no amx_fp16), float16 ran at 0.67-0.73x of float32 and oneDNN
  could not fuse its graph.
- CUDA: float16 always, bfloat16 where `torch.cuda.is_bf16_supported()` (Ampere and newer).
- MPS: float16.

How the model runs in reduced precision: the MobileViT blocks (local convolutions, the transformer, the fusion
convolution) run in the dtype; the stem, the MobileNetV2 blocks, the final 1x1 convolution and the classifier
stay float32, and so do LayerNorm's weights; each block casts its input to the dtype and its output back. The
reported probabilities are computed from float32 logits, in float64 as always.

Why that split (measured on random weights with a calibrated head, 100 photos, S): the whole body in bf16 moved
logits by up to 0.64 and changed top-1 on 9% of the images, nearly all of it from the MobileNetV2 blocks'
convolutions; the MobileViT blocks alone in bf16 moved them by 0.017-0.12 and kept top-1 on 98%, and still
gave S 1.55-1.62x float32's images/s at batch 32 (the whole body 2.0-2.2x, the transformers alone 1.45x): the
MobileViT blocks are where bf16 pays without the MobileNetV2 blocks' error. LayerNorm
weights in float32 let oneDNN fuse the LayerNorms of a bf16 graph (with bf16 weights it left them unfused);
keeping LayerNorm or the attention softmax in float32 for accuracy changed nothing measurable. On the CPU the
model then takes the same fast path as float32 (folded BatchNorm, channels_last, traced, oneDNN Graph fusion, one
image per core at a time). Figures: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import copy
import os

import torch
from torch import nn

from mvit_cli.errors import UsageError
from mvit_cli.model import MobileViT, MobileViTBlock

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CHOICES = (*DTYPES, "auto")  # what --dtype takes
# What `auto` picks, best first, among what a device runs natively.
_PREFERENCE = ("bfloat16", "float16", "float32")


class DtypeUnsupportedError(UsageError):
    """A precision the device does not compute natively."""

    def __init__(self, dtype: str, device: str, supported: list[str], why: str):
        super().__init__(f"{dtype} is not native on this {device} ({why}); it supports {', '.join(supported)}")
        self.dtype, self.device, self.supported, self.why = dtype, device, supported, why


def cpu_features() -> dict[str, bool]:
    """The CPU's relevant feature flags, from torch's own CPU probe (cpuinfo), else /proc/cpuinfo (Linux)."""
    names = ("amx_bf16", "avx512_bf16", "amx_fp16", "avx512_fp16")
    probe = getattr(getattr(torch._C, "_cpu", None), "_get_cpu_capability", None)
    if probe is not None:
        try:
            found = probe()
            return {name: bool(found.get(name, False)) for name in names}
        except Exception:  # noqa: BLE001 - a private torch function: any failure means "ask the OS instead"
            pass
    flags: set[str] = set()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    return {name: name in flags for name in names}


def native_dtypes(device: torch.device) -> dict[str, str]:
    """Each dtype the device computes natively -> why (for messages); float32 always."""
    native = {"float32": "always"}
    if device.type == "cpu":
        features = cpu_features()
        if features["amx_bf16"] or features["avx512_bf16"]:
            native["bfloat16"] = "AMX-BF16" if features["amx_bf16"] else "AVX512-BF16"
        if features["amx_fp16"]:
            native["float16"] = "AMX-FP16"
    elif device.type == "cuda":
        native["float16"] = "CUDA"
        if torch.cuda.is_bf16_supported():
            native["bfloat16"] = "CUDA (compute capability 8.0 or newer)"
    elif device.type == "mps":
        native["float16"] = "MPS"
    return native


def resolve_dtype(name: str, device: torch.device, backend: str = "torch") -> str:
    """The dtype to run in: `name` itself if the device runs it natively, or for "auto" the best one it does.
    Raises DtypeUnsupportedError otherwise (the onnxruntime backend is float32 only)."""
    if name not in CHOICES:
        raise UsageError(f"unknown dtype {name!r}; expected one of {', '.join(CHOICES)}")
    native = native_dtypes(device) if backend == "torch" else {"float32": "always"}
    if name == "auto":
        return next(dtype for dtype in _PREFERENCE if dtype in native)
    if name not in native:
        if backend != "torch":
            why = f"the {backend} backend runs float32 only"
        elif device.type == "cpu":
            why = {"bfloat16": "no AMX-BF16 or AVX512-BF16", "float16": "no AMX-FP16"}[name]
        else:
            why = f"{device.type} has no native {name}"
        raise DtypeUnsupportedError(name, device.type, list(native), why)
    return name


def _transformers(model: MobileViT) -> list[nn.Module]:
    blocks = [m for m in model.modules() if isinstance(m, MobileViTBlock)]
    return [part for block in blocks for part in (block.transformer, block.norm)]


def _blocks(model: MobileViT) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, MobileViTBlock)]


def _body(model: MobileViT) -> list[nn.Module]:
    return [model.stem, model.stages, model.final_conv]


# Which parts of the network run in reduced precision (module docstring); the rest, and always the classifier and
# LayerNorm's weights, stay float32. The parts cast their input and output where the precision changes (model.py).
SCOPES = {"transformer": _transformers, "blocks": _blocks, "body": _body}
DEFAULT_SCOPE = "blocks"


def in_precision(model: nn.Module, dtype: torch.dtype, scope: str = DEFAULT_SCOPE) -> nn.Module:
    """A copy of `model` (a MobileViT, or a module holding one) with the parts `scope` names in `dtype`; callers
    keep passing and receiving float32."""
    if dtype == torch.float32:
        return model
    converted = copy.deepcopy(model)
    network = next(m for m in converted.modules() if isinstance(m, MobileViT))
    for part in SCOPES[scope](network):
        part.to(dtype)
        for norm in (m for m in part.modules() if isinstance(m, nn.LayerNorm)):
            norm.float()
    return converted
