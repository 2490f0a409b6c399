"""Preprocessing protocols: how a decoded RGB image becomes the model's input tensor.

Each weight source evaluates with its own protocol (resize the shorter side, center crop, scale to [0, 1]);
the values live in the weight manifest beside the source they belong to (see `manifest.py`).

`preprocess` reproduces the reference pipelines bit for bit (tests/test_preprocess_parity.py):
- timm's eval transform: torchvision `Resize(284, BICUBIC)` on a PIL image -> `CenterCrop(256)` -> `ToTensor`;
- transformers' PIL `MobileViTImageProcessor`: resize shortest edge 288 (BILINEAR) -> center crop 256 ->
  rescale 1/255 (its final RGB -> BGR flip is replaced by mvit's weight canonicalisation).
Both compute the resized size as torchvision does (shorter side exact, longer side truncated toward zero) and
resize with Pillow. They differ in one detail, the crop offset when the margin is odd: torchvision rounds
half to even, transformers floors; that is `crop_rounding` below.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

# Pillow filters by protocol name.
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Preprocessing:
    resize_shorter: int  # shorter side after resizing, before the crop
    interpolation: str  # "bicubic" or "bilinear" (Pillow filters)
    crop_size: int  # square center crop: the model's input size
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # Offset of the center crop when (side - crop) is odd: "half_even" = torchvision/timm,
    # int(round(margin / 2)); "floor" = transformers, margin // 2. Shifts the crop by at most one pixel.
    crop_rounding: str = "half_even"


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """(width, height) with the shorter side set to `shorter` and the longer one scaled and truncated.

    The rule of torchvision's `Resize(int)` and transformers' `shortest_edge` (both `int(shorter * long / short)`);
    a square stays square.
    """
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def crop_offset(size: int, crop: int, rounding: str) -> int:
    margin = size - crop
    if rounding == "floor":
        return margin // 2
    if rounding == "half_even":
        return int(round(margin / 2.0))  # Python's round(): half to even, like torchvision's center_crop
    raise ValueError(f"unknown crop rounding {rounding!r}")


# Above this many pixels, the resized (uncropped) image is not materialised: only the crop is resampled.
# Only images with an aspect ratio beyond ~200:1 get there (a 100000x1 image would otherwise need 24 GB);
# their result differs from the reference pipelines by a few grey levels near the crop border.
MAX_RESIZED_PIXELS = 16 * 1024 * 1024


# `fast` resizing: Pillow first shrinks by an integer factor (a box filter) while the image stays at least this
# many times the target size, then resamples; Pillow documents 3.0 as close to the exact result.
FAST_REDUCING_GAP = 3.0


def resize_and_crop(image: Image.Image, p: Preprocessing, fast: bool = False) -> Image.Image:
    """RGB image -> resized (shorter side) and center-cropped RGB image of `crop_size` x `crop_size`.

    `fast` resamples only the crop's part of the image, after Pillow's integer pre-shrink (`FAST_REDUCING_GAP`):
    pixels then differ from the reference protocol by a few grey levels (an opt-in, never the default).
    """
    width, height = resized_size(image.width, image.height, p.resize_shorter)
    if p.crop_size > min(width, height):
        raise ValueError(f"crop {p.crop_size} is larger than the resized image {width}x{height}")
    left = crop_offset(width, p.crop_size, p.crop_rounding)
    top = crop_offset(height, p.crop_size, p.crop_rounding)
    box = (left, top, left + p.crop_size, top + p.crop_size)
    if fast or width * height > MAX_RESIZED_PIXELS:
        sx, sy = image.width / width, image.height / height
        source_box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        return image.resize((p.crop_size, p.crop_size), INTERPOLATIONS[p.interpolation], box=source_box,
                            reducing_gap=FAST_REDUCING_GAP if fast else None)
    if (width, height) != image.size:
        image = image.resize((width, height), INTERPOLATIONS[p.interpolation])
    return image.crop(box)


def to_uint8_hwc(image: Image.Image) -> np.ndarray:
    """RGB image -> [H, W, 3] uint8 array: Pillow's own pixel order, so nothing is transposed on the way."""
    return np.asarray(image, dtype=np.uint8)


def normalize(pixels: torch.Tensor, p: Preprocessing) -> torch.Tensor:
    """[..., 3, H, W] uint8 -> float32 in [0, 1] (x / 255, as torchvision's ToTensor), then (x - mean) / std.

    One pass, and the result keeps the input's memory layout: decoded pixels arrive channels-last ([H, W, 3]
    viewed as [3, H, W]), which is the layout the CPU model runs in, so no transposing copy is ever made.
    """
    x = torch.div(pixels, 255)  # uint8 / 255 computes float(x) / 255.0f: the same floats as ToTensor
    if p.mean != (0.0, 0.0, 0.0) or p.std != (1.0, 1.0, 1.0):
        mean = torch.tensor(p.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(p.std, dtype=torch.float32).view(3, 1, 1)
        x = x.sub_(mean).div_(std)
    return x


def preprocess(image: Image.Image, p: Preprocessing) -> torch.Tensor:
    """Decoded RGB image -> model input [3, crop_size, crop_size] float32 (contiguous)."""
    pixels = torch.from_numpy(to_uint8_hwc(resize_and_crop(image, p)).copy()).permute(2, 0, 1)
    return normalize(pixels, p).contiguous()


def to_image(tensor: torch.Tensor, p: Preprocessing) -> Image.Image:
    """A model input [3, H, W] (as `normalize` makes it) back to the RGB picture it was made from: the crop the
    model saw, for drawing on (heatmaps). Exact for inputs made from 8-bit pixels (rounding undoes the float
    error of the scaling)."""
    x = tensor.detach().float().cpu()
    if p.mean != (0.0, 0.0, 0.0) or p.std != (1.0, 1.0, 1.0):
        x = x * torch.tensor(p.std).view(3, 1, 1) + torch.tensor(p.mean).view(3, 1, 1)
    pixels = torch.clamp(torch.round(x * 255), 0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()
    return Image.fromarray(pixels.numpy(), "RGB")
