"""Our input tensors equal, bit for bit, those of the reference evaluation pipelines.

- apple source: transformers' PIL image processor for MobileViT (`MobileViTImageProcessorPil`, configured as the
  apple/mobilevit-* repos' preprocessor_config.json: shortest edge 288, resample 2 = bilinear, crop 256), with
  its RGB -> BGR flip undone (mvit reverses the stem conv of those checkpoints instead);
- timm source: timm's eval transform for the cvnets_in1k weights, which needs torchvision and so cannot run
  here. It is reimplemented below from its definition (timm `transforms_imagenet_eval`, crop_mode "center":
  torchvision `Resize(floor(256 / crop_pct))` on a PIL image, `CenterCrop(256)`, `ToTensor`, `Normalize` with
  the model's mean/std), independently of mvit's code, and its parameters are read from timm's own
  pretrained config of the models.

The protocols under test are the ones mvit ships (`manifest.preprocessing`), so a wrong value in the manifest
fails here too.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from image_corpus import encode, in_mode, smooth_rgb
from PIL import Image

from mvit_cli.pipeline.images import decode_image
from mvit_cli.preprocess import Preprocessing, preprocess

# (width, height): squares, both orientations, extreme aspect ratios, tiny images, and long sides whose crop
# margin is odd after resizing (287 at 284, 291 at 288: where torchvision's round-half-even and transformers'
# floor put the crop one pixel apart).
SIZES = [(1, 1), (7, 3), (256, 256), (287, 284), (284, 287), (291, 288), (288, 291), (500, 375), (375, 500),
         (1000, 251), (97, 1203), (641, 479), (320, 321)]
# Modes whose conversion to RGB is plain `convert("RGB")` in every pipeline (timm's loader included).
PLAIN_MODES = [("RGB", "JPEG"), ("L", "PNG"), ("P", "PNG"), ("CMYK", "JPEG")]
# Modes with transparency: transformers composites them on white, as mvit does (timm's loader drops alpha).
ALPHA_MODES = [("RGBA", "PNG"), ("LA", "PNG"), ("PT", "GIF")]


def _protocol(source: str) -> Preprocessing:
    manifest = pytest.importorskip("mvit_cli.manifest")
    return manifest.preprocessing(source)


def _cases(modes):
    return [(size, mode, fmt) for i, size in enumerate(SIZES) for mode, fmt in modes if (i + len(mode)) % 2 == 0
            or size in ((287, 284), (291, 288), (1, 1))]


def _file(size, mode, fmt) -> bytes:
    return encode(in_mode(mode, *size, seed=size[0] * 7 + size[1]), fmt)


def _ours(data: bytes, p: Preprocessing) -> torch.Tensor:
    return preprocess(decode_image(data), p)


# ----------------------------------------------------------------------------------------------------------
# timm


def timm_eval_reference(image: Image.Image, img_size: int, crop_pct: float, interpolation: str, mean, std):
    """timm's eval transform for a PIL image, written out from its definition (torchvision semantics)."""
    scale_size = math.floor(img_size / crop_pct)
    # torchvision Resize(int): the shorter side becomes `scale_size`, the longer is int(scale_size * long / short).
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = scale_size, int(scale_size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        filters = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
        image = image.resize((new_w, new_h), filters[interpolation])
    # torchvision CenterCrop: offsets int(round((size - crop) / 2.0)), Python's round (half to even).
    top = int(round((new_h - img_size) / 2.0))
    left = int(round((new_w - img_size) / 2.0))
    image = image.crop((left, top, left + img_size, top + img_size))
    # ToTensor: [H, W, C] uint8 -> [C, H, W] float32 / 255; then Normalize.
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


@pytest.fixture(scope="module")
def timm_cfg():
    from reference_models import import_timm

    try:
        timm = import_timm()
    except ImportError:
        pytest.skip("timm not installed")
    cfgs = [timm.models.get_pretrained_cfg(f"mobilevit_{v}.cvnets_in1k").to_dict() for v in ("xxs", "xs", "s")]
    assert all({k: c[k] for k in ("input_size", "crop_pct", "interpolation", "mean", "std", "crop_mode")}
               == {k: cfgs[0][k] for k in ("input_size", "crop_pct", "interpolation", "mean", "std", "crop_mode")}
               for c in cfgs)
    return cfgs[0]


def test_timm_protocol_is_timms_pretrained_config(timm_cfg):
    p = _protocol("timm")
    assert timm_cfg["input_size"] == (3, p.crop_size, p.crop_size)
    assert timm_cfg["crop_mode"] == "center"
    assert math.floor(p.crop_size / timm_cfg["crop_pct"]) == p.resize_shorter == 284
    assert timm_cfg["interpolation"] == p.interpolation == "bicubic"
    assert tuple(timm_cfg["mean"]) == p.mean and tuple(timm_cfg["std"]) == p.std


@pytest.mark.parametrize("size,mode,fmt", _cases(PLAIN_MODES))
def test_equals_timm_eval_transform(timm_cfg, size, mode, fmt):
    data = _file(size, mode, fmt)
    # timm's ImageDataset loads with Image.open(f).convert("RGB").
    reference = timm_eval_reference(Image.open(io.BytesIO(data)).convert("RGB"), timm_cfg["input_size"][-1],
                                    timm_cfg["crop_pct"], timm_cfg["interpolation"], timm_cfg["mean"],
                                    timm_cfg["std"])
    ours = _ours(data, _protocol("timm"))
    assert ours.dtype == torch.float32 and ours.shape == reference.shape == (3, 256, 256)
    assert torch.equal(ours, reference), f"max |diff| {(ours - reference).abs().max():.3g}"


# ----------------------------------------------------------------------------------------------------------
# transformers


@pytest.fixture(scope="module")
def apple_processor():
    transformers = pytest.importorskip("transformers")
    cls = getattr(transformers, "MobileViTImageProcessorPil", None)
    if cls is None:  # transformers 4.x: the PIL-based processor is the plain one
        cls = transformers.MobileViTImageProcessor
    # The apple/mobilevit-* repos' preprocessor_config.json.
    return cls(size={"shortest_edge": 288}, crop_size={"height": 256, "width": 256}, resample=2,
               do_flip_channel_order=True, do_convert_rgb=True)


def test_apple_protocol_is_the_hub_processor_config(apple_processor):
    p = _protocol("apple")
    assert (p.resize_shorter, p.interpolation, p.crop_size) == (288, "bilinear", 256)
    assert p.mean == (0.0, 0.0, 0.0) and p.std == (1.0, 1.0, 1.0)  # the processor only rescales by 1/255


@pytest.mark.parametrize("size,mode,fmt", _cases(PLAIN_MODES + ALPHA_MODES))
def test_equals_transformers_processor(apple_processor, size, mode, fmt):
    data = _file(size, mode, fmt)
    bgr = apple_processor(Image.open(io.BytesIO(data)), return_tensors="pt")["pixel_values"][0]
    reference = bgr.flip(0)  # undo its RGB -> BGR flip
    ours = _ours(data, _protocol("apple"))
    assert ours.dtype == reference.dtype == torch.float32 and ours.shape == reference.shape == (3, 256, 256)
    assert torch.equal(ours, reference), f"max |diff| {(ours - reference).abs().max():.3g}"


# ----------------------------------------------------------------------------------------------------------
# properties that need no reference


def test_crop_rounding_matters_where_the_margin_is_odd():
    """The two crop rules really differ (else the reference tests above could not tell them apart)."""
    image = smooth_rgb(291, 288, seed=5)  # resized to 291x288 -> margin 35 -> offsets 17 (floor) vs 18 (round)
    floor = preprocess(image, Preprocessing(288, "bilinear", 256, crop_rounding="floor"))
    half_even = preprocess(image, Preprocessing(288, "bilinear", 256, crop_rounding="half_even"))
    assert torch.equal(floor[:, :, 1:], half_even[:, :, :-1])
    assert not torch.equal(floor, half_even)


def test_mean_std_normalisation():
    image = smooth_rgb(300, 260, seed=3)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    plain = preprocess(image, Preprocessing(284, "bicubic", 256))
    normalised = preprocess(image, Preprocessing(284, "bicubic", 256, mean=mean, std=std))
    expected = (plain - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(normalised, expected, atol=1e-6)
    assert plain.min() >= 0 and plain.max() <= 1


def test_extreme_aspect_ratio_stays_small_and_right():
    """100000 x 2 would be a 28 million x 284 image if resized whole; only the crop is resampled."""
    colour = (10, 200, 30)
    image = Image.new("RGB", (100_000, 2), colour)
    x = preprocess(image, Preprocessing(284, "bicubic", 256))
    assert x.shape == (3, 256, 256)
    expected = torch.tensor(colour, dtype=torch.float32).view(3, 1, 1) / 255
    assert torch.allclose(x, expected.expand_as(x), atol=1 / 255)
