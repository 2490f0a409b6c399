"""`mvit info`: facts checked against independent sources (the reference implementations, torch's own FLOP
counter, the bytes of a saved checkpoint), the weight cache as the store sees it, and no network."""

from __future__ import annotations

import json
import socket

import pytest
import safetensors.torch
import torch
from torch.utils.flop_counter import FlopCounterMode

from cli_helpers import invoke
from mvit_cli import manifest, store
from mvit_cli.model import build_model
from mvit_cli.random_weights import randomize_
from reference_models import build_timm, build_transformers


@pytest.fixture(autouse=True)
def no_network(tmp_path, monkeypatch):
    """An empty cache under tmp, and any attempt to open a connection fails the test."""
    monkeypatch.setenv("MVIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))

    def refuse(*args, **kwargs):
        raise AssertionError("mvit info tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def info_json(*args: str) -> dict:
    result = invoke("info", *args, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def reference_xxs():
    return build_transformers("xxs")


def test_parameter_count_matches_timm_transformers_and_the_checkpoint_bytes(tmp_path, reference_xxs):
    info = info_json("--variant", "xxs")
    assert info["parameters"] == sum(p.numel() for p in build_timm("xxs").parameters())
    assert info["parameters"] == sum(p.numel() for p in reference_xxs.parameters())
    # A saved checkpoint holds parameters + BatchNorm buffers; the buffers are 2 floats per BN channel.
    path = tmp_path / "w.safetensors"
    model = randomize_(build_model("xxs"))
    safetensors.torch.save_file(model.state_dict(), str(path))
    stored = safetensors.torch.load_file(str(path))
    buffers = sum(v.numel() for k, v in stored.items() if k.endswith(("running_mean", "running_var")))
    assert info["parameters"] == sum(v.numel() for k, v in stored.items()
                                     if not k.endswith(("num_batches_tracked", "running_mean", "running_var")))
    assert buffers > 0


@pytest.mark.parametrize("size", [256, 224])
def test_flops_match_torch_flop_counter_on_the_transformers_model(reference_xxs, size):
    # transformers computes attention with explicit matmuls, which torch's counter sees: an independent total.
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        reference_xxs(pixel_values=torch.rand(1, 3, size, size))
    info = info_json("--variant", "xxs", "--input-size", str(size))
    assert info["flops"] == counter.get_total_flops()
    assert info["input_size"] == [size, size]


def test_gflops_at_256_are_the_published_costs():
    # XXS 0.82, XS 2.05, S 4.00 GFLOPs (2 x MACs incl. attention) as quoted in the project's issue 7.
    for variant, gflops in (("xxs", 0.82), ("xs", 2.05), ("s", 4.00)):
        assert info_json("--variant", variant)["gflops"] == pytest.approx(gflops, abs=0.01)


def test_stage_table_matches_the_transformers_config(reference_xxs):
    config = reference_xxs.config
    rows = info_json("--variant", "xxs")["stages"]
    assert [r["stage"] for r in rows] == ["stem", "1", "2", "3", "4", "5", "head"]
    # neck_hidden_sizes: stem, stages 1-5, final 1x1 conv
    assert [r["channels"] for r in rows] == list(config.neck_hidden_sizes)
    blocks = [r for r in rows if r["transformer_dim"] is not None]
    assert [r["transformer_dim"] for r in blocks] == list(config.hidden_sizes)
    layers = reference_xxs.mobilevit.encoder.layer
    assert [r["transformer_depth"] for r in blocks] == [len(layers[i].transformer.layer) for i in (2, 3, 4)]
    assert {r["heads"] for r in blocks} == {config.num_attention_heads}
    assert {r["patch"] for r in blocks} == {config.patch_size}
    assert [r["mlp_dim"] for r in blocks] == [int(d * config.mlp_ratio) for d in config.hidden_sizes]
    # feature map sizes: timm's feature_info reductions at 256 px
    reductions = {f["num_chs"]: f["reduction"] for f in build_timm("xxs").feature_info}
    for row in rows[1:5]:
        assert row["output_size"] == [256 // reductions[row["channels"]]] * 2


def test_weights_preprocessing_and_accuracy_come_from_the_manifest():
    info = info_json("--variant", "s", "--source", "apple")
    entry = manifest.entry("s", "apple")
    assert (info["weights"]["repo"], info["weights"]["revision"], info["weights"]["file"]) == (
        entry.repo_id, entry.revision, entry.filename)
    assert info["preprocessing"]["crop_size"] == 256 and info["source"] == "apple"
    assert info["published"]["paper"]["top1"] == pytest.approx(78.4)
    assert info["cached"] is None


def test_cached_weights_are_reported_with_path_and_size(tmp_path):
    path = tmp_path / "xxs.safetensors"
    safetensors.torch.save_file(randomize_(build_model("xxs")).state_dict(), str(path),
                                metadata={"format": "mvit", "variant": "xxs", "source": "timm"})
    stored, _ = store.import_checkpoint(path, variant="xxs", source="timm")
    cached = info_json("--variant", "xxs")["cached"]
    # The manifest has no published sha256 for timm XXS: whether it is the published file is not known.
    assert cached == {"path": str(stored), "bytes": stored.stat().st_size, "kind": "import", "published": None}


def test_an_imported_file_that_is_not_the_published_one_is_never_called_so(tmp_path):
    """Random weights imported as S (whose published sha256 the manifest pins): intact, but not the published file;
    every view says so instead of "verified" / "cached: yes" under the pinned sha256."""
    path = tmp_path / "s.safetensors"
    safetensors.torch.save_file(randomize_(build_model("s")).state_dict(), str(path),
                                metadata={"format": "mvit", "variant": "s", "source": "timm"})
    store.import_checkpoint(path, variant="s", source="timm")
    assert info_json("--variant", "s")["cached"]["published"] is False
    table = invoke("info", "--variant", "s").stdout
    assert "NOT the published file" in table and "cached      yes" not in table
    listing = invoke("cache", "list").stdout
    assert "imported, NOT the published file" in listing
    rows = json.loads(invoke("cache", "list", "--format", "json").stdout)["files"]
    assert [(r["kind"], r["state"], r["published"]) for r in rows] == [("import", "verified", False)]
    # `download` offline: it needs the published file and says what the cache has instead, without contradicting
    # itself ("no timm weights in the cache" beside "the cache has timm weights").
    result = invoke("download", "--variant", "s", env={"HF_HUB_OFFLINE": "1"})
    assert result.exit_code == 1
    assert "holds an imported timm checkpoint for MobileViT-S" in result.output
    assert "no timm weights" not in result.output


def test_table_output_names_the_variant_and_its_costs():
    result = invoke("info", "--variant", "xs")
    assert result.exit_code == 0, result.output
    assert "MobileViT-XS" in result.stdout and "2,317,848" in result.stdout and "2.05 GFLOPs" in result.stdout
    assert "78.4" not in result.stdout and "74.8" in result.stdout  # XS's paper accuracy, not S's
