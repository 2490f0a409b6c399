"""What a variant is and what it costs: its stage table, exact parameter count and FLOPs at an input size.

FLOP convention (the one MobileViT's paper and most model cards use, doubled): FLOPs = 2 x the
multiply-accumulates of every convolution, every linear layer and the two attention matmuls (q k^T and
attention x v). Bias additions, normalisations, activations, softmax, resizing, pooling and the unfold/fold
copies are not counted (together they are under 1% of the total). At 256 x 256 this gives XXS 0.82,
XS 2.05, S 4.00 GFLOPs per image; halve them for the "GMACs" some tables print (paper: 0.4 / 1.0 / 2.0
"FLOPs", which are multiply-accumulates).

Counting runs the real forward pass on the `meta` device (shapes only, no arithmetic) with hooks on the
modules that do the work, so it follows the model code, odd input sizes and resize paths included.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from mvit_cli.model import VARIANTS, Attention, MobileViT, MobileViTConfig, build_model, count_parameters


@dataclass(frozen=True)
class StageRow:
    """One row of the stage table."""

    stage: str  # "stem", "1" .. "5", "head"
    blocks: str  # e.g. "MV2 x3", "MV2 + MobileViT", "conv 3x3"
    channels: int  # output channels
    stride: int  # stride of the stage's first block
    output_size: tuple[int, int]  # feature map (height, width) at the given input size
    transformer_dim: int | None = None
    transformer_depth: int | None = None
    heads: int | None = None
    patch: int | None = None
    mlp_dim: int | None = None


def _downsample(size: tuple[int, int], stride: int) -> tuple[int, int]:
    # Convs with kernel k, padding k // 2 and stride s: out = floor((n - 1) / s) + 1.
    return tuple((n - 1) // stride + 1 for n in size)  # type: ignore[return-value]


def stage_table(variant: str, input_size: tuple[int, int] = (256, 256)) -> list[StageRow]:
    cfg: MobileViTConfig = VARIANTS[variant]
    size = _downsample(input_size, 2)
    rows = [StageRow("stem", "conv 3x3", cfg.stem_channels, 2, size)]
    for index, stage in enumerate(cfg.stages, start=1):
        size = _downsample(size, stage.stride)
        blocks = "MV2" if stage.num_mv2 == 1 else f"MV2 x{stage.num_mv2}"
        if stage.transformer_dim is None:
            rows.append(StageRow(str(index), blocks, stage.out_channels, stage.stride, size))
            continue
        rows.append(
            StageRow(
                str(index),
                blocks + " + MobileViT",
                stage.out_channels,
                stage.stride,
                size,
                transformer_dim=stage.transformer_dim,
                transformer_depth=stage.transformer_depth,
                heads=cfg.num_heads,
                patch=cfg.patch_size,
                mlp_dim=int(stage.transformer_dim * cfg.mlp_ratio),
            )
        )
    rows.append(StageRow("head", "conv, pool, fc", cfg.num_features, 1, size))
    return rows


@dataclass
class FlopCount:
    total: int  # FLOPs for one image (2 x multiply-accumulates)
    by_kind: dict[str, int] = field(default_factory=dict)  # "conv", "linear", "attention"

    @property
    def gflops(self) -> float:
        return self.total / 1e9


def _conv_macs(module: nn.Conv2d, output: torch.Tensor) -> int:
    kh, kw = module.kernel_size
    return output.numel() * (module.in_channels // module.groups) * kh * kw


def _linear_macs(module: nn.Linear, output: torch.Tensor) -> int:
    return output.numel() * module.in_features


def _attention_macs(module: Attention, inputs: tuple[torch.Tensor, ...]) -> int:
    sequences, tokens, dim = inputs[0].shape
    # q k^T: [heads, N, d/h] x [heads, d/h, N] and attn x v: [heads, N, N] x [heads, N, d/h], per sequence.
    return 2 * sequences * tokens * tokens * dim


def count_flops(model: MobileViT, input_size: tuple[int, int] = (256, 256)) -> FlopCount:
    """FLOPs of one forward pass of one image (see the module docstring for the convention)."""
    macs = {"conv": 0, "linear": 0, "attention": 0}

    def on_conv(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        macs["conv"] += _conv_macs(module, output)  # type: ignore[arg-type]

    def on_linear(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        macs["linear"] += _linear_macs(module, output)  # type: ignore[arg-type]

    def on_attention(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        macs["attention"] += _attention_macs(module, inputs)  # type: ignore[arg-type]

    hooks = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(on_conv))
        elif isinstance(module, nn.Linear):
            hooks.append(module.register_forward_hook(on_linear))
        elif isinstance(module, Attention):
            hooks.append(module.register_forward_hook(on_attention))
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, 3, *input_size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return FlopCount(total=2 * sum(macs.values()), by_kind={k: 2 * v for k, v in macs.items()})


def _meta_model(variant: str) -> MobileViT:
    """The variant's architecture with no storage behind its tensors: shapes only, built in milliseconds."""
    try:
        with torch.device("meta"):
            return build_model(variant)
    except (RuntimeError, TypeError, AttributeError):  # a torch without device context managers (< 2.0)
        return build_model(variant)


@dataclass
class Anatomy:
    variant: str
    input_size: tuple[int, int]
    parameters: int
    flops: FlopCount
    stages: list[StageRow]

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "input_size": list(self.input_size),
            "parameters": self.parameters,
            "gflops": round(self.flops.gflops, 4),
            "flops": self.flops.total,
            "flops_by_kind": self.flops.by_kind,
            "flops_convention": "2 x multiply-accumulates of convolutions, linear layers and attention matmuls",
            "stages": [_row_dict(row) for row in self.stages],
        }


def _row_dict(row: StageRow) -> dict[str, Any]:
    d = asdict(row)
    d["output_size"] = list(row.output_size)
    return d


def anatomy(variant: str, input_size: tuple[int, int] = (256, 256)) -> Anatomy:
    """Stage table, exact parameter count and FLOPs of `variant` at `input_size` (height, width)."""
    model = _meta_model(variant)
    return Anatomy(
        variant=variant,
        input_size=input_size,
        parameters=count_parameters(model),
        flops=count_flops(model, input_size),
        stages=stage_table(variant, input_size),
    )
