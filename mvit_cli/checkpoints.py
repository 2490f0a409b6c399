"""Read any published MobileViT v1 checkpoint into mvit's model.

Every format is data: a `KeyFormat` holds the ordered regex rewrites that turn its state-dict keys into
mvit's canonical keys (the parameter names of `mvit_cli.model`), plus the tensor transforms its layout
needs. Supported formats, detected from the keys:

- ``mvit``: our own canonical safetensors (keys = `build_model(v).state_dict()` keys), with metadata
  ``format=mvit``, ``variant``, ``source`` (``timm`` or ``apple``: whose preprocessing protocol applies).
- ``timm``: `timm/mobilevit_{xxs,xs,s}.cvnets_in1k` (``model.safetensors`` or ``pytorch_model.bin``).
- ``transformers``: `apple/mobilevit-{xx-small,x-small,small}` (``pytorch_model.bin``, ``model.safetensors``).
- ``cvnets``: Apple ml-cvnets' original ``mobilevit_{xxs,xs,s}.pt`` state dicts. Their key names are those
  that transformers' public conversion script (models/mobilevit/convert_mlcvnets_to_pytorch.py) renames,
  as built by ml-cvnets' modules (ConvLayer ``block.conv/norm``, InvertedResidual ``block.exp_1x1``, ...).

Pickle files (.bin/.pt) are only ever read with ``torch.load(weights_only=True)``: a file that needs any
other Python object to unpickle is refused, never executed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch

from mvit_cli.errors import CheckpointError, VariantMismatchError
from mvit_cli.manifest import title
from mvit_cli.model import VARIANTS, MobileViT, build_model

StateDict = dict[str, torch.Tensor]

# Buffers that count training steps; meaningless for inference, so neither required nor refused.
IGNORED_SUFFIX = ".num_batches_tracked"
# Marks a key that is one part of a tensor the canonical model stores fused: "<key>#<index>".
# Parts are concatenated along dim 0 in index order (q, k, v -> qkv).
PART_MARK = "#"

Rule = tuple[str, str]  # (regex, replacement), applied with re.sub to every key, in table order


def _reverse_stem_input_channels(state_dict: StateDict) -> StateDict:
    """BGR-trained weights -> RGB-input weights.

    ml-cvnets trained MobileViT on images read with OpenCV, i.e. in BGR channel order; transformers' image
    processor flips RGB to BGR for that reason. The stem conv is the only layer that sees the raw channels,
    so reversing its input-channel axis makes the weights expect RGB and one RGB pipeline serves every
    format, with exactly the same arithmetic (a permutation of the conv's summands).
    """
    out = dict(state_dict)
    if "stem.conv.weight" in out:
        out["stem.conv.weight"] = out["stem.conv.weight"].flip(1).contiguous()  # [16, 3(BGR), 3, 3] -> RGB
    return out


@dataclass(frozen=True)
class KeyFormat:
    name: str
    signature: tuple[str, ...]  # regexes that must each match some key for the format to be detected
    rules: tuple[Rule, ...] = ()  # key rewrites into canonical names, applied in order
    transforms: tuple[Callable[[StateDict], StateDict], ...] = ()  # on the canonical-named state dict


def _layer_index_rules(pattern: str, replacement: str, count: int = 5) -> tuple[Rule, ...]:
    """Rows for 1-based stage names (cvnets' ``layer_1`` .. ``layer_5``) -> 0-based ``stages.N``."""
    return tuple((pattern.format(i=i), replacement.format(i=i - 1)) for i in range(1, count + 1))


MVIT = KeyFormat(
    name="mvit",
    signature=(r"^stem\.conv\.weight$", r"^stages\.\d+\.\d+\.expand\.conv\.weight$"),
)

TIMM = KeyFormat(
    name="timm",
    signature=(r"^stem\.conv\.weight$", r"\.conv1_1x1\.conv\.weight$"),
    rules=(
        # MV2 (timm's BottleneckBlock)
        (r"\.conv1_1x1\.", ".expand."),
        (r"\.conv2_kxk\.", ".depthwise."),
        (r"\.conv3_1x1\.", ".project."),
        # MobileViT block: timm already uses norm1/attn.qkv/attn.proj/norm2/mlp.fc1/mlp.fc2/norm
        (r"\.conv_kxk\.", ".local."),
        (r"\.conv_1x1\.weight$", ".to_tokens.weight"),
        (r"\.conv_proj\.", ".from_tokens."),
        (r"\.conv_fusion\.", ".fusion."),
        (r"^head\.fc\.", "classifier."),
    ),
)

TRANSFORMERS = KeyFormat(
    name="transformers",
    signature=(r"^mobilevit\.conv_stem\.convolution\.weight$",),
    rules=(
        (r"^mobilevit\.conv_stem\.", "stem."),
        (r"^mobilevit\.encoder\.layer\.(\d+)\.layer\.(\d+)\.", r"stages.\1.\2."),  # pure MV2 stages
        (r"^mobilevit\.encoder\.layer\.(\d+)\.downsampling_layer\.", r"stages.\1.0."),  # MV2 before the block
        (r"^mobilevit\.encoder\.layer\.(\d+)\.", r"stages.\1.1."),  # the rest of a stage: its MobileViT block
        (r"^mobilevit\.conv_1x1_exp\.", "final_conv."),
        (r"\.expand_1x1\.", ".expand."),
        (r"\.conv_3x3\.", ".depthwise."),
        (r"\.reduce_1x1\.", ".project."),
        (r"\.conv_kxk\.", ".local."),
        (r"\.conv_1x1\.convolution\.weight$", ".to_tokens.weight"),
        (r"\.conv_projection\.", ".from_tokens."),
        (r"\.transformer\.layer\.(\d+)\.", r".transformer.\1."),
        (r"\.attention\.attention\.query\.(weight|bias)$", rf".attn.qkv.\1{PART_MARK}0"),
        (r"\.attention\.attention\.key\.(weight|bias)$", rf".attn.qkv.\1{PART_MARK}1"),
        (r"\.attention\.attention\.value\.(weight|bias)$", rf".attn.qkv.\1{PART_MARK}2"),
        (r"\.attention\.output\.dense\.", ".attn.proj."),  # before the FFN's "output.dense" below
        (r"\.intermediate\.dense\.", ".mlp.fc1."),
        (r"\.output\.dense\.", ".mlp.fc2."),
        (r"\.layernorm_before\.", ".norm1."),
        (r"\.layernorm_after\.", ".norm2."),
        (r"\.layernorm\.", ".norm."),
        (r"\.convolution\.", ".conv."),
        (r"\.normalization\.", ".bn."),
    ),
    transforms=(_reverse_stem_input_channels,),  # converted from ml-cvnets' BGR-trained weights, unchanged
)

CVNETS = KeyFormat(
    name="cvnets",
    signature=(r"^conv_1\.block\.conv\.weight$", r"^layer_1\.0\.block\.exp_1x1\."),
    rules=(
        # ConvLayer internals first, so that the final LayerNorm's ".norm." below is not mistaken for one.
        (r"\.block\.conv\.", ".conv."),
        (r"\.block\.norm\.", ".bn."),
        (r"^conv_1\.", "stem."),
        (r"^conv_1x1_exp\.", "final_conv."),
        (r"^classifier\.fc\.", "classifier."),
        *_layer_index_rules(r"^layer_{i}\.", "stages.{i}."),
        (r"\.block\.exp_1x1\.", ".expand."),
        (r"\.block\.conv_3x3\.", ".depthwise."),
        (r"\.block\.red_1x1\.", ".project."),
        (r"\.local_rep\.conv_3x3\.", ".local."),
        (r"\.local_rep\.conv_1x1\.conv\.weight$", ".to_tokens.weight"),
        (r"\.global_rep\.(\d+)\.pre_norm_mha\.0\.", r".transformer.\1.norm1."),
        (r"\.global_rep\.(\d+)\.pre_norm_mha\.1\.qkv_proj\.", r".transformer.\1.attn.qkv."),  # fused q, k, v
        (r"\.global_rep\.(\d+)\.pre_norm_mha\.1\.out_proj\.", r".transformer.\1.attn.proj."),
        (r"\.global_rep\.(\d+)\.pre_norm_ffn\.0\.", r".transformer.\1.norm2."),
        (r"\.global_rep\.(\d+)\.pre_norm_ffn\.1\.", r".transformer.\1.mlp.fc1."),
        (r"\.global_rep\.(\d+)\.pre_norm_ffn\.4\.", r".transformer.\1.mlp.fc2."),
        (r"\.global_rep\.\d+\.(weight|bias)$", r".norm.\1"),  # the LayerNorm after the last layer
        (r"\.conv_proj\.", ".from_tokens."),
    ),
    transforms=(_reverse_stem_input_channels,),  # BGR-trained (images read with OpenCV)
)

# Detection order matters only where signatures could overlap: the canonical format first.
FORMATS: dict[str, KeyFormat] = {f.name: f for f in (MVIT, TIMM, TRANSFORMERS, CVNETS)}

# Wrappers training scripts put around a state dict; unwrapped in this order.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model")
_LIST_LIMIT = 5


@dataclass
class Checkpoint:
    model: MobileViT  # loaded, eval mode, CPU, float32, expects RGB in [0, 1]
    variant: str  # "xxs" | "xs" | "s"
    format: str  # "mvit" | "timm" | "transformers" | "cvnets"
    source: str | None  # from mvit-format metadata ("timm" / "apple"), else None


# ----------------------------------------------------------------------------------------------- reading


def _sniff(path: Path) -> str:
    """The file's kind from its first bytes: "safetensors", "torch" (zip or legacy pickle) or "unknown"."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1:
        return "safetensors"
    return "unknown"


def _one_line(exc: BaseException, limit: int = 160) -> str:
    """An exception's text on one line (torch's messages span several), shortened."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_safetensors(path: Path) -> tuple[StateDict, dict[str, str]]:
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path}: damaged safetensors file ({_one_line(exc)}); download or export it again"
        ) from exc
    return tensors, metadata


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives (what `mvit export -f torchscript` writes) carry code, not a state dict."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _read_torch(path: Path) -> StateDict:
    import pickle

    if _is_torchscript(path):
        raise CheckpointError(
            f"{path} is a TorchScript program (e.g. from `mvit export -f torchscript`), not a checkpoint; "
            "load it with torch.jit.load, or pass the weights file it was exported from"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any global outside tensors/containers: code could run if we unpickled it.
        raise CheckpointError(
            f"{path}: refused to load: the file contains pickled Python objects, not only tensors, and "
            "unpickling them could run arbitrary code; re-save just the state dict (torch.save(model.state_dict()))"
            " or use safetensors"
        ) from exc
    except Exception as exc:  # torch raises RuntimeError/EOFError/zip errors for damaged files
        raise CheckpointError(
            f"{path}: damaged or unreadable PyTorch file ({type(exc).__name__}: {_one_line(exc)})"
        ) from exc
    return _unwrap(obj, path)


def _unwrap(obj: object, path: Path) -> StateDict:
    """The tensor dict inside common containers ({"state_dict": ...}, {"model": ...}, DataParallel's "module.")."""
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: not a checkpoint: expected a dict of tensors (a state dict)")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: not a checkpoint: it holds no tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def read_state_dict(path: Path) -> tuple[StateDict, dict[str, str]]:
    """Tensors and metadata (safetensors' header metadata; empty for PyTorch files) of a checkpoint file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no such checkpoint file: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; pass the checkpoint file inside it")
    try:
        kind = _sniff(path)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if kind == "safetensors":
        tensors, metadata = _read_safetensors(path)
    elif kind == "torch":
        tensors, metadata = _read_torch(path), {}
    else:
        raise CheckpointError(
            f"{path}: not a checkpoint: expected a safetensors or PyTorch (.bin/.pt/.pth) file"
        )
    if not tensors:
        raise CheckpointError(f"{path}: not a checkpoint: it holds no tensors")
    return tensors, metadata


# ------------------------------------------------------------------------------------ formats and variants


def _first_few(items: list[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT])
    return f"{shown}, ... ({len(items)} in all)" if len(items) > _LIST_LIMIT else shown


def detect_format(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The name of the format whose signature keys are all present ("mvit", "timm", ...)."""
    keys = list(state_dict)
    for fmt in FORMATS.values():
        if all(any(re.search(pattern, k) for k in keys) for pattern in fmt.signature):
            return fmt.name
    raise CheckpointError(
        "unknown checkpoint format: the keys match none of "
        f"{', '.join(FORMATS)} (first keys: {_first_few(sorted(keys))}); "
        "expected a MobileViT v1 checkpoint from timm, transformers (apple/mobilevit-*) or ml-cvnets"
    )


def _fuse_parts(state_dict: StateDict) -> StateDict:
    """Concatenate "<key>#<i>" parts along dim 0 in index order into "<key>"."""
    out: StateDict = {}
    parts: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in state_dict.items():
        base, mark, index = key.rpartition(PART_MARK)
        if mark:
            parts.setdefault(base, {})[int(index)] = value
        else:
            out[key] = value
    for base, pieces in parts.items():
        if sorted(pieces) != list(range(len(pieces))):
            raise CheckpointError(f"incomplete checkpoint: some parts of {base} are missing")
        out[base] = torch.cat([pieces[i] for i in range(len(pieces))], dim=0)
    return out


def to_canonical(state_dict: Mapping[str, torch.Tensor], fmt: str) -> StateDict:
    """Rename keys and transform tensors of format `fmt` into mvit's canonical state dict (float32)."""
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; expected one of {', '.join(FORMATS)}")
    key_format = FORMATS[fmt]
    renamed: StateDict = {}
    for key, value in state_dict.items():
        if key.endswith(IGNORED_SUFFIX):
            continue
        new_key = key
        for pattern, replacement in key_format.rules:
            new_key = re.sub(pattern, replacement, new_key)
        if new_key in renamed:
            raise CheckpointError(f"ambiguous checkpoint: two keys map onto {new_key} (one of them is {key})")
        renamed[new_key] = value.float() if value.is_floating_point() else value
    canonical = _fuse_parts(renamed)
    for transform in key_format.transforms:
        canonical = transform(canonical)
    return canonical


def _expected_shapes(variant: str) -> dict[str, torch.Size]:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = MobileViT(VARIANTS[variant])
    return {k: v.shape for k, v in model.state_dict().items() if not k.endswith(IGNORED_SUFFIX)}


_SHAPES: dict[str, dict[str, torch.Size]] = {}


def expected_shapes(variant: str) -> dict[str, torch.Size]:
    """Canonical key -> shape for `variant` (num_batches_tracked left out). Cached."""
    if variant not in _SHAPES:
        _SHAPES[variant] = _expected_shapes(variant)
    return _SHAPES[variant]


def _shape_matches(canonical: Mapping[str, torch.Tensor], variant: str) -> int:
    shapes = expected_shapes(variant)
    return sum(1 for k, v in canonical.items() if k in shapes and v.shape == shapes[k])


def infer_variant(canonical_state_dict: Mapping[str, torch.Tensor]) -> str:
    """The variant whose parameter shapes the checkpoint fits best (every shape, for a real checkpoint)."""
    scores = {v: _shape_matches(canonical_state_dict, v) for v in VARIANTS}
    best = max(scores, key=scores.get)
    if scores[best] == 0:
        raise CheckpointError(
            "the checkpoint's tensor shapes fit no MobileViT v1 variant (xxs, xs, s); is it a MobileViT v1 "
            "ImageNet classifier?"
        )
    return best


def _check_fits(canonical: Mapping[str, torch.Tensor], variant: str, inferred: str, fmt: str) -> None:
    shapes = expected_shapes(variant)
    missing = sorted(k for k in shapes if k not in canonical)
    unexpected = sorted(k for k in canonical if k not in shapes)
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing key(s): {_first_few(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected key(s): {_first_few(unexpected)}")
        raise CheckpointError(
            f"checkpoint does not fit {title(variant)} ({fmt} format, keys in mvit's names): "
            f"{'; '.join(problems)}"
        )
    wrong = sorted(k for k in shapes if canonical[k].shape != shapes[k])
    if wrong:
        details = ", ".join(f"{k} {tuple(canonical[k].shape)} vs {tuple(shapes[k])}" for k in wrong[:3])
        raise CheckpointError(
            f"checkpoint does not fit {title(variant)}: {len(wrong)} tensor(s) of the wrong shape "
            f"({details}{', ...' if len(wrong) > 3 else ''})"
        )


def _check_values(canonical: Mapping[str, torch.Tensor]) -> None:
    """Refuse tensors that are not floating point, or hold NaN or infinity. Such weights do load, and then every
    probability is NaN (invalid JSON), every ranking is in class-index order, and nothing says why."""
    for key, value in canonical.items():
        if key.endswith(IGNORED_SUFFIX):
            continue
        if not value.is_floating_point():
            raise CheckpointError(f"tensor {key} holds {str(value.dtype).replace('torch.', '')} values, not floating "
                                  "point; the file is damaged or not a MobileViT checkpoint")
        bad = ~torch.isfinite(value)
        if bool(bad.any()):
            kinds = " and ".join(name for name, found in (("NaN", torch.isnan(value).any()),
                                                           ("infinite", torch.isinf(value).any())) if found)
            raise CheckpointError(f"tensor {key} holds {int(bad.sum())} {kinds} value(s); the weights are damaged "
                                  "(a diverged training run or a corrupted file)")


# ------------------------------------------------------------------------------------------ load and save


def load_checkpoint(path: Path, variant: str | None = None) -> Checkpoint:
    """Read, detect, canonicalise and load a checkpoint. `variant` None: inferred from the tensor shapes."""
    path = Path(path)
    if variant is not None and variant not in VARIANTS:
        raise CheckpointError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    tensors, metadata = read_state_dict(path)
    fmt = detect_format(tensors)
    canonical = to_canonical(tensors, fmt)
    inferred = infer_variant(canonical)
    variant = variant or inferred
    if inferred != variant:
        raise VariantMismatchError(path, inferred, variant)
    try:
        _check_fits(canonical, variant, inferred, fmt)
        _check_values(canonical)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    model = build_model(variant)
    model.load_state_dict(canonical, strict=False)  # fit checked above; only num_batches_tracked is absent
    model.eval()
    source = metadata.get("source") if fmt == "mvit" else None
    return Checkpoint(model=model, variant=variant, format=fmt, source=source)


def save_canonical(checkpoint: Checkpoint, path: Path, source: str) -> None:
    """Write `checkpoint` as mvit's canonical safetensors, with the metadata `load_checkpoint` reads back."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in checkpoint.model.state_dict().items()}
    metadata = {
        "format": "mvit",
        "variant": checkpoint.variant,
        "source": source,
        "original_format": checkpoint.format,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)
