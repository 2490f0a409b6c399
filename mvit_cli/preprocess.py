"""Preprocessing protocols: how a decoded RGB image becomes the model's input tensor.

Each weight source evaluates with its own protocol (resize the shorter side, center crop, scale to [0, 1]);
the values live in the weight manifest beside the source they belong to (see `manifest.py`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preprocessing:
    resize_shorter: int  # shorter side after resizing, before the crop
    interpolation: str  # "bicubic" or "bilinear" (Pillow filters)
    crop_size: int  # square center crop: the model's input size
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
