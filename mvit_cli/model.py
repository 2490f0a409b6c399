"""MobileViT v1 (Mehta & Rastegari, "MobileViT: Light-weight, General-purpose, and Mobile-friendly Vision
Transformer", ICLR 2022, arXiv 2110.02178), inference only, in plain PyTorch.

The architecture is data: a `MobileViTConfig` per variant (XXS, XS, S) describes the stages; the modules
below only know how to build a stage from its config. Parameter names here are mvit's canonical checkpoint
keys; `checkpoints.py` maps every published format onto them.

Shape notation in comments: B batch, C channels, H/W height/width, d transformer width, p patch side,
P = p * p pixels per patch, N = number of patches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class StageConfig:
    """One stage: `num_mv2` inverted-residual blocks, then (optionally) one MobileViT block."""

    out_channels: int
    num_mv2: int
    stride: int  # stride of the stage's first MV2 block
    transformer_dim: int | None = None  # None: a pure MV2 stage
    transformer_depth: int = 0


@dataclass(frozen=True)
class MobileViTConfig:
    name: str
    stages: tuple[StageConfig, ...]
    mv2_expansion: int  # inverted-residual expansion ratio (2 for XXS, 4 otherwise)
    num_features: int  # width of the final 1x1 expansion conv, i.e. of the pooled feature vector
    stem_channels: int = 16
    num_heads: int = 4
    patch_size: int = 2
    mlp_ratio: float = 2.0
    num_classes: int = 1000
    default_input_size: int = 256


def _stages(channels: tuple[int, ...], dims: tuple[int, int, int]) -> tuple[StageConfig, ...]:
    """The stage layout shared by all v1 variants; only widths differ (paper, Table 4)."""
    c1, c2, c3, c4, c5 = channels
    return (
        StageConfig(c1, num_mv2=1, stride=1),
        StageConfig(c2, num_mv2=3, stride=2),
        StageConfig(c3, num_mv2=1, stride=2, transformer_dim=dims[0], transformer_depth=2),
        StageConfig(c4, num_mv2=1, stride=2, transformer_dim=dims[1], transformer_depth=4),
        StageConfig(c5, num_mv2=1, stride=2, transformer_dim=dims[2], transformer_depth=3),
    )


VARIANTS: dict[str, MobileViTConfig] = {
    "xxs": MobileViTConfig("xxs", _stages((16, 24, 48, 64, 80), (64, 80, 96)), mv2_expansion=2, num_features=320),
    "xs": MobileViTConfig("xs", _stages((32, 48, 64, 80, 96), (96, 120, 144)), mv2_expansion=4, num_features=384),
    "s": MobileViTConfig("s", _stages((32, 64, 96, 128, 160), (144, 192, 240)), mv2_expansion=4, num_features=640),
}


def _as(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`x` in `dtype`, cast only when it differs: parts of the model may run in bfloat16 / float16
    (runners/precision.py), and a float32 model, traced, then holds no cast at all."""
    return x if x.dtype == dtype else x.to(dtype)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of `divisor`, never below 90% of `value` (MobileNet rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> optional SiLU. Keys: `conv.weight`, `bn.*`."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        if act:
            self.act = nn.SiLU()


class InvertedResidual(nn.Module):
    """MobileNetV2 block (MV2): 1x1 expand -> 3x3 depthwise (carries the stride) -> 1x1 linear projection."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        mid = make_divisible(cin * expansion)
        self.expand = ConvBNAct(cin, mid, 1)
        self.depthwise = ConvBNAct(mid, mid, 3, stride, groups=mid)
        self.project = ConvBNAct(mid, cout, 1, act=False)  # linear bottleneck: no activation
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))  # [B, Cin, H, W] -> [B, Cout, H/s, W/s]
        return x + y if self.use_residual else y


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (q, k, v stacked in that order)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, d = x.shape
        # [B, N, d] -> [B, N, 3 * d] -> 3 x [B, heads, N, d / heads]
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d / heads)) v
        return self.proj(x.transpose(1, 2).reshape(B, N, d))


class MLP(nn.Sequential):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(hidden, dim)


class TransformerLayer(nn.Module):
    """Pre-norm transformer encoder layer: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MobileViTBlock(nn.Module):
    """Local 3x3 conv, global attention between patches, then fusion with the block input (paper, Fig. 1b).

    Each of the P pixel positions inside a p x p patch forms its own sequence of N tokens (one per patch),
    so attention mixes information across the whole image at O(P * N^2) cost instead of O((H * W)^2).
    """

    def __init__(self, channels: int, dim: int, depth: int, num_heads: int, patch_size: int, mlp_ratio: float):
        super().__init__()
        self.patch_size = patch_size
        self.local = ConvBNAct(channels, channels, 3)
        self.to_tokens = nn.Conv2d(channels, dim, 1, bias=False)  # plain projection: no norm, no activation
        self.transformer = nn.Sequential(*(TransformerLayer(dim, num_heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.from_tokens = ConvBNAct(dim, channels, 1)
        self.fusion = ConvBNAct(2 * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype  # the block may run in another precision than its input (runners/precision.py)
        x = _as(x, self.local.conv.weight.dtype)
        shortcut = x
        x = self.to_tokens(self.local(x))  # [B, C, H, W] -> [B, d, H, W]
        B, d, H, W = x.shape
        p = self.patch_size
        # No positional embedding, so any input size works; a side that is not a multiple of the patch is
        # resized up to one and back afterwards, as both reference implementations do (bilinear, no corners).
        Hp, Wp = math.ceil(H / p) * p, math.ceil(W / p) * p
        resized = (Hp, Wp) != (H, W)
        if resized:
            x = F.interpolate(x, size=(Hp, Wp), mode="bilinear", align_corners=False)
        nh, nw = Hp // p, Wp // p
        # unfold: [B, d, nh*p, nw*p] -> [B, d, nh, p, nw, p] -> [B, p, p, nh, nw, d] -> [B*P, N, d]
        tokens = x.reshape(B, d, nh, p, nw, p).permute(0, 3, 5, 2, 4, 1).reshape(B * p * p, nh * nw, d)
        outer = tokens.dtype  # so may the transformer
        tokens = _as(self.norm(self.transformer(_as(tokens, self.transformer[0].attn.qkv.weight.dtype))), outer)
        # fold: [B*P, N, d] -> [B, p, p, nh, nw, d] -> [B, d, nh, p, nw, p] -> [B, d, Hp, Wp]
        x = tokens.reshape(B, p, p, nh, nw, d).permute(0, 5, 3, 1, 4, 2).reshape(B, d, Hp, Wp)
        if resized:
            x = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)
        x = self.from_tokens(x)  # [B, d, H, W] -> [B, C, H, W]
        return _as(self.fusion(torch.cat((shortcut, x), dim=1)), dtype)  # [B, 2C, H, W] -> [B, C, H, W]


def _build_stage(cfg: MobileViTConfig, stage: StageConfig, cin: int) -> nn.Sequential:
    blocks: list[nn.Module] = []
    for i in range(stage.num_mv2):
        stride = stage.stride if i == 0 else 1
        blocks.append(InvertedResidual(cin, stage.out_channels, stride, cfg.mv2_expansion))
        cin = stage.out_channels
    if stage.transformer_dim is not None:
        blocks.append(
            MobileViTBlock(
                stage.out_channels,
                stage.transformer_dim,
                stage.transformer_depth,
                cfg.num_heads,
                cfg.patch_size,
                cfg.mlp_ratio,
            )
        )
    return nn.Sequential(*blocks)


class MobileViT(nn.Module):
    """Stem -> 5 stages -> 1x1 expansion -> global average pool -> linear classifier.

    Input: RGB in [0, 1], [B, 3, H, W] (any H, W; 256 is what the weights were trained for).
    Output: ImageNet-1k logits [B, num_classes] in sorted-WordNet-id class order.
    """

    def __init__(self, cfg: MobileViTConfig):
        super().__init__()
        self.cfg = cfg
        self.stem = ConvBNAct(3, cfg.stem_channels, 3, stride=2)  # [B, 3, H, W] -> [B, 16, H/2, W/2]
        stages, cin = [], cfg.stem_channels
        for stage in cfg.stages:
            stages.append(_build_stage(cfg, stage, cin))
            cin = stage.out_channels
        self.stages = nn.Sequential(*stages)  # -> [B, C5, H/32, W/32]
        self.final_conv = ConvBNAct(cin, cfg.num_features, 1)  # -> [B, F, H/32, W/32]
        self.classifier = nn.Linear(cfg.num_features, cfg.num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_conv(self.stages(self.stem(_as(x, self.stem.conv.weight.dtype))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.forward_features(x).mean(dim=(2, 3))  # [B, F, h, w] -> [B, F]
        return self.classifier(_as(pooled, self.classifier.weight.dtype))  # -> [B, K]

    @property
    def output_width(self) -> int:
        return self.cfg.num_classes


class PooledFeatures(nn.Module):
    """A MobileViT up to its pooled feature vector, the classifier's input: [B, 3, H, W] -> [B, F]. Image
    embeddings for similarity search and deduplication; the runners run it like the whole model."""

    def __init__(self, model: MobileViT):
        super().__init__()
        self.model = model
        self.cfg = model.cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _as(self.model.forward_features(x).mean(dim=(2, 3)), torch.float32)  # [B, F, h, w] -> [B, F]

    @property
    def output_width(self) -> int:
        return self.cfg.num_features


def build_model(variant: str) -> MobileViT:
    """An untrained model of `variant` ("xxs", "xs" or "s"), in eval mode."""
    return MobileViT(VARIANTS[variant]).eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
