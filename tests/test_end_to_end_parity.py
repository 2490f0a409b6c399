"""Whole-pipeline parity: a photo through `mvit classify --weights FILE` gives the probabilities that the
reference library's own pipeline gives for the same checkpoint and the same file.

The pieces are proven separately (test_model_parity, test_preprocess_parity); this proves they are wired
together right: that a file's detected format picks its source's preprocessing (transformers -> apple protocol,
timm -> timm protocol), that `--source` overrides it, and that the BGR canonicalisation and the RGB pipeline
meet in the middle.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from image_corpus import smooth_rgb
from PIL import Image
from cli_helpers import invoke
from mvit_cli.random_weights import randomize_
from reference_models import build_transformers, plain_state_dict


transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("offline_empty_cache")


@pytest.fixture(scope="module")
def apple_checkpoint(tmp_path_factory):
    """A random transformers-format pytorch_model.bin (the apple/mobilevit-xx-small layout) and its model."""
    folder = tmp_path_factory.mktemp("apple")
    model = randomize_(build_transformers("xxs"), seed=11).eval()
    torch.save(plain_state_dict(model), folder / "pytorch_model.bin")
    return folder / "pytorch_model.bin", model


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    smooth_rgb(333, 250, seed=3).save(path, quality=92)  # odd sizes: resize and crop rounding both matter
    return path


def transformers_pipeline_probabilities(model, path: Path) -> torch.Tensor:
    """What a transformers user gets: the hub's processor config (PIL processor), then the model."""
    cls = getattr(transformers, "MobileViTImageProcessorPil", None) or transformers.MobileViTImageProcessor
    processor = cls(size={"shortest_edge": 288}, crop_size={"height": 256, "width": 256}, resample=2,
                    do_flip_channel_order=True, do_convert_rgb=True)
    pixel_values = processor(Image.open(path), return_tensors="pt")["pixel_values"]  # BGR, as trained
    with torch.no_grad():
        return model(pixel_values=pixel_values).logits.double().softmax(dim=1)[0]


def mvit_predictions(*args) -> list[dict]:
    result = invoke("classify", *map(str, args), "--format", "json", "--workers", "0",
                    "--top-k", "5")
    assert result.exit_code == 0, result.output
    (record,) = json.loads(result.stdout)
    return record["predictions"]


def test_transformers_checkpoint_reproduces_the_transformers_pipeline(apple_checkpoint, photo):
    checkpoint, model = apple_checkpoint
    expected = transformers_pipeline_probabilities(model, photo).topk(5)
    got = mvit_predictions(photo, "--weights", checkpoint)
    assert [p["index"] for p in got] == expected.indices.tolist()
    assert [p["probability"] for p in got] == pytest.approx(expected.values.tolist(), abs=2e-6)


def test_source_overrides_the_protocol_of_the_detected_format(apple_checkpoint, photo):
    checkpoint, model = apple_checkpoint
    apple = [p["probability"] for p in mvit_predictions(photo, "--weights", checkpoint)]
    timm = [p["probability"] for p in mvit_predictions(photo, "--weights", checkpoint, "--source", "timm")]
    assert max(abs(a - b) for a, b in zip(apple, timm)) > 1e-4  # another crop: other probabilities

    from mvit_cli import loading, manifest

    loaded = loading.load_model(weights=checkpoint, source="timm")
    assert loaded.source == "timm" and loaded.preprocessing == manifest.preprocessing("timm")
    loaded = loading.load_model(weights=checkpoint)
    assert loaded.source == "apple" and loaded.preprocessing == manifest.preprocessing("apple")


def test_a_small_job_gets_an_untraced_model_and_a_big_one_a_traced_model(apple_checkpoint):
    from mvit_cli import loading, runners

    checkpoint, _ = apple_checkpoint
    small = loading.load_model(weights=checkpoint, device="cpu", expected_images=3)
    big = loading.load_model(weights=checkpoint, device="cpu", expected_images=runners.TRACE_MIN_IMAGES)
    assert not small.run.trace and big.run.trace  # memoised apart: a small job first does not decide for later
    assert loading.load_model(weights=checkpoint, device="cpu", expected_images=5) is small
    assert loading.load_model(weights=checkpoint, device="cpu") is big  # unknown size: traced
