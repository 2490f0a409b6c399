"""`classify --decode fast`: JPEG draft decoding and crop-only resampling, an opt-in that trades the reference
protocol's exact pixels for speed. Close to exact, never the default."""

from __future__ import annotations

import json

import numpy as np
import pytest
from image_corpus import encode, exif_rotated_jpeg, smooth_rgb
from PIL import Image

from cli_helpers import invoke
from mvit_cli.pipeline.batching import load_pixels
from mvit_cli.pipeline.images import decode_image
from mvit_cli.preprocess import Preprocessing, resize_and_crop

TIMM = Preprocessing(284, "bicubic", 256)
APPLE = Preprocessing(288, "bilinear", 256, crop_rounding="floor")


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """Photo-sized, with grain (a smooth field alone would hide resampling differences)."""
    rng = np.random.default_rng(5)
    pixels = np.asarray(smooth_rgb(2400, 1800, seed=5), dtype=np.int16) + rng.integers(-8, 9, (1800, 2400, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photo_jpeg(photo) -> bytes:
    return encode(photo, "JPEG", quality=92)


def test_a_big_jpeg_decodes_at_a_reduced_scale_that_still_covers_the_resize(photo_jpeg):
    full = decode_image(photo_jpeg)
    drafted = decode_image(photo_jpeg, draft_shorter=284)
    assert full.size == (2400, 1800)
    assert drafted.size == (600, 450)  # 1/4: 1/8 would make the shorter side 225 < 284
    assert drafted.mode == "RGB"


def test_draft_decoding_leaves_other_formats_and_small_jpegs_alone(photo):
    png = encode(photo, "PNG")
    assert decode_image(png, draft_shorter=284).size == (2400, 1800)
    small = encode(smooth_rgb(500, 375, seed=1), "JPEG")
    assert decode_image(small, draft_shorter=284).size == (500, 375)


def test_draft_decoding_keeps_exif_orientation():
    stored_rotated = exif_rotated_jpeg(smooth_rgb(1600, 1200, seed=2), orientation=6)
    assert decode_image(stored_rotated, draft_shorter=284).size == (400, 300)  # upright, at 1/4
    assert decode_image(stored_rotated, exif_transpose=False, draft_shorter=284).size == (300, 400)


@pytest.mark.parametrize("protocol", [TIMM, APPLE], ids=["timm", "apple"])
def test_fast_pixels_stay_within_a_few_grey_levels_of_the_reference(photo, photo_jpeg, protocol):
    exact = np.asarray(load_pixels(photo_jpeg, protocol), dtype=np.int16)
    fast = np.asarray(load_pixels(photo_jpeg, protocol, fast=True), dtype=np.int16)
    assert exact.shape == fast.shape == (256, 256, 3)
    difference = np.abs(exact - fast)
    assert 0 < difference.mean() < 2.0  # not the same pixels (it is not exact), but close
    assert np.percentile(difference, 99) <= 8
    # the resize alone (no JPEG draft): crop-only resampling of the decoded photo
    crop_only = np.asarray(resize_and_crop(photo, protocol, fast=True), dtype=np.int16)
    assert np.abs(crop_only - np.asarray(resize_and_crop(photo, protocol), dtype=np.int16)).mean() < 1.0


def test_classify_decode_fast_gives_close_predictions_and_the_same_records(tmp_path, photo_jpeg):
    import safetensors.torch
    from mvit_cli.random_weights import randomize_

    from mvit_cli.model import build_model

    checkpoint = tmp_path / "xxs.safetensors"
    safetensors.torch.save_file(randomize_(build_model("xxs"), seed=1).state_dict(), str(checkpoint),
                                metadata={"format": "mvit", "variant": "xxs", "source": "timm"})
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "big.jpg").write_bytes(photo_jpeg)
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")

    def run(*extra: str) -> list[dict]:
        result = invoke("classify", str(tmp_path / "photos"), "--weights", str(checkpoint),
                        "--format", "json", "--top-k", "1000", *extra)
        assert result.exit_code == 3, result.output  # the broken file, in every mode
        return json.loads(result.stdout)

    default, exact, fast = run(), run("--decode", "exact"), run("--decode", "fast")
    assert default == exact  # exact is the default
    assert [r["path"] for r in fast] == [r["path"] for r in exact]
    assert fast[1] == exact[1] and "error" in fast[1]
    p_exact = {p["index"]: p["probability"] for p in exact[0]["predictions"]}
    p_fast = {p["index"]: p["probability"] for p in fast[0]["predictions"]}
    assert p_fast != p_exact
    assert max(abs(p_fast[i] - p_exact[i]) for i in p_exact) < 0.02
