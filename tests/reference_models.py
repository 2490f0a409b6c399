"""The reference implementations our model is tested against, and the hub file formats they are published in.

- timm: `timm.create_model("mobilevit_xxs" | "mobilevit_xs" | "mobilevit_s")`; hub repos
  `timm/mobilevit_*.cvnets_in1k` hold its state dict as-is (model.safetensors, pytorch_model.bin).
- transformers: `MobileViTForImageClassification` with the configs of the hub repos `apple/mobilevit-*`
  (pytorch_model.bin, model.safetensors); its image processor feeds BGR.
- ml-cvnets: Apple's original `.pt` state dicts. cvnets itself is not installable here, so its key names
  are produced from the transformers model by undoing, rule by rule, the renames of transformers' public
  conversion script (convert_mlcvnets_to_pytorch.py), cross-checked against ml-cvnets' module layout
  (ConvLayer `block.conv/norm`, InvertedResidual `block.exp_1x1/conv_3x3/red_1x1`, MobileViTBlock
  `local_rep`, `global_rep` = transformer layers + final LayerNorm, `conv_proj`, `fusion`, classifier
  `classifier.fc`; attention `pre_norm_mha.1.qkv_proj` fused q, k, v). This is written in the opposite
  direction from the loader's table, so a mistake would have to be made twice, mirrored, to go unnoticed.

timm imports torchvision at import time; `import_timm()` puts tests/stubs (a minimal torchvision stand-in)
on sys.path only when no real torchvision is importable, and only for the duration of the import: afterwards
the stub modules are dropped from sys.modules again, so nothing else (transformers checks whether torchvision
is installed) ever sees them.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import torch
from torch import nn

STUBS = Path(__file__).parent / "stubs"

TIMM_NAMES = {"xxs": "mobilevit_xxs", "xs": "mobilevit_xs", "s": "mobilevit_s"}

# The `config.json` fields of apple/mobilevit-{xx-small,x-small,small} that shape the network.
TRANSFORMERS_CONFIGS = {
    "xxs": dict(hidden_sizes=[64, 80, 96], neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320], expand_ratio=2.0),
    "xs": dict(hidden_sizes=[96, 120, 144], neck_hidden_sizes=[16, 32, 48, 64, 80, 96, 384]),
    "s": dict(hidden_sizes=[144, 192, 240], neck_hidden_sizes=[16, 32, 64, 96, 128, 160, 640]),
}

# Parameter counts published for the checkpoints (timm model cards / the paper's 1.3M, 2.3M, 5.6M).
PUBLISHED_PARAMETERS = {"xxs": 1_272_024, "xs": 2_317_848, "s": 5_578_632}


def import_timm():
    """`timm`, importable beside a CPU torch without torchvision thanks to tests/stubs/torchvision."""
    if "timm" in sys.modules:
        return sys.modules["timm"]
    if importlib.util.find_spec("torchvision") is not None:
        import timm

        return timm
    sys.path.insert(0, str(STUBS))
    try:
        import timm
    finally:
        sys.path.remove(str(STUBS))
        # timm keeps the names it bound; forgetting the stub modules keeps them from being found by anyone
        # else (transformers would otherwise take torchvision for installed and import its real API).
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    return timm


def build_timm(variant: str) -> nn.Module:
    return import_timm().create_model(TIMM_NAMES[variant], pretrained=False).eval()


def build_transformers(variant: str) -> nn.Module:
    from transformers import MobileViTConfig, MobileViTForImageClassification

    config = MobileViTConfig(num_labels=1000, **TRANSFORMERS_CONFIGS[variant])
    return MobileViTForImageClassification(config).eval()


def transformers_logits(model: nn.Module, rgb: torch.Tensor) -> torch.Tensor:
    """What transformers computes for RGB images: its image processor hands the model BGR."""
    return model(pixel_values=rgb.flip(1)).logits


def timm_logits(model: nn.Module, rgb: torch.Tensor) -> torch.Tensor:
    return model(rgb)


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as hub files store it: contiguous, detached, shared storage split."""
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


# transformers -> ml-cvnets renames: each row undoes one rule of convert_mlcvnets_to_pytorch.rename_key.
# Applied in order to transformers keys with `re.sub`.
_TO_CVNETS: tuple[tuple[str, str], ...] = (
    (r"^mobilevit\.", ""),
    (r"^classifier\.", "classifier.fc."),
    (r"^conv_stem\.", "conv_1."),
    (r"^encoder\.layer\.(\d+)\.layer\.(\d+)\.", r"layer_{\1}.\2.block."),  # MV2 stages: Sequential of MV2
    (r"^encoder\.layer\.(\d+)\.downsampling_layer\.", r"layer_{\1}.0.block."),  # MV2 before the block
    (r"^encoder\.layer\.(\d+)\.", r"layer_{\1}.1."),  # the MobileViT block
    (r"\.expand_1x1\.", ".exp_1x1."),
    (r"\.reduce_1x1\.", ".red_1x1."),
    (r"\.conv_kxk\.", ".local_rep.conv_3x3."),
    (r"\.conv_1x1\.", ".local_rep.conv_1x1."),
    (r"\.conv_projection\.", ".conv_proj."),
    (r"\.transformer\.layer\.(\d+)\.layernorm_before\.", r".global_rep.\1.pre_norm_mha.0."),
    (r"\.transformer\.layer\.(\d+)\.attention\.output\.dense\.", r".global_rep.\1.pre_norm_mha.1.out_proj."),
    (r"\.transformer\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.",
     r".global_rep.\1.pre_norm_mha.1.\2."),
    (r"\.transformer\.layer\.(\d+)\.layernorm_after\.", r".global_rep.\1.pre_norm_ffn.0."),
    (r"\.transformer\.layer\.(\d+)\.intermediate\.dense\.", r".global_rep.\1.pre_norm_ffn.1."),
    (r"\.transformer\.layer\.(\d+)\.output\.dense\.", r".global_rep.\1.pre_norm_ffn.4."),
    (r"\.convolution\.", ".block.conv."),  # every ConvLayer wraps conv/norm/act in a Sequential "block"
    (r"\.normalization\.", ".block.norm."),
)


def to_cvnets_state_dict(hf_state_dict: dict[str, torch.Tensor], depths: tuple[int, ...] = (2, 4, 3)):
    """An ml-cvnets `mobilevit_*.pt` state dict holding the weights of a transformers model."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in hf_state_dict.items():
        new = key
        for pattern, replacement in _TO_CVNETS:
            new = re.sub(pattern, replacement, new)
        # stage numbers: transformers counts from 0, cvnets' layer_1 .. layer_5 from 1
        new = re.sub(r"^layer_\{(\d+)\}", lambda m: f"layer_{int(m.group(1)) + 1}", new)
        # the MobileViT block's final LayerNorm is global_rep[depth], after the transformer layers
        stage = re.match(r"^layer_(\d+)\.1\.layernorm\.(weight|bias)$", new)
        if stage:
            new = f"layer_{stage.group(1)}.1.global_rep.{depths[int(stage.group(1)) - 3]}.{stage.group(2)}"
        part = re.match(r"^(.*\.pre_norm_mha\.1\.)(query|key|value)\.(weight|bias)$", new)
        if part:
            qkv.setdefault(f"{part.group(1)}qkv_proj.{part.group(3)}", {})[part.group(2)] = value
            continue
        out[new] = value
    for key, parts in qkv.items():  # cvnets projects q, k, v with one Linear, in that order
        out[key] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return out
