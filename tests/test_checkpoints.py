"""The checkpoint loader: formats, containers, variants, and a clear one-line error for every bad file.

Logit-level equality with the reference implementations is in test_model_parity.py; here the checkpoints are
our own model's state dict (random weights), renamed where a test needs another format's key names.
"""

from __future__ import annotations

import os
import pathlib
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from cli_helpers import invoke
from mvit_cli.random_weights import randomize_, structured_images
from mvit_cli import checkpoints
from mvit_cli.checkpoints import (
    detect_format,
    infer_variant,
    load_checkpoint,
    read_state_dict,
    save_canonical,
    to_canonical,
)
from mvit_cli.errors import CheckpointError, MvitError
from mvit_cli.model import build_model

MVIT_METADATA = {"format": "mvit", "variant": "xxs", "source": "timm"}


@pytest.fixture(scope="module")
def xxs():
    return randomize_(build_model("xxs"), seed=5)


@pytest.fixture(scope="module")
def xxs_state(xxs):
    return {k: v.clone() for k, v in xxs.state_dict().items()}


@pytest.fixture(scope="module")
def xs_state():
    # shapes are all that matters for the variant tests: no need to randomise
    return build_model("xs").state_dict()


@pytest.fixture(scope="module")
def pixels():
    return structured_images(2, 64, seed=1)


def same_logits(model: torch.nn.Module, reference: torch.nn.Module, pixels: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.equal(model(pixels), reference(pixels))


def load_error(path: pathlib.Path, variant: str | None = None) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, variant=variant)
    message = str(info.value)
    assert "\n" not in message and message, "errors must be one line"
    assert isinstance(info.value, MvitError)  # the CLI prints these as one line, without a traceback
    return message


# ---------------------------------------------------------------------------------------- reading and loading


def test_canonical_safetensors_round_trip(tmp_path, xxs, xxs_state, pixels):
    path = tmp_path / "w.safetensors"
    save_file(xxs_state, str(path), metadata=MVIT_METADATA)
    checkpoint = load_checkpoint(path)
    assert (checkpoint.variant, checkpoint.format, checkpoint.source) == ("xxs", "mvit", "timm")
    assert not checkpoint.model.training
    assert next(checkpoint.model.parameters()).dtype == torch.float32
    assert same_logits(checkpoint.model, xxs, pixels)

    again = tmp_path / "again.safetensors"
    save_canonical(checkpoint, again, source="apple")
    tensors, metadata = read_state_dict(again)
    assert metadata == {"format": "mvit", "variant": "xxs", "source": "apple", "original_format": "mvit"}
    assert tensors.keys() == xxs_state.keys()
    reloaded = load_checkpoint(again, variant="xxs")
    assert reloaded.source == "apple"
    assert same_logits(reloaded.model, xxs, pixels)


# Our module names -> timm's (BottleneckBlock conv1_1x1/conv2_kxk/conv3_1x1, MobileVitBlock conv_kxk/...).
TIMM_NAMES = (
    (".expand.", ".conv1_1x1."), (".depthwise.", ".conv2_kxk."), (".project.", ".conv3_1x1."),
    (".local.", ".conv_kxk."), (".to_tokens.", ".conv_1x1."), (".from_tokens.", ".conv_proj."),
    (".fusion.", ".conv_fusion."), ("classifier.", "head.fc."),
)


def test_save_canonical_records_the_original_format(tmp_path, xxs_state):
    timm_named = {}
    for key, value in xxs_state.items():
        for ours, theirs in TIMM_NAMES:
            key = theirs + key[len(ours):] if key.startswith(ours) else key.replace(ours, theirs)
        timm_named[key] = value
    source = tmp_path / "pytorch_model.bin"
    torch.save(timm_named, source)
    checkpoint = load_checkpoint(source)
    assert (checkpoint.format, checkpoint.source) == ("timm", None)
    out = tmp_path / "converted.safetensors"
    save_canonical(checkpoint, out, source="timm")
    assert read_state_dict(out)[1]["original_format"] == "timm"
    assert load_checkpoint(out).format == "mvit"


@pytest.mark.parametrize("variant", ["xxs", "xs", "s"])
def test_variant_is_inferred_from_shapes(variant):
    assert infer_variant(build_model(variant).state_dict()) == variant


def test_torch_file_and_common_containers(tmp_path, xxs, xxs_state, pixels):
    containers = {
        "plain.pt": xxs_state,
        "state_dict.pth": {"state_dict": xxs_state, "epoch": 3},
        "model.bin": {"model": xxs_state, "optimizer": {"lr": torch.tensor(0.1)}},
        "ddp.pt": {"state_dict": {f"module.{k}": v for k, v in xxs_state.items()}},
    }
    for name, obj in containers.items():
        torch.save(obj, tmp_path / name)
        checkpoint = load_checkpoint(tmp_path / name)
        assert (checkpoint.format, checkpoint.variant, checkpoint.source) == ("mvit", "xxs", None), name
        assert same_logits(checkpoint.model, xxs, pixels), name


def test_num_batches_tracked_is_neither_required_nor_refused(tmp_path, xxs, xxs_state, pixels):
    without = {k: v for k, v in xxs_state.items() if not k.endswith("num_batches_tracked")}
    assert len(without) < len(xxs_state)
    save_file(without, str(tmp_path / "w.safetensors"), metadata=MVIT_METADATA)
    assert same_logits(load_checkpoint(tmp_path / "w.safetensors").model, xxs, pixels)


def test_half_precision_checkpoint_loads_as_float32(tmp_path, xxs_state):
    half = {k: v.half() if v.is_floating_point() else v for k, v in xxs_state.items()}
    save_file(half, str(tmp_path / "w.safetensors"), metadata=MVIT_METADATA)
    model = load_checkpoint(tmp_path / "w.safetensors").model
    assert {p.dtype for p in model.state_dict().values() if p.is_floating_point()} == {torch.float32}
    assert torch.equal(model.classifier.weight, half["classifier.weight"].float())


def test_bgr_formats_get_their_stem_reversed_to_rgb(xxs_state):
    """transformers/cvnets weights expect BGR; canonicalising reverses the stem conv's input channels."""
    stem = torch.arange(16 * 3 * 9, dtype=torch.float32).reshape(16, 3, 3, 3)
    canonical = to_canonical({"mobilevit.conv_stem.convolution.weight": stem}, "transformers")
    assert torch.equal(canonical["stem.conv.weight"], stem[:, [2, 1, 0]])
    assert torch.equal(to_canonical({"stem.conv.weight": stem}, "timm")["stem.conv.weight"], stem)


def test_transformers_query_key_value_are_fused_in_order():
    prefix = "mobilevit.encoder.layer.2.transformer.layer.1.attention.attention."
    parts = {name: torch.full((4, 4), float(i)) for i, name in enumerate(["query", "key", "value"])}
    state = {f"{prefix}{name}.weight": t for name, t in parts.items()}
    canonical = to_canonical(state, "transformers")
    assert list(canonical) == ["stages.2.1.transformer.1.attn.qkv.weight"]
    assert canonical["stages.2.1.transformer.1.attn.qkv.weight"][:, 0].tolist() == [0.0] * 4 + [1.0] * 4 + [2.0] * 4


def test_detect_format_from_key_names(xxs_state):
    assert detect_format(xxs_state) == "mvit"
    assert detect_format({"stem.conv.weight": 0, "stages.0.0.conv1_1x1.conv.weight": 0, "head.fc.weight": 0}) == "timm"
    assert detect_format({"mobilevit.conv_stem.convolution.weight": 0, "classifier.weight": 0}) == "transformers"
    assert detect_format({"conv_1.block.conv.weight": 0, "layer_1.0.block.exp_1x1.block.conv.weight": 0}) == "cvnets"


def test_rules_are_anchored_at_name_boundaries():
    """An unanchored rule could rewrite part of a name ("conv_1" inside "conv_1x1_exp")."""
    for name, fmt in checkpoints.FORMATS.items():
        for pattern, _ in fmt.rules:
            assert pattern.startswith(("^", r"\.")), f"{name}: rule {pattern!r} must be anchored at a name boundary"


# ------------------------------------------------------------------------------------------------------ errors


def test_other_variant_names_both_variants(tmp_path, xs_state):
    path = tmp_path / "xs.safetensors"
    save_file(xs_state, str(path), metadata={"format": "mvit", "variant": "xs", "source": "timm"})
    message = load_error(path, variant="s")
    assert "MobileViT-XS" in message and "MobileViT-S was asked" in message
    # The CLI names the flag that fixes it.


    result = invoke("classify", str(path), "--weights", str(path), "--variant", "s")
    assert result.exit_code == 1 and "--variant s (MobileViT-S) was given; pass --variant xs" in result.output
    assert load_checkpoint(path).variant == "xs"  # without --variant, it just loads


def test_missing_keys_are_listed_with_a_count(tmp_path, xxs_state):
    dropped = sorted(k for k in xxs_state if k.startswith("stages.4.1.transformer.2.") and "norm" not in k)
    assert len(dropped) > 5
    state = {k: v for k, v in xxs_state.items() if k not in dropped}
    save_file(state, str(tmp_path / "w.safetensors"))
    message = load_error(tmp_path / "w.safetensors")
    assert f"{len(dropped)} missing key(s)" in message
    assert dropped[0] in message and f"({len(dropped)} in all)" in message
    assert dropped[-1] not in message  # first few only


def test_unexpected_keys_are_listed(tmp_path, xxs_state):
    state = dict(xxs_state, **{"stages.2.1.extra.weight": torch.zeros(3), "head_dist.weight": torch.zeros(3)})
    save_file(state, str(tmp_path / "w.safetensors"))
    message = load_error(tmp_path / "w.safetensors")
    assert "2 unexpected key(s)" in message
    assert "stages.2.1.extra.weight" in message and "head_dist.weight" in message


def test_wrong_shape_is_named(tmp_path, xxs_state):
    state = dict(xxs_state, **{"classifier.weight": torch.zeros(10, 320), "classifier.bias": torch.zeros(10)})
    save_file(state, str(tmp_path / "w.safetensors"))
    message = load_error(tmp_path / "w.safetensors")
    assert "classifier.weight (10, 320) vs (1000, 320)" in message


def test_unknown_format(tmp_path):
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 2048)}, str(tmp_path / "r.st"))
    message = load_error(tmp_path / "r.st")
    assert "unknown checkpoint format" in message and "conv1.weight" in message
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        to_canonical({}, "keras")


def test_unknown_variant_argument(tmp_path, xxs_state):
    save_file(xxs_state, str(tmp_path / "w.safetensors"))
    assert "unknown variant 'm'" in load_error(tmp_path / "w.safetensors", variant="m")


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("empty.safetensors", b"", "not a checkpoint"),
        ("text.bin", b"hello, I am not a checkpoint\n", "not a checkpoint"),
        ("image.pt", b"\x89PNG\r\n\x1a\n" + bytes(64), "not a checkpoint"),
        ("cut.safetensors", (200).to_bytes(8, "little") + b'{"a": {"dtype": "F32", "sha', "damaged safetensors"),
    ],
)
def test_unreadable_files(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    assert expected in load_error(path)


def test_truncated_torch_file(tmp_path, xxs_state):
    whole = tmp_path / "whole.pt"
    torch.save(xxs_state, whole)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert "damaged or unreadable PyTorch file" in load_error(cut)


def test_zip_that_is_not_a_torch_file(tmp_path):
    with zipfile.ZipFile(tmp_path / "archive.pt", "w") as archive:
        archive.writestr("readme.txt", "not a tensor in sight")
    assert "damaged or unreadable PyTorch file" in load_error(tmp_path / "archive.pt")


def test_missing_path_and_directory(tmp_path):
    assert "no such checkpoint file" in load_error(tmp_path / "nope.safetensors")
    assert "is a directory" in load_error(tmp_path)


@pytest.mark.parametrize(
    "obj",
    [[torch.zeros(3)], {"epoch": 3, "note": "no tensors here"}, {}, torch.zeros(3)],
    ids=["list", "no-tensors", "empty-dict", "bare-tensor"],
)
def test_torch_files_that_are_not_state_dicts(tmp_path, obj):
    torch.save(obj, tmp_path / "x.pt")
    assert "not a checkpoint" in load_error(tmp_path / "x.pt")


class _MkdirOnUnpickle:
    """Unpickling this object calls os.mkdir(marker): stands for arbitrary code in a malicious pickle."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_pickled_objects_are_refused_never_executed(tmp_path, xxs_state):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": xxs_state, "payload": _MkdirOnUnpickle(marker)}, path)
    assert zipfile.is_zipfile(path)
    message = load_error(path)
    assert "refused" in message and "pickled Python objects" in message
    assert not marker.exists(), "loading a checkpoint ran code from the pickle"
    torch.load(path, weights_only=False)  # the payload is live: an unsafe load does run it
    assert marker.exists()


def test_whole_pickled_module_is_refused(tmp_path, xxs):
    torch.save(xxs, tmp_path / "model.pt")  # torch.save(model) pickles the classes, not just tensors
    assert "refused" in load_error(tmp_path / "model.pt")


def test_torchscript_export_is_named_as_such_not_called_damaged(tmp_path):
    import torch

    from mvit_cli.checkpoints import load_checkpoint
    from mvit_cli.errors import CheckpointError
    from mvit_cli.model import build_model

    scripted = torch.jit.trace(build_model("xxs"), torch.rand(1, 3, 64, 64), check_trace=False)
    path = tmp_path / "exported.pt"
    torch.jit.save(scripted, str(path))
    with pytest.raises(CheckpointError, match="TorchScript program"):
        load_checkpoint(path)
